"""The user-facing model: ``WavLink.from_pretrained(export_dir)`` -> audio and text embeddings.

Audio path, top to bottom in ``iter_embed_audio``: items -> decoded 16 kHz blocks -> windows (the
model's max length, 30 s for Whisper; longer audio gets several, hop configurable) -> log-mel
features -> batches (mixed lengths, padded and masked; the same frame count for exports older than
``frame_lengths``) -> the audio session -> global-token embeddings -> mean over an item's windows ->
Matryoshka truncation to ``dim`` -> L2 normalisation. Every ``dim`` of an item is a prefix of the same
full embedding, re-normalised. Text: tokenizer feeds -> text session -> truncate -> normalise.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wavlink_edge.runtime import cpu_features
from wavlink_edge.runtime.audio import AudioInput, describe_source, is_array_pair, iter_audio_blocks
from wavlink_edge.runtime.batching import DEFAULT_MAX_BATCH_FRAMES, FRAME_LENGTHS, Batch, WindowBatcher
from wavlink_edge.runtime.errors import AudioInputError, ModelFilesError, TextInputError, UsageError
from wavlink_edge.runtime.features import (
    CLIP_POLICIES,
    FEATURE_ENGINES,
    HOP_LENGTH,
    SAMPLE_RATE,
    WAVEFORM_FRONTEND_FILE,
    clip_features,
    clip_frames,
    iter_windows,
    waveform_batch,
)
from wavlink_edge.runtime.frontend import default_decode_workers, ordered_windows
from wavlink_edge.runtime.manifest import PRECISION_CHOICES, ArtifactSpec, Manifest, artifacts_digest
from wavlink_edge.runtime.session import (
    BACKENDS,
    CPU_EP,
    ProviderSpec,
    Session,
    choose_providers,
    is_accelerated,
    open_frontend,
    open_session,
    provider_name,
    trt_cache_dir,
    would_start,
)
from wavlink_edge.runtime.text import TextTokenizer
from wavlink_edge.runtime.vectors import normalize, similarity, truncate

log = logging.getLogger("wavlink_edge.runtime")

__all__ = ["WavLink", "AudioEmbedding", "normalize", "similarity"]


@dataclass(frozen=True)
class AudioEmbedding:
    """One item's outcome from ``iter_embed_audio``: an embedding, or the error that stopped it."""

    index: int
    source: str
    embedding: np.ndarray | None
    error: str | None = None
    windows: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class _ItemState:
    """An item between its first window and its result: the running sum of its window embeddings."""

    source: str
    total: np.ndarray | None = None
    windows_done: int = 0
    windows_queued: int = 0
    decoded: bool = False
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.decoded and (self.error is not None or self.windows_done == self.windows_queued)


