"""Lyrics-model latency: one 30 s chunk of real speech through the exported lyrics graphs (encoder +
cross K/V, then greedy decoding with the KV cache) against CTranslate2's greedy transcription of the
same chunk (what faster-whisper runs), and the decoder's step cost with and without the KV cache.

    python bench/wealy.py --model exports/wavlink-base [--out bench/results/wealy.json]

All timings come from one process in one run, so compare their ratios, not absolute values across runs.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

if not __package__:  # run by path: run as this checkout's package module (wavlink_edge/run_by_path.py says why)
    import runpy
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "run_by_path.py"))["run"](__file__)

from wavlink_edge.export.backbones import ct2_whisper_base_dir
from wavlink_edge.runtime.audio import decode_audio
from wavlink_edge.runtime.features import SAMPLE_RATE
from wavlink_edge.runtime.lyrics import Lyrics

CALIBRATION = Path(__file__).resolve().parent.parent / "quantization" / "calibration"


def speech_chunk(seconds: float = 30.0) -> np.ndarray:
    """English speech clips of the calibration set, joined until the chunk is full."""
    parts, total = [], 0
    for path in sorted(CALIBRATION.glob("speech_*en*.ogg")):
        x = decode_audio(path)
        parts.append(x)
        total += len(x)
        if total >= seconds * SAMPLE_RATE:
            break
    return np.concatenate(parts)[: int(seconds * SAMPLE_RATE)]


def best_of(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def step_costs(model: Lyrics, features: np.ndarray, decoded, steps: int) -> dict:
    """Per-token decoder cost at the same positions: feeding one token with the cache vs the whole prefix
    from an empty cache (what a cache-less decoder does at every step)."""
    cross_k, cross_v = model.encoder.run_all({"input_features": features})
    v = model.vocab
    sequence = [v.sot, decoded.language, v.transcribe, v.no_timestamps] + decoded.tokens[:steps]
    empty_k, empty_v = model.empty_cache
    _, _, k, v_ = model.step(np.array([sequence[:4]], np.int64), empty_k, empty_v, cross_k, cross_v)
    cached, full = [], []
    for t in range(4, len(sequence)):
        start = time.perf_counter()
        _, _, k, v_ = model.step(np.array([[sequence[t]]], np.int64), k, v_, cross_k, cross_v)
        cached.append(time.perf_counter() - start)
        start = time.perf_counter()
        model.step(np.array([sequence[: t + 1]], np.int64), empty_k, empty_v, cross_k, cross_v)
        full.append(time.perf_counter() - start)
    return {"positions": len(cached), "with_cache_ms": 1e3 * statistics.mean(cached),
            "without_cache_ms": 1e3 * statistics.mean(full),
            "without_cache_last_ms": 1e3 * full[-1], "with_cache_last_ms": 1e3 * cached[-1]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="exports/wavlink-base")
    parser.add_argument("--out", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    import ctranslate2

    model = Lyrics.from_pretrained(args.model, threads=args.threads)
    chunk = speech_chunk()
    features = next(model.windows((chunk, SAMPLE_RATE), "chunk"))
    encoder_s, _ = best_of(lambda: model.encoder.run_all({"input_features": features}), args.repeats)
    ours_s, decoded = best_of(lambda: model.decode_window(features), args.repeats)
    results = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
               "chunk_seconds": len(chunk) / SAMPLE_RATE, "tokens": len(decoded.tokens),
               "ort_fp32": {"encoder_s": encoder_s, "chunk_s": ours_s}}
    with tempfile.TemporaryDirectory() as tmp:
        ct2_dir = str(ct2_whisper_base_dir(tmp))
        mel = ctranslate2.StorageView.from_array(features)
        for compute in ("float32", "int8"):
            whisper = ctranslate2.models.Whisper(ct2_dir, device="cpu", compute_type=compute, intra_threads=args.threads)

            def transcribe(whisper=whisper):
                language = whisper.detect_language(mel)[0][0][0]
                return whisper.generate(mel, [["<|startoftranscript|>", language, "<|transcribe|>",
                                               "<|notimestamps|>"]], beam_size=1)[0].sequences_ids[0]

            seconds, ids = best_of(transcribe, args.repeats)
            results[f"ctranslate2_{compute}"] = {"chunk_s": seconds, "tokens": len(ids),
                                                 "same_tokens_as_ours": ids == decoded.tokens}
    results["ratio_ours_to_ct2_float32"] = ours_s / results["ctranslate2_float32"]["chunk_s"]
    results["kv_cache"] = step_costs(model, features, decoded, 48)
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
