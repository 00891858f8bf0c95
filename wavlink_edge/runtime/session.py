"""Inference sessions: the ONNX Runtime wrapper, execution-provider choice, and the TensorRT backend hook.

Every backend session has the same surface: ``run(feeds: dict[str, np.ndarray]) -> np.ndarray`` (the
first output) and ``providers`` (what actually runs it). ORT sessions allow concurrent ``run`` calls,
and the wrapper keeps no per-call state, so one instance serves many threads.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import io
import json
import logging
import os
import re
import struct
import sys
import warnings
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Protocol, Union

import numpy as np
import onnxruntime as ort

from wavlink_edge.runtime.batching import with_frame_lengths
from wavlink_edge.runtime.errors import BackendUnavailableError, ModelFilesError, UsageError, WavLinkError
from wavlink_edge.runtime.features import WAVEFORM_FRONTEND_FILE
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

    A GPU provider whose libraries do not load here (``provider_blocker``) is left out before ORT is asked,
    with one line naming the library: ORT would otherwise try it, print its banner and retry. TensorRT
    entries without options get the engine/timing cache options, so an explicit
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
    chosen = startable(chosen, explicit=bool(requested))
    return [(TENSORRT_EP, tensorrt_provider_options(cache_dir, precision)) if p == TENSORRT_EP else p for p in chosen]


def startable(providers: list[ProviderSpec], explicit: bool = False) -> list[ProviderSpec]:
    """``providers`` without those whose libraries cannot load here, each dropped one said in one line."""
    kept = [p for p in providers if provider_blocker(provider_name(p)) is None]
    if not kept:
        if explicit:
            raise BackendUnavailableError(f"{provider_name(providers[0])} cannot start here: "
                                          f"{provider_blocker(provider_name(providers[0]))}")
        kept = [CPU_EP]
    for p in providers:
        reason = provider_blocker(provider_name(p))
        if reason is not None:
            _warn_once(f"{provider_name(p)} cannot start here: {reason}; using {provider_name(kept[0])}")
    return kept


def would_start(available: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """(providers the default choice would really start, in order; {provider left out: why}) for ``info``."""
    preferred = [name for name in PROVIDER_PREFERENCE if name in available]
    blocked = {name: reason for name in preferred if (reason := provider_blocker(name)) is not None}
    return [name for name in preferred if name not in blocked] or [CPU_EP], blocked


# onnxruntime's shared library per GPU provider (Linux wheels: onnxruntime/capi/libonnxruntime_providers_*.so)
PROVIDER_LIBRARIES = {TENSORRT_EP: "tensorrt", CUDA_EP: "cuda"}
# NVIDIA libraries a provider library links: what must load for the provider to start
_NVIDIA_LIBRARY = re.compile(r"^lib(nvinfer|nvonnxparser|cuda|cublas|cudnn|cufft|curand|nvrtc)")


@cache
def provider_blocker(provider: str) -> str | None:
    """Why ``provider`` cannot start in this process (the library that does not load), or None.

    Checked the way the provider itself would load: onnxruntime's provider library names the NVIDIA
    libraries it links (ELF DT_NEEDED: libnvinfer.so.10 for TensorRT 10, libcudart/cublas/cudnn for CUDA),
    and each is opened with the system's loader (ctypes). Linux only; elsewhere ORT's own check stands.
    """
    if provider not in PROVIDER_LIBRARIES or not sys.platform.startswith("linux"):
        return None
    library = provider_library(provider)
    if not library.is_file():
        return f"{library.name} is not in this onnxruntime install (install onnxruntime-gpu)"
    try:
        needed = [name for name in elf_needed(library) if _NVIDIA_LIBRARY.match(name)]
    except (OSError, ValueError) as exc:
        return f"{library.name} is unreadable ({exc})"
    for name in needed:
        try:
            ctypes.CDLL(name)
        except OSError:
            what = "TensorRT" if name.startswith(("libnvinfer", "libnvonnxparser")) else "CUDA"
            return f"{name} could not be loaded ({what} is not installed or not on the library path)"
    return None


def provider_library(provider: str) -> Path:
    return Path(ort.__file__).resolve().parent / "capi" / f"libonnxruntime_providers_{PROVIDER_LIBRARIES[provider]}.so"


def elf_needed(path: Path) -> list[str]:
    """The DT_NEEDED entries (linked shared libraries) of a 64-bit little-endian ELF file."""
    with open(path, "rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
            raise ValueError("not a 64-bit little-endian ELF file")
        shoff, = struct.unpack_from("<Q", header, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", header, 0x3A)
        f.seek(shoff)
        sections = [struct.unpack_from("<IIQQQQIIQQ", f.read(shentsize)) for _ in range(shnum)]
        dynamic = next((s for s in sections if s[1] == 6), None)  # SHT_DYNAMIC
        if dynamic is None:
            return []
        strtab = sections[dynamic[6]]  # sh_link: its string table
        f.seek(strtab[4])
        strings = f.read(strtab[5])
        f.seek(dynamic[4])
        entries = f.read(dynamic[5])
    names = []
    for tag, value in struct.iter_unpack("<qQ", entries[: len(entries) // 16 * 16]):
        if tag == 1:  # DT_NEEDED
            names.append(strings[value:strings.index(b"\0", value)].decode())
        elif tag == 0:
            break
    return names


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
    falling back; we report the fallback ourselves in one line, so its own text is for --verbose only (and a
    provider whose libraries do not load is never asked for: ``provider_blocker``)."""
    ort.set_default_logger_severity(0 if verbose and log.isEnabledFor(logging.DEBUG) else 2 if verbose else 4)