class WavLink:
    """Torch-free WavLink: two ONNX towers, the tokenizer and the Whisper front end in numpy."""

    def __init__(self, manifest: Manifest, audio_session, text_session, tokenizer: TextTokenizer,
                 precision: str, dim: int | None = None, clip_policy: str | None = None,
                 window_hop_seconds: float | None = None, max_batch_frames: int = DEFAULT_MAX_BATCH_FRAMES):
        self.manifest = manifest
        self.spec = manifest.model
        self.precision = precision
        self.audio_session = audio_session
        self.text_session = text_session
        self.tokenizer = tokenizer
        # The Rust tokenizer is immutable once configured, but its Python binding gives no documented
        # thread-safety promise; a lock costs microseconds next to an encoder run.
        self._tokenizer_lock = threading.Lock()
        self.dim = self.spec.embed_dim  # check_dim falls back to self.dim, so set the full width first
        self.dim = self.check_dim(dim)
        self.clip_policy = clip_policy or self.spec.clip_policy
        if self.clip_policy not in CLIP_POLICIES:
            raise UsageError(f"unknown clip policy {self.clip_policy!r}; choose one of {', '.join(CLIP_POLICIES)}")
        # One window is what the encoder takes at most: max_frames hops (3000 = 30 s for Whisper).
        self.window_samples = self.spec.max_frames * HOP_LENGTH
        window_seconds = self.window_samples / SAMPLE_RATE
        window_hop_seconds = window_seconds if window_hop_seconds is None else window_hop_seconds
        if isinstance(window_hop_seconds, bool) or not isinstance(window_hop_seconds, (int, float)) \
                or not 0 < window_hop_seconds <= window_seconds:
            raise UsageError(f"window_hop_seconds must be in (0, {window_seconds:g}], got {window_hop_seconds!r}")
        self.window_hop_samples = min(self.window_samples, int(round(window_hop_seconds * SAMPLE_RATE)))
        if self.window_hop_samples < HOP_LENGTH:  # a hop under one frame would make windows without end
            raise UsageError(f"window_hop_seconds must be at least {HOP_LENGTH / SAMPLE_RATE:g} s (one frame), "
                             f"got {window_hop_seconds!r}")
        self.max_batch_frames = max_batch_frames
        # threads decoding and computing features ahead of the encoder (runtime/frontend.py); 0 = serial
        self.decode_workers = default_decode_workers()
        self.frontend_session: Session | None = None  # the waveform-in log-mel graph, when features="onnx"
        self.artifacts: dict[str, ArtifactSpec] = {}  # tower -> the artifact its session runs (from_pretrained)

    @property
    def digest(self) -> str:
        """Over the artifacts in use, the clip policy and the window hop: two models with the same digest give the
        same vectors for the same input (what an index compares before taking a query)."""
        return artifacts_digest(self.artifacts.values(), *self._audio_settings())

    def tower_digest(self, tower: str) -> str:
        """The same for one tower's outputs (what `--resume` compares): quantizing the other tower changes nothing."""
        return artifacts_digest([self.artifacts[tower]], *(self._audio_settings() if tower == "audio" else ()))

    def _audio_settings(self) -> tuple[str, str]:
        return f"clip_policy:{self.clip_policy}", f"hop:{self.window_hop_samples}"

    @classmethod
    def from_pretrained(cls, export_dir: str | Path, precision: str = "fp32",
                        providers: Sequence[ProviderSpec] | None = None, dim: int | None = None,
                        backend: str = "onnxruntime", clip_policy: str | None = None,
                        window_hop_seconds: float | None = None, threads: int | None = None,
                        max_batch_frames: int = DEFAULT_MAX_BATCH_FRAMES, features: str = "numpy") -> WavLink:
        """Load an export directory (export/FORMAT.md), checking every file's size and sha256 before use.

        precision: fp32 | fp16 | int8 (dynamic variant on CPU, static where CUDA/TensorRT really run) |
        int8_dynamic | int8_static. providers: ORT execution providers (default TensorRT -> CUDA -> CPU
        as available). backend: "onnxruntime" or "tensorrt" (engines built by export/to_tensorrt.py
        into <export>/trt_cache, matched to the manifest's ONNX by sha256). clip_policy: "pad" | "trim"
        (default: the policy the model was trained for, from the manifest). window_hop_seconds:
        where windows of long audio start (default: one window length, 30 s). threads: ORT intra-op
        threads (default: one per core). max_batch_frames: caps batch x frames of one encoder run.
        """
        if precision not in PRECISION_CHOICES:
            raise UsageError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISION_CHOICES)}")
        if backend not in BACKENDS:
            raise UsageError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if backend == "tensorrt" and precision == "int8_dynamic":
            raise UsageError("backend='tensorrt' runs Q/DQ (static) INT8 only; use precision 'int8' or 'int8_static'")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 1024):
            raise UsageError(f"threads must be an integer in 1..1024, got {threads!r}")
        if isinstance(max_batch_frames, bool) or not isinstance(max_batch_frames, int) or max_batch_frames < 1:
            raise UsageError(f"max_batch_frames must be a positive integer, got {max_batch_frames!r}")
        if features not in FEATURE_ENGINES:
            raise UsageError(f"unknown features {features!r}; choose one of {', '.join(FEATURE_ENGINES)}")
        manifest = Manifest.load(export_dir)
        chosen = choose_providers(providers, precision, trt_cache_dir(manifest.export_dir))
        accelerated = backend == "tensorrt" or is_accelerated(chosen)
        sessions, artifacts = {}, {}
        for tower in ("audio", "text"):
            artifact = _pick_artifact(manifest, tower, precision, accelerated)
            session = open_session(backend, manifest, artifact, chosen, threads)
            if precision == "int8" and accelerated and backend == "onnxruntime" and session.providers[0] == CPU_EP:
                # The accelerator did not start (no driver, no GPU): run the variant made for CPUs.
                fallback = _pick_artifact(manifest, tower, precision, accelerated=False)
                if fallback.file != artifact.file:
                    log.warning("%s tower: %s did not start, using %s on the CPU instead of %s", tower,
                                provider_name(chosen[0]), fallback.file, artifact.file)
                    artifact, session = fallback, open_session(backend, manifest, fallback, [CPU_EP], threads)
            _check_graph_matches_manifest(manifest, tower, artifact.file, session)
            log.info("%s tower: %s (%s, %s backend, %s)", tower, artifact.file, artifact.precision_key, backend,
                     session.providers[0])
            if artifact.below_fidelity_gate:
                log.warning("%s was written below its fidelity gate (--force): see its manifest fidelity",
                            artifact.file)
            sessions[tower], artifacts[tower] = session, artifact
        try:
            tokenizer = TextTokenizer.from_json(manifest.read_verified("tokenizer.json").decode("utf-8"))
        except ModelFilesError:
            raise
        except Exception as exc:  # the tokenizers library raises bare Exceptions for malformed JSON
            raise ModelFilesError(f"{manifest.export_dir / 'tokenizer.json'}: not a usable tokenizer "
                                  f"({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__})") from None
        if manifest.model.heads != "trained":
            log.warning("%s has %s heads: embeddings are not meaningful for retrieval", manifest.model.name,
                        manifest.model.heads)
        model = cls(manifest, sessions["audio"], sessions["text"], tokenizer, precision, dim, clip_policy,
                    window_hop_seconds, max_batch_frames)
        model.artifacts = artifacts
        if features == "onnx":
            if WAVEFORM_FRONTEND_FILE not in manifest.files:
                raise ModelFilesError(f"{manifest.export_dir}: no {WAVEFORM_FRONTEND_FILE} (exports since issue 29 have it: "
                                      "re-export with export/to_onnx.py), or use features='numpy'")
            onnx_providers = chosen if backend == "onnxruntime" else [CPU_EP]
            model.frontend_session = open_frontend(manifest, onnx_providers, threads)
        return model

    @staticmethod
    def describe_choice(manifest: Manifest, precision: str, available: Sequence[str]) -> str:
        """Which artifacts ``from_pretrained(precision=...)`` would load with the default providers, and on which
        provider: the first whose libraries load here (``session.would_start``), not merely the first listed."""
        chosen, _ = would_start(available)
        accelerated = is_accelerated(chosen)
        files = [_pick_artifact(manifest, tower, precision, accelerated).file for tower in ("audio", "text")]
        return f"{' + '.join(files)} on {chosen[0]}"

    @property
    def matryoshka_dims(self) -> tuple[int, ...]:
        return self.spec.matryoshka_dims

    # -- audio -------------------------------------------------------------------------------------

    def iter_embed_audio(self, inputs: Iterable[AudioInput], dim: int | None = None,
                         batch_size: int = 8, decode_workers: int | None = None) -> Iterator[AudioEmbedding]:
        """Embed audio items lazily, yielding one ``AudioEmbedding`` per input, in input order.

        Items are decoded in blocks (an hours-long file never sits in memory whole) by ``decode_workers``
        threads ahead of the encoder (runtime/frontend.py; default ``self.decode_workers``, 0 = in this
        thread, one item at a time), and at most about one batch of windows waits at a time (four, sorted
        into mixed-length batches, where the graph takes ``frame_lengths``). A bad item yields a result with
        ``error`` naming it; the others go on.
        """
        dim = self.check_dim(dim)
        batcher = self._batcher(batch_size)
        states: dict[int, _ItemState] = {}
        next_out = 0
        workers = self.decode_workers if decode_workers is None else decode_workers
        stream = ordered_windows(as_items(inputs), lambda item, index: self._features(item, describe_source(item, index)),
                                 workers)
        for index, item, windows in stream:
            state = states[index] = _ItemState(describe_source(item, index))
            while True:
                try:
                    features = next(windows, None)
                except AudioInputError as exc:
                    state.error = str(exc)
                except (ValueError, TypeError, OSError, MemoryError, RuntimeError) as exc:
                    # Decoding untrusted bytes: a library error on one item must not end the whole job.
                    state.error = f"{state.source}: cannot decode audio ({type(exc).__name__}: {exc})"
                if state.error is not None or features is None:
                    break
                state.windows_queued += 1
                # Outside the guard: an encoder failure is not this item's fault and must propagate.
                self._encode(batcher.add(index, features), states)
            if state.error is not None:
                batcher.drop(index)
            state.decoded = True
            while next_out in states and states[next_out].finished:
                yield self._result(next_out, states.pop(next_out), dim)
                next_out += 1
        self._encode(batcher.flush(), states)
        while next_out in states:
            yield self._result(next_out, states.pop(next_out), dim)
            next_out += 1

    def embed_audio(self, inputs: Iterable[AudioInput], dim: int | None = None, batch_size: int = 8) -> np.ndarray:
        """float32 [N, dim] for N audio items (paths or (array, sample_rate)); raises on the first bad one."""
        rows = []
        for result in self.iter_embed_audio(inputs, dim, batch_size):
            if not result.ok:
                raise AudioInputError(result.error)
            rows.append(result.embedding)
        return np.stack(rows) if rows else np.zeros((0, self.check_dim(dim)), np.float32)

    def window_features(self, item: AudioInput, source: str | None = None) -> list[np.ndarray]:
        """Every encoder input of one item: for pipelines that decode on other workers than the encoder
        (runtime/ray_pipeline.py). Needs no session. Raises AudioInputError naming the item."""
        return list(self._features(item, source or describe_source(item, 0)))

    def embed_windows(self, items: Sequence[Sequence[np.ndarray]], dim: int | None = None,
                      batch_size: int = 8) -> list[np.ndarray]:
        """Embeddings of items given as their ``window_features``, batched and averaged as ``iter_embed_audio`` does."""
        dim = self.check_dim(dim)
        batcher = self._batcher(batch_size)
        states = {}
        for index, windows in enumerate(items):
            states[index] = _ItemState(str(index), windows_queued=len(windows), decoded=True)
            for features in windows:
                self._encode(batcher.add(index, features), states)
        self._encode(batcher.flush(), states)
        return [self._result(index, states[index], dim).embedding for index in range(len(items))]

    def _features(self, item: AudioInput, source: str) -> Iterator[np.ndarray]:
        """Encoder inputs of one item, a window at a time; an item with no samples left is an error."""
        windows = 0
        for window in iter_windows(iter_audio_blocks(item, source), self.window_hop_samples, self.window_samples):
            windows += 1
            if self.frontend_session is None:
                yield clip_features(window, self.spec.n_mels, self.clip_policy, self.spec.max_frames)
                continue
            # the waveform-in graph (features="onnx"): the provider computes the log-mel, equal to clip_features
            frames = clip_frames(window.size, self.clip_policy, self.spec.max_frames)
            yield self.frontend_session.run({"waveform": waveform_batch([window], [frames], self.window_samples),
                                             FRAME_LENGTHS: np.array([frames], np.int64)})[0]
        if windows == 0:
            raise AudioInputError(f"{source}: no audio left after resampling to {SAMPLE_RATE} Hz (too short)")

    def _batcher(self, batch_size: int) -> WindowBatcher:
        # Mixed lengths share a batch only where the graph masks the padding (exports since frame_lengths).
        return WindowBatcher(batch_size, self.max_batch_frames, mixed_lengths=self.spec.frame_lengths)

    def _encode(self, batches: list[Batch], states: dict[int, _ItemState]) -> None:
        for batch in batches:
            feeds = {"input_features": np.ascontiguousarray(batch.features, np.float32)}
            if batch.lengths is not None:
                feeds[FRAME_LENGTHS] = batch.lengths
            embeddings = self.audio_session.run(feeds)
            for index, embedding in zip(batch.items, embeddings):
                state = states[index]
                state.total = embedding.astype(np.float64) if state.total is None else state.total + embedding
                state.windows_done += 1

    def _result(self, index: int, state: _ItemState, dim: int) -> AudioEmbedding:
        if state.error is not None:
            return AudioEmbedding(index, state.source, None, state.error, state.windows_done)
        # The full-width embedding is the normalised window mean; every dim is its re-normalised prefix.
        full = normalize(state.total / state.windows_done)
        return AudioEmbedding(index, state.source, truncate(full, dim), None, state.windows_done)

    # -- text --------------------------------------------------------------------------------------

    def embed_text(self, texts: str | bytes | Sequence[str | bytes], dim: int | None = None,
                   batch_size: int = 32) -> np.ndarray:
        """float32 [N, dim] for N texts. Text beyond the model's token limit is truncated.

        ``bytes`` items must be valid UTF-8 (decoded strictly: a clear error rather than silently
        replaced characters changing the embedding). An empty or whitespace-only text is legal (it
        embeds as the tokenizer's special tokens alone, one vector shared by all such texts); it is
        logged as a warning.
        """
        dim = self.check_dim(dim)
        if isinstance(texts, (str, bytes)):
            texts = [texts]
        if texts is None or not isinstance(texts, Iterable) or isinstance(texts, (Mapping, set, frozenset)):
            raise TextInputError(f"texts must be a string or a sequence of strings, got {type(texts).__name__}")
        texts = [_as_text(text, i) for i, text in enumerate(texts)]
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise UsageError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        blank = [i for i, text in enumerate(texts) if not text.strip()]
        if blank:
            log.warning("text%s %s %s empty or whitespace only: embedded as the empty text", "s" if len(blank) > 1 else "",
                        ", ".join(map(str, blank[:10])) + (" ..." if len(blank) > 10 else ""), "are" if len(blank) > 1 else "is")
        rows = []
        for start in range(0, len(texts), batch_size):
            with self._tokenizer_lock:
                feeds = self.tokenizer.feeds(texts[start:start + batch_size])
            rows.append(self.text_session.run(feeds))
        if not rows:
            return np.zeros((0, dim), np.float32)
        return truncate(np.concatenate(rows), dim)

    # -- shared ------------------------------------------------------------------------------------

    similarity = staticmethod(similarity)

    def check_dim(self, dim: int | None) -> int:
        if dim is None:
            return self.dim
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or int(dim) not in self.spec.matryoshka_dims:
            raise UsageError(f"dim {dim!r} is not one of this model's Matryoshka dims "
                             f"{', '.join(map(str, self.spec.matryoshka_dims))}")
        return int(dim)

    def __repr__(self) -> str:
        return (f"WavLink({self.spec.name!r}, precision={self.precision!r}, dim={self.dim}, "
                f"clip_policy={self.clip_policy!r}, providers={getattr(self.audio_session, 'providers', '?')})")


