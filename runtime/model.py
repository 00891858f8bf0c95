"""The user-facing model: ``WavLink.from_pretrained(export_dir)`` -> audio and text embeddings.

Embeddings are float32, L2-normalised after Matryoshka truncation to ``dim``. Audio longer than 30 s
is cut into 30 s windows (hop configurable); window embeddings (full width) are averaged and
re-normalised, then truncated, so every ``dim`` of an item is a prefix of the same full embedding.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from tokenizers import Tokenizer

from wavlink_edge.runtime.audio import AudioInput, describe_source, is_array_pair, iter_audio_blocks
from wavlink_edge.runtime.batching import ItemProgress, OrderedWindowBatcher
from wavlink_edge.runtime.errors import AudioInputError, ModelFilesError, TextInputError
from wavlink_edge.runtime.features import CHUNK_SECONDS, CLIP_POLICIES, SAMPLE_RATE, clip_features, iter_windows
from wavlink_edge.runtime.manifest import PRECISION_CHOICES, ArtifactSpec, Manifest
from wavlink_edge.runtime.session import (
    BACKENDS, ProviderSpec, choose_providers, is_accelerated, open_session, trt_cache_dir,
)

log = logging.getLogger("wavlink_edge.runtime")


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


def normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity matrix [len(a), len(b)] of two embedding sets (1-D inputs count as one row)."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"embedding widths differ: {a.shape[-1]} vs {b.shape[-1]} (embed both at the same dim)")
    return normalize(a) @ normalize(b).T


class WavLink:
    """Torch-free WavLink: two ONNX towers, the tokenizer and the Whisper front end in numpy."""

    def __init__(self, manifest: Manifest, audio_session, text_session, tokenizer: Tokenizer,
                 precision: str, dim: int | None = None, clip_policy: str | None = None,
                 window_hop_seconds: float = CHUNK_SECONDS):
        self.manifest = manifest
        self.spec = manifest.model
        self.precision = precision
        self.audio_session = audio_session
        self.text_session = text_session
        self._tokenizer = tokenizer
        # The Rust tokenizer is immutable once configured, but its Python binding gives no documented
        # thread-safety promise; a lock costs microseconds next to an encoder run.
        self._tokenizer_lock = threading.Lock()
        self.dim = self.spec.embed_dim  # _check_dim falls back to self.dim, so set the full width first
        self.dim = self._check_dim(dim)
        self.clip_policy = clip_policy or self.spec.clip_policy
        if self.clip_policy not in CLIP_POLICIES:
            raise ValueError(f"unknown clip policy {self.clip_policy!r}; choose one of {', '.join(CLIP_POLICIES)}")
        if not 0 < window_hop_seconds <= CHUNK_SECONDS:
            raise ValueError(f"window_hop_seconds must be in (0, {CHUNK_SECONDS}], got {window_hop_seconds}")
        self.window_hop_samples = int(round(window_hop_seconds * SAMPLE_RATE))

    @classmethod
    def from_pretrained(cls, export_dir: str | Path, precision: str = "fp32",
                        providers: Sequence[ProviderSpec] | None = None, dim: int | None = None,
                        backend: str = "onnxruntime", clip_policy: str | None = None,
                        window_hop_seconds: float = CHUNK_SECONDS) -> "WavLink":
        """Load an export directory (export/FORMAT.md), checking every file's sha256 before use.

        precision: fp32 | fp16 | int8 (dynamic variant on CPU, static on CUDA/TensorRT) | int8_dynamic |
        int8_static. providers: ORT execution providers (default TensorRT -> CUDA -> CPU as available).
        backend: "onnxruntime" or "tensorrt" (engines built by export/to_tensorrt.py into
        <export>/trt_cache, matched to the manifest's ONNX by sha256). clip_policy: "pad" | "trim"
        (default: the policy the model was trained for, from the manifest).
        """
        if precision not in PRECISION_CHOICES:
            raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISION_CHOICES)}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if backend == "tensorrt" and precision == "int8_dynamic":
            raise ValueError("backend='tensorrt' runs Q/DQ (static) INT8 only; use precision 'int8' or 'int8_static'")
        manifest = Manifest.load(export_dir)
        chosen = choose_providers(providers, precision, trt_cache_dir(manifest.export_dir))
        accelerated = backend == "tensorrt" or is_accelerated(chosen)
        sessions = {}
        for tower in ("audio", "text"):
            artifact = _pick_artifact(manifest, tower, precision, accelerated)
            log.info("%s tower: %s (%s, %s backend)", tower, artifact.file, artifact.precision_key, backend)
            if artifact.below_fidelity_gate:
                log.warning("%s was written below its fidelity gate (--force): see its manifest fidelity",
                            artifact.file)
            sessions[tower] = open_session(backend, manifest, artifact, chosen)
        tokenizer = Tokenizer.from_str(manifest.read_verified("tokenizer.json").decode("utf-8"))
        if manifest.model.heads != "trained":
            log.warning("%s has %s heads: embeddings are not meaningful for retrieval", manifest.model.name,
                        manifest.model.heads)
        return cls(manifest, sessions["audio"], sessions["text"], tokenizer, precision, dim, clip_policy,
                   window_hop_seconds)

    @property
    def matryoshka_dims(self) -> tuple[int, ...]:
        return self.spec.matryoshka_dims

    # -- audio -------------------------------------------------------------------------------------

    def iter_embed_audio(self, inputs: Iterable[AudioInput], dim: int | None = None,
                         batch_size: int = 8) -> Iterator[AudioEmbedding]:
        """Embed audio items lazily, yielding one ``AudioEmbedding`` per input, in input order.

        Items are decoded one at a time in blocks (an hours-long file never sits in memory whole), so
        memory stays bounded by about two batches of features. A bad item yields a result with
        ``error`` naming it; the others go on.
        """
        dim = self._check_dim(dim)
        batcher = OrderedWindowBatcher(self._encode_features, batch_size)
        for index, item in enumerate(_as_items(inputs)):
            source = describe_source(item, index)
            batcher.start(index, source)
            error = self._queue_windows(batcher, index, item, source)
            if error:
                batcher.fail(index, error)
            else:
                batcher.finish_item(index)
            yield from (self._result(done, dim) for done in batcher.pop_finished())
        batcher.flush()
        yield from (self._result(done, dim) for done in batcher.pop_finished())

    def embed_audio(self, inputs: Iterable[AudioInput], dim: int | None = None, batch_size: int = 8) -> np.ndarray:
        """float32 [N, dim] for N audio items (paths or (array, sample_rate)); raises on the first bad one."""
        rows = []
        for result in self.iter_embed_audio(inputs, dim, batch_size):
            if not result.ok:
                raise AudioInputError(result.error)
            rows.append(result.embedding)
        return np.stack(rows) if rows else np.zeros((0, self._check_dim(dim)), np.float32)

    def _queue_windows(self, batcher: OrderedWindowBatcher, index: int, item: AudioInput, source: str) -> str | None:
        """Decode one item window by window into the batcher; the error message if it cannot be used.

        Only decoding is guarded: an encoder failure inside ``batcher.add`` is not this item's fault
        and propagates.
        """
        windows = iter_windows(iter_audio_blocks(item, source), self.window_hop_samples)
        while True:
            try:
                window = next(windows, None)
                if window is None:
                    return None
                features = clip_features(window, self.spec.n_mels, self.clip_policy)
            except AudioInputError as exc:
                return str(exc)
            except (ValueError, TypeError, OSError, MemoryError, RuntimeError) as exc:
                # Decoding untrusted bytes: a library error on one item must not end the whole job.
                return f"{source}: cannot decode audio ({type(exc).__name__}: {exc})"
            batcher.add(index, features)

    def _encode_features(self, batch: np.ndarray) -> np.ndarray:
        return self.audio_session.run({"input_features": np.ascontiguousarray(batch, dtype=np.float32)})

    def _result(self, item: ItemProgress, dim: int) -> AudioEmbedding:
        if item.error is not None:
            return AudioEmbedding(item.index, item.source, None, item.error, item.windows_done)
        full = normalize(item.embedding_sum / item.windows_done)
        return AudioEmbedding(item.index, item.source, normalize(full[:dim]), None, item.windows_done)

    # -- text --------------------------------------------------------------------------------------

    def embed_text(self, texts: str | Sequence[str | bytes], dim: int | None = None, batch_size: int = 32) -> np.ndarray:
        """float32 [N, dim] for N texts. Text beyond the model's token limit is truncated.

        ``bytes`` items must be valid UTF-8 (decoded strictly: a clear error rather than silently
        replaced characters changing the embedding).
        """
        dim = self._check_dim(dim)
        if isinstance(texts, (str, bytes)):
            texts = [texts]
        texts = [_as_text(text, i) for i, text in enumerate(texts)]
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rows = []
        for start in range(0, len(texts), batch_size):
            with self._tokenizer_lock:
                encodings = self._tokenizer.encode_batch(texts[start:start + batch_size])
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            rows.append(self.text_session.run({"input_ids": ids, "attention_mask": mask}))
        if not rows:
            return np.zeros((0, dim), np.float32)
        return normalize(np.concatenate(rows)[:, :dim])

    # -- shared ------------------------------------------------------------------------------------

    similarity = staticmethod(similarity)

    def _check_dim(self, dim: int | None) -> int:
        if dim is None:
            return self.dim
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or int(dim) not in self.spec.matryoshka_dims:
            raise ValueError(f"dim {dim!r} is not one of this model's Matryoshka dims "
                             f"{', '.join(map(str, self.spec.matryoshka_dims))}")
        return int(dim)

    def __repr__(self) -> str:
        return (f"WavLink({self.spec.name!r}, precision={self.precision!r}, dim={self.dim}, "
                f"clip_policy={self.clip_policy!r}, providers={getattr(self.audio_session, 'providers', '?')})")


def _pick_artifact(manifest: Manifest, tower: str, precision: str, accelerated: bool) -> ArtifactSpec:
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


def _as_items(inputs):
    """A lone path or (array, sample_rate) pair is one item, not a sequence of characters or parts."""
    if isinstance(inputs, (str, os.PathLike)) or is_array_pair(inputs):
        return [inputs]
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
