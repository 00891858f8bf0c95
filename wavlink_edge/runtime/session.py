"""Inference sessions: the ONNX Runtime wrapper, execution-provider choice, and the TensorRT backend hook.

Every backend session has the same surface: ``run(feeds: dict[str, np.ndarray]) -> np.ndarray`` (the
first output) and ``providers`` (what actually runs it). ORT sessions allow concurrent ``run`` calls,
and the wrapper keeps no per-call state, so one instance serves many threads.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, Union

import numpy as np
import onnxruntime as ort

from wavlink_edge.runtime.batching import with_frame_lengths
from wavlink_edge.runtime.errors import BackendUnavailableError, UsageError, WavLinkError
from wavlink_edge.runtime.manifest import ArtifactSpec, Manifest

log = logging.getLogger("wavlink_edge.runtime")

TENSORRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
PROVIDER_PREFERENCE = (TENSORRT_EP, CUDA_EP, CPU_EP)
ACCELERATED_EPS = (TENSORRT_EP, CUDA_EP)
BACKENDS = ("onnxruntime", "tensorrt")

ProviderSpec = Union[str, tuple]  # "NameExecutionProvider" or (name, options) as ORT takes them


class Session(Protocol):
    """What every backend session offers the model: ORT's ``OnnxSession`` and TensorRT's ``TensorRTSession``."""

    providers: list[str]  # what actually runs it, first = main ("tensorrt" for a direct engine)

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray: ...

    def io_shapes(self) -> dict[str, tuple]: ...


def tensorrt_provider_options(cache_dir: Path, precision: str) -> dict:
    """Engine and timing caches on: building a TRT engine takes minutes, reusing one takes a second."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    options = {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache_dir),
        "trt_fp16_enable": precision == "fp16",
    }
    if precision.startswith("int8"):
        # Q/DQ graphs carry their own scales (no calibration table); older TRT still wants the INT8 flag.
        options["trt_int8_enable"] = True
    return options


def trt_cache_dir(export_dir: Path) -> Path:
    """<export>/trt_cache, or a per-user cache when the export directory is read-only (installed models)."""
    preferred = export_dir / "trt_cache"
    if os.access(export_dir, os.W_OK) or preferred.is_dir():
        return preferred
    key = hashlib.sha256(str(export_dir.resolve()).encode()).hexdigest()[:12]
    fallback = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "wavlink-edge" / "trt_cache" / (
        f"{export_dir.resolve().name}-{key}")
    log.info("export directory %s is read-only; TensorRT caches go to %s", export_dir, fallback)
    return fallback


def choose_providers(requested: Sequence[ProviderSpec] | None, precision: str, cache_dir: Path) -> list[ProviderSpec]:
    """The provider list for ORT: ``requested`` if given, else TensorRT -> CUDA -> CPU as this build has them.

    TensorRT entries without options get the engine/timing cache options, so an explicit
    ``providers=["TensorrtExecutionProvider"]`` still reuses built engines.
    """
    available = ort.get_available_providers()
    if requested:
        chosen = [_as_provider(p) for p in _as_provider_list(requested)]
        missing = [provider_name(p) for p in chosen if provider_name(p) not in available]
        if missing:
            raise WavLinkError(f"providers {missing} are not in this onnxruntime build (available: {available}); "
                               "install onnxruntime-gpu for CUDA/TensorRT")
        log.info("execution providers as requested: %s", [provider_name(p) for p in chosen])
    else:
        chosen = [name for name in PROVIDER_PREFERENCE if name in available]
        skipped = [name for name in PROVIDER_PREFERENCE if name not in available]
        if skipped:
            log.info("execution providers: %s (not in this onnxruntime build: %s)", chosen, skipped)
        else:
            log.info("execution providers: %s", chosen)
    return [(TENSORRT_EP, tensorrt_provider_options(cache_dir, precision)) if p == TENSORRT_EP else p for p in chosen]


def provider_name(provider: ProviderSpec) -> str:
    return provider[0] if isinstance(provider, tuple) else provider


def _as_provider_list(requested) -> list:
    if isinstance(requested, (str, bytes)) or not isinstance(requested, Sequence):
        raise UsageError(f"providers must be a list of provider names, e.g. [{CPU_EP!r}], got {requested!r}")
    return list(requested)


def _as_provider(provider) -> ProviderSpec:
    """"Name", ("Name",) or ("Name", {options}): ORT takes only the first and the last form."""
    if isinstance(provider, str):
        return provider
    if isinstance(provider, tuple) and len(provider) == 1 and isinstance(provider[0], str):
        return provider[0]
    if isinstance(provider, tuple) and len(provider) == 2 and isinstance(provider[0], str) and isinstance(provider[1], dict):
        return provider
    raise UsageError(f"provider {provider!r} is not a name or a (name, options dict) pair")


def quiet_onnxruntime(verbose: bool) -> None:
    """onnxruntime prints a provider that fails to start (no CUDA libraries) in red, at ERROR level, before
    falling back; we report the fallback ourselves in one line, so its own text is for --verbose only."""
    ort.set_default_logger_severity(0 if verbose and log.isEnabledFor(logging.DEBUG) else 2 if verbose else 4)


def is_accelerated(providers: Sequence[ProviderSpec]) -> bool:
    return bool(providers) and provider_name(providers[0]) in ACCELERATED_EPS