def _check_graph_matches_manifest(manifest: Manifest, tower: str, file: str, session: Session) -> None:
    """The manifest's widths must be the graph's: a lying manifest fails at load, naming the field."""
    shapes = session.io_shapes()
    where = f"{manifest.export_dir / 'manifest.json'}"
    width = shapes["output"][-1] if shapes["output"] else None
    if isinstance(width, int) and width > 0 and width != manifest.model.embed_dim:
        raise ModelFilesError(f"{where}: model.embed_dim is {manifest.model.embed_dim} but {file} outputs {width} dims")
    mels = shapes.get("input_features", (None, None))[1] if tower == "audio" else None
    if isinstance(mels, int) and mels > 0 and mels != manifest.model.n_mels:
        raise ModelFilesError(f"{where}: model.n_mels is {manifest.model.n_mels} but {file} takes {mels} mel bins")
    if tower == "audio" and (FRAME_LENGTHS in shapes) != manifest.model.frame_lengths:
        raise ModelFilesError(f"{where}: model.frame_lengths is {str(manifest.model.frame_lengths).lower()} but {file} "
                              f"{'takes' if FRAME_LENGTHS in shapes else 'does not take'} a {FRAME_LENGTHS} input")


def _pick_artifact(manifest: Manifest, tower: str, precision: str, accelerated: bool) -> ArtifactSpec:
    return int8_for_this_cpu(manifest, _pick_listed_artifact(manifest, tower, precision, accelerated))