def is_accelerated(providers: Sequence[ProviderSpec]) -> bool:
    return bool(providers) and provider_name(providers[0]) in ACCELERATED_EPS


class OnnxSession:
    """One ONNX model in an ORT InferenceSession; ``run`` returns the first output.

    The one place a session is built: the runtime, export validation, quantization gates, training
    caches and the benchmarks all open models here. ``threads`` caps intra-op threads (benchmarks pin
    it; the default lets ORT use every core). ``profile_prefix`` turns on ORT's per-node profiler
    (``end_profiling`` returns the JSON trace's path). ``io_binding``: on the CUDA provider, run through IO
    binding (``run_bound``); the CPU provider always runs plainly.
    """

    def __init__(self, model: bytes | str | Path, providers: Sequence[ProviderSpec] = (CPU_EP,),
                 name: str | None = None, threads: int | None = None, profile_prefix: str | None = None,
                 io_binding: bool = True):
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
        banner = io.StringIO()
        try:
            # ORT's Python layer prints an "EP Error" banner to stdout when a provider fails and it retries
            # with the next (stdout may be the user's JSON lines): caught here and said in one line below.
            with warnings.catch_warnings(), contextlib.redirect_stdout(banner):
                warnings.simplefilter("ignore", UserWarning)  # ORT warns of a provider it lacks; said below
                self._session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                                     providers=list(providers))
        except Exception as exc:  # ORT raises several Fail/InvalidGraph types; the message is what matters
            raise WavLinkError(f"{self.name}: onnxruntime could not load the model: {_first_line(exc)}") from None
        if banner.getvalue():
            log.debug("onnxruntime: %s", banner.getvalue())
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]
        wanted = [provider_name(p) for p in providers]
        self.providers = self._session.get_providers()
        # On CUDA, inputs and the output are bound on the device (IO binding); elsewhere plain run().
        self.io_binding_device, self.io_binding_device_id = None, 0
        if self.providers[0] == CUDA_EP and io_binding:
            options = self._session.get_provider_options().get(CUDA_EP, {})
            self.io_binding_device, self.io_binding_device_id = "cuda", int(options.get("device_id", 0) or 0)
        not_started = [p for p in wanted if p not in self.providers]
        if not_started:
            # ORT skips a provider that fails to start (no driver, no device, a library provider_blocker does
            # not know): one line, once, naming the library when ORT's banner did.
            _warn_once(f"{', '.join(not_started)} could not be started here ({_start_failure(banner.getvalue())}); "
                       f"running on {self.providers[0]}")

    def io_shapes(self) -> dict[str, tuple]:
        """Declared shapes of the graph's inputs and first output (ints, or names for dynamic axes)."""
        shapes = {i.name: tuple(i.shape) for i in self._session.get_inputs()}
        shapes["output"] = tuple(self._session.get_outputs()[0].shape)
        return shapes

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        feeds = with_frame_lengths(feeds, self.input_names)
        if self.io_binding_device is None:
            return self._session.run(None, feeds)[0]
        return self.run_bound(feeds)

    def run_bound(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """``run`` through IO binding: inputs copied to the device once, the output allocated there by ORT and
        copied back once; the same arithmetic as ``run`` (tests check equality), fewer staging copies.
        Each call has its own binding, so threads may share the session."""
        device, device_id = self.io_binding_device or "cpu", self.io_binding_device_id
        binding = self._session.io_binding()
        for name, value in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), device,
                                                                               device_id))
        binding.bind_output(self.output_names[0], device, device_id)
        self._session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def run_all(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Every output, in graph order (the lyrics decoder returns states, logits and its KV cache)."""
        return self._session.run(None, with_frame_lengths(feeds, self.input_names))

    def end_profiling(self) -> str:
        return self._session.end_profiling()


_WARNED: set[str] = set()
_SHARED_LIBRARY = re.compile(r"lib[\w.+-]+?\.so(?:\.\d+)*")


def _start_failure(banner: str) -> str:
    """The reason in one phrase: the shared library onnxruntime's banner names, else where to look (ORT logs
    start-up failures inside its C++ layer without a banner)."""
    found = _SHARED_LIBRARY.search(banner)
    if found:
        return f"{found.group(0)} could not be loaded"
    return "run with --verbose for onnxruntime's reason"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


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


def open_frontend(manifest: Manifest, providers: Sequence[ProviderSpec], threads: int | None = None) -> OnnxSession:
    """The export's waveform-in log-mel graph (audio_frontend.onnx), hash-checked like every artifact."""

    session = OnnxSession(manifest.read_verified(WAVEFORM_FRONTEND_FILE), providers, WAVEFORM_FRONTEND_FILE, threads)
    if session.input_names != ["waveform", "frame_lengths"]:
        raise ModelFilesError(f"{manifest.export_dir / WAVEFORM_FRONTEND_FILE}: inputs {session.input_names}, expected "
                              "waveform and frame_lengths")
    return session


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
    # an fp16 audio engine is built from the fp32 graph the fp16 artifact was made from (export/trt_build.py:
    # TensorRT cannot parse the fused attention of audio_fp16.onnx), which its manifest entry names with its sha256
    sources = {artifact.sha256, ((manifest.files.get(artifact.file) or {}).get("source") or {}).get("sha256")} - {None}
    candidates = []
    for cache_dir in cache_dirs:
        for engine in sorted(cache_dir.glob(f"{artifact.tower}_{artifact.precision}_*.engine")):
            try:
                key = json.loads(trt_engine.sidecar_path(engine).read_text())["key"]
            except (OSError, ValueError, KeyError):
                continue
            if key.get("onnx_sha256") in sources:
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