class OnnxSession:
    """One ONNX model in an ORT InferenceSession; ``run`` returns the first output.

    The one place a session is built: the runtime, export validation, quantization gates, training
    caches and the benchmarks all open models here. ``threads`` caps intra-op threads (benchmarks pin
    it; the default lets ORT use every core). ``profile_prefix`` turns on ORT's per-node profiler
    (``end_profiling`` returns the JSON trace's path).
    """

    def __init__(self, model: bytes | str | Path, providers: Sequence[ProviderSpec] = (CPU_EP,),
                 name: str | None = None, threads: int | None = None, profile_prefix: str | None = None):
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if profile_prefix:
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        # ORT's own warnings (unused initialisers) and provider start-up errors are noise for users: the
        # fallback is reported below in one line; --verbose (quiet_onnxruntime) lets ORT's text through.
        options.log_severity_level = 3 if log.isEnabledFor(logging.INFO) else 4
        self.name = name or (Path(model).name if not isinstance(model, bytes) else "model")
        try:
            with warnings.catch_warnings():  # ORT warns of a provider it lacks; we say it once, below
                warnings.simplefilter("ignore", UserWarning)
                self._session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                                     providers=list(providers))
        except Exception as exc:  # ORT raises several Fail/InvalidGraph types; the message is what matters
            raise WavLinkError(f"{self.name}: onnxruntime could not load the model: {exc}") from None
        self.input_names = [i.name for i in self._session.get_inputs()]
        wanted = [provider_name(p) for p in providers]
        self.providers = self._session.get_providers()
        not_started = [p for p in wanted if p not in self.providers]
        if not_started:
            # ORT skips a provider whose libraries fail to load (no CUDA driver, TRT missing): one line, once.
            _warn_once(f"{', '.join(not_started)} could not be started here (run with --verbose for onnxruntime's "
                       f"reason); running on {self.providers[0]}")

    def io_shapes(self) -> dict[str, tuple]:
        """Declared shapes of the graph's inputs and first output (ints, or names for dynamic axes)."""
        shapes = {i.name: tuple(i.shape) for i in self._session.get_inputs()}
        shapes["output"] = tuple(self._session.get_outputs()[0].shape)
        return shapes

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self._session.run(None, with_frame_lengths(feeds, self.input_names))[0]

    def run_all(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Every output, in graph order (the lyrics decoder returns states, logits and its KV cache)."""
        return self._session.run(None, with_frame_lengths(feeds, self.input_names))

    def end_profiling(self) -> str:
        return self._session.end_profiling()


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning(message)


def open_session(backend: str, manifest: Manifest, artifact: ArtifactSpec, providers: Sequence[ProviderSpec],
                 threads: int | None = None):
    """A session for one tower: ORT from hash-checked bytes, or a TensorRT engine built from that ONNX."""
    if backend == "onnxruntime":
        if artifact.external_data:
            # Weights in external files (graphs over 2 GB): ORT must open the graph by path to find them.
            for data_file in artifact.external_data:
                manifest.verified_path(data_file)
            return OnnxSession(manifest.verified_path(artifact.file), providers, artifact.file, threads)
        return OnnxSession(manifest.read_verified(artifact.file), providers, artifact.file, threads)
    if backend == "tensorrt":
        return open_tensorrt_engine(manifest, artifact)
    raise UsageError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def open_tensorrt_engine(manifest: Manifest, artifact: ArtifactSpec):
    """The engine export/to_tensorrt.py built from ``artifact`` for this TensorRT version and GPU.

    Engines are not in the manifest; an engine qualifies when its sidecar key names the sha256 the
    manifest gives the ONNX, and TensorRTSession itself refuses engines whose file does not match the
    sidecar or that were built for another TensorRT version / GPU.
    """
    try:
        from wavlink_edge.runtime import trt_engine  # optional dependency: TensorRT, for backend="tensorrt" only
    except ImportError as exc:
        raise BackendUnavailableError(f"backend='tensorrt' is not available in this build: {exc}") from None
    cache_dirs = dict.fromkeys([manifest.export_dir / "trt_cache", trt_cache_dir(manifest.export_dir)])
    candidates = []
    for cache_dir in cache_dirs:
        for engine in sorted(cache_dir.glob(f"{artifact.tower}_{artifact.precision}_*.engine")):
            try:
                key = json.loads(trt_engine.sidecar_path(engine).read_text())["key"]
            except (OSError, ValueError, KeyError):
                continue
            if key.get("onnx_sha256") == artifact.sha256:
                candidates.append(engine)
    how = f"build one with `python export/to_tensorrt.py {manifest.export_dir}` on this machine"
    if not candidates:
        raise WavLinkError(f"no TensorRT engine for {artifact.file} in {' or '.join(map(str, cache_dirs))}: {how}")
    refusals = []
    for engine in candidates:
        try:
            return trt_engine.TensorRTSession(engine)
        except ImportError as exc:  # tensorrt / cuda-python load lazily, at construction
            raise BackendUnavailableError(
                f"backend='tensorrt' needs the TensorRT Python bindings and cuda-python ({exc}); install "
                "'wavlink-edge[trt]' (JetPack's tensorrt on Jetson), or use backend='onnxruntime' with the "
                "TensorrtExecutionProvider of onnxruntime-gpu") from None
        except trt_engine.StaleEngineError as exc:
            refusals.append(str(exc))
    raise WavLinkError(f"no usable TensorRT engine for {artifact.file} ({'; '.join(refusals)}): {how}")