def int8_for_this_cpu(manifest: Manifest, artifact: ArtifactSpec, flags=None) -> ArtifactSpec:
    """Among the artifacts of this one's tower, precision and variant: one made for this CPU's kind
    (runtime.cpu_features) if the manifest lists one (`int8_cpus`, e.g. ["vnni", "arm_dotprod"] for full
    8-bit weights, whose u8 x s8 products saturate AVX2's int16 pairs without VNNI), else one that lists no
    kinds (exact everywhere: weights within 7 bits), else fp32 with a warning. So AVX2 without VNNI and a CPU
    whose kind is unknown get the AVX2-safe artifact. Artifacts that are not INT8 pass through."""
    if artifact.precision != "int8":
        return artifact
    kind = cpu_features.int8_kind(flags)
    same = [a for a in manifest.artifacts if (a.tower, a.precision, a.variant) == (artifact.tower, "int8", artifact.variant)]
    made_for_here = [a for a in same if kind in (manifest.files[a.file].get("int8_cpus") or ())]
    anywhere = [a for a in same if not manifest.files[a.file].get("int8_cpus")]
    if made_for_here or anywhere:
        return (made_for_here or anywhere)[0]
    log.warning("%s is exact only on %s CPUs and this one is %s: using fp32 (re-quantize with the AVX2-safe "
                "artifact for this CPU)", artifact.file, "/".join(manifest.files[artifact.file]["int8_cpus"]), kind)
    return manifest.find_artifact(artifact.tower, "fp32")


