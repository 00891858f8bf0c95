"""Data and fidelity measurement shared by quantize.py, exclusion_sweep.py and latency.py (torch-free).

Fidelity of an artifact = cosine of its embedding to the fp32 ONNX embedding of the same input, per
Matryoshka dim (first `dim` columns re-normalised, as the runtime does), on held-out real clips (each
clip twice: padded to 30 s and trimmed to its own length) and held-out sentences. Inputs run one row
at a time so the figures are not affected by batch-mates.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from wavlink_edge.runtime import vectors
from wavlink_edge.runtime.audio import decode_audio
from wavlink_edge.runtime.batching import FRAME_LENGTHS, padded_batch
from wavlink_edge.runtime.bundled import SAMPLES_DIR  # noqa: F401  (quantize.py and latency.py read ev.SAMPLES_DIR)
from wavlink_edge.runtime.features import clip_features
from wavlink_edge.runtime.inputs import AUDIO_SUFFIXES  # the runtime decodes every one of them
from wavlink_edge.runtime.manifest import Manifest
from wavlink_edge.runtime.session import OnnxSession
from wavlink_edge.runtime.text import TextTokenizer

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CALIBRATION_DIR = HERE / "calibration"
HELDOUT_DIR = HERE / "heldout"
EVAL_SPLIT_DIR = REPO / "bench" / "data" / "wavlink_eval"  # benchmark eval split, used when present


def load_manifest(export_dir: Path) -> dict:
    """The export's manifest as a dict (read and validated by the runtime's Manifest)."""
    return Manifest.load(export_dir).data


def load_audio(path: Path) -> np.ndarray:
    """16 kHz mono float32 through the runtime's decoder (soundfile + soxr), as users' clips are read."""
    return decode_audio(path)


def audio_files(folder: Path, limit: int | None = None) -> list[Path]:
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if limit is not None and len(files) > limit:
        # evenly spread, deterministic
        files = [files[i] for i in np.linspace(0, len(files) - 1, limit).round().astype(int)]
    return files


def audio_feeds(paths: list[Path], n_mels: int, policies=("pad", "trim")) -> list[tuple[str, dict]]:
    """One feed per clip and input policy: 'pad' (30 s, 3000 frames) and 'trim' (the clip's own frames),
    made by the runtime's front end (clip_features)."""
    feeds = []
    for path in paths:
        audio = load_audio(path)
        for policy in policies:
            feeds.append((f"{path.name}:{policy}", {"input_features": clip_features(audio, n_mels, policy)[None]}))
    return feeds


def read_sentences(path: Path) -> list[str]:
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def _tokenizer(tokenizer_json: Path) -> TextTokenizer:
    return TextTokenizer.from_json(Path(tokenizer_json).read_text(encoding="utf-8"))


def text_feeds(sentences: list[str], tokenizer_json: Path) -> list[tuple[str, dict]]:
    """One feed per sentence (batch 1, no padding)."""
    tok = _tokenizer(tokenizer_json)
    return [(s[:40], tok.feeds([s])) for s in sentences]


def text_batch(sentences: list[str], tokenizer_json: Path) -> dict:
    """All sentences as one batch padded to the longest (the exported tokenizer pads)."""
    return _tokenizer(tokenizer_json).feeds(sentences)


def heldout_audio_paths(eval_dir: Path | None = None, eval_limit: int = 8) -> list[Path]:
    """runtime/samples + quantization/heldout (+ up to eval_limit clips of the benchmark eval split)."""
    paths = audio_files(SAMPLES_DIR) + audio_files(HELDOUT_DIR)
    split = Path(eval_dir) if eval_dir else EVAL_SPLIT_DIR
    if split.is_dir():
        paths += audio_files(split, limit=eval_limit)
    return paths


def heldout_sentences() -> list[str]:
    # the empty string and an over-long text are legal inputs: check them too
    return read_sentences(HELDOUT_DIR / "sentences.txt") + ["", "crowd noise " * 80]


def session(path: Path, threads: int | None = None, profile_prefix: str | None = None) -> OnnxSession:
    """CPU session through the runtime's OnnxSession (`.run(feeds)` -> first output)."""
    return OnnxSession(Path(path), name=Path(path).name, threads=threads, profile_prefix=profile_prefix)


def embed(sess: OnnxSession, feeds: list[tuple[str, dict]]) -> np.ndarray:
    """Embeddings [N, D], one row per run (batch 1)."""
    return np.concatenate([sess.run(feed) for _, feed in feeds]).astype(np.float64)


def cosine_by_dim(reference: np.ndarray, candidate: np.ndarray, dims) -> dict:
    out = {}
    for dim in dims:
        cos = vectors.cosine(vectors.truncate(reference, dim), vectors.truncate(candidate, dim))
        out[str(dim)] = {"cosine_min": round(float(cos.min()), 6), "cosine_mean": round(float(cos.mean()), 6)}
    return out


class HeldOut:
    """Held-out inputs of one tower and their fp32 reference embeddings (computed once)."""

    def __init__(self, export_dir: Path, tower: str, eval_dir: Path | None = None, eval_limit: int = 8,
                 fast: bool = False):
        manifest = load_manifest(export_dir)
        self.dims = manifest["model"]["matryoshka_dims"]
        if tower == "audio":
            # fast (CI): the bundled samples and the held-out real recordings (short clips under trim are where
            # INT8 loses most; three samples alone let one clip swing a gate on the mean)
            paths = audio_files(SAMPLES_DIR) + audio_files(HELDOUT_DIR / "real") if fast else heldout_audio_paths(eval_dir, eval_limit)
            self.feeds = audio_feeds(paths, manifest["model"]["n_mels"])
            self.source = sorted({str(p.parent.relative_to(REPO)) if p.is_relative_to(REPO) else str(p.parent) for p in paths})
        else:
            self.feeds = text_feeds(heldout_sentences(), Path(export_dir) / "tokenizer.json")
            self.source = [str((HELDOUT_DIR / "sentences.txt").relative_to(REPO)), "empty text", "over-long text"]
        self.reference = embed(session(Path(export_dir) / f"{tower}.onnx"), self.feeds)

    def fidelity(self, model_path: Path) -> dict:
        """Cosine mean/min per dim over every input, plus (audio) the same per clip policy in "by_policy"."""
        got = embed(session(model_path), self.feeds)
        out = cosine_by_dim(self.reference, got, self.dims)
        policies = sorted({key.rsplit(":", 1)[1] for key, _ in self.feeds if ":" in key})
        if policies:
            out["by_policy"] = {}
            for policy in policies:
                rows = np.array([key.endswith(":" + policy) for key, _ in self.feeds])
                out["by_policy"][policy] = cosine_by_dim(self.reference[rows], got[rows], self.dims)
        return out

    def describe(self) -> dict:
        return {"n": len(self.feeds), "inputs": self.source, "reference": "fp32 ONNX", "batch": 1}


def min_mean(fig: dict) -> float:
    return min(v["cosine_mean"] for k, v in fig.items() if k.isdigit())


def min_min(fig: dict) -> float:
    return min(v["cosine_min"] for k, v in fig.items() if k.isdigit())


def mixed_batch_exactness(model_path: Path, feeds: list[tuple[str, dict]]) -> dict:
    """Every audio feed (clips of several lengths) in one zero-padded batch with ``frame_lengths`` against each
    run alone, by the same graph: max-abs and the smallest cosine (1.0 = a clip's batch-mates change nothing)."""

    sess = session(model_path)
    windows = [feed["input_features"][0] for _, feed in feeds]
    alone = embed(sess, feeds)
    features, lengths = padded_batch(windows)
    mixed = sess.run({"input_features": features, FRAME_LENGTHS: lengths}).astype(np.float64)
    return {"max_abs": float(np.abs(mixed - alone).max()), "cosine_min": float(vectors.cosine(mixed, alone).min()),
            "rows": len(windows), "frames_min": int(lengths.min()), "frames_max": int(lengths.max()),
            "distinct_lengths": len(set(lengths.tolist()))}