def _pick_listed_artifact(manifest: Manifest, tower: str, precision: str, accelerated: bool) -> ArtifactSpec:
    if precision.startswith("int8_"):
        return manifest.find_artifact(tower, "int8", precision.split("_", 1)[1])
    if precision != "int8":
        return manifest.find_artifact(tower, precision)
    # Dynamic INT8 is CPU-only in practice; Q/DQ static graphs are what CUDA/TensorRT accelerate.
    preferred, other = ("static", "dynamic") if accelerated else ("dynamic", "static")
    manifest.find_artifact(tower, "int8")  # neither variant: report "int8" missing, not the fallback
    try:
        return manifest.find_artifact(tower, "int8", preferred)
    except ModelFilesError:
        artifact = manifest.find_artifact(tower, "int8", other)
        log.warning("%s tower: no int8 %s artifact, using the %s one", tower, preferred, other)
        return artifact


def as_items(inputs):
    """A lone path or (array, sample_rate) pair is one item, not a sequence of characters or parts."""
    if isinstance(inputs, (str, os.PathLike)) or is_array_pair(inputs) or (
            isinstance(inputs, tuple) and len(inputs) == 2 and isinstance(inputs[0], np.ndarray)):
        return [inputs]  # a pair with a bad rate is still one item, refused by name when decoded
    return inputs


def _as_text(text: object, index: int) -> str:
    if isinstance(text, bytes):
        try:
            return text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TextInputError(f"text[{index}]: bytes are not valid UTF-8 ({exc}); decode them first") from None
    if not isinstance(text, str):
        raise TextInputError(f"text[{index}]: expected str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates, e.g. from os.fsdecode of non-UTF-8 bytes
        raise TextInputError(f"text[{index}]: not encodable as UTF-8 ({exc})") from None
    return text
