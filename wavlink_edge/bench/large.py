"""Load time, RSS and CPU latency of a large export per precision, against CTranslate2 on the same weights.

    python bench/large.py --model EXPORT_DIR [--ct2 CT2_DIR] [--frames 500,3000] [--calls 3] [--out FILE.json]

Each precision runs in a fresh subprocess: `WavLink.from_pretrained` (hash checks included) is timed,
RSS is read after loading and at the end (peak), one real clip is embedded through the runtime, then
the audio session runs batch-1 log-mels of each frame count (one untimed call, then --calls timed; the
median is reported). --ct2 is a CTranslate2 conversion of the same Whisper weights
(`ct2-transformers-converter --model HF_DIR --quantization int8`): its `encode` is timed on the same
inputs with the compute types given by --ct2-types. All figures of the random-weight large export
are for size, memory and speed only.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

if not __package__:  # run by path: run as this checkout's package module (wavlink_edge/run_by_path.py says why)
    import runpy
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "run_by_path.py"))["run"](__file__)

from wavlink_edge.bench import machine
from wavlink_edge.runtime import WavLink
from wavlink_edge.runtime.bundled import SAMPLES_DIR

SAMPLE = SAMPLES_DIR / "speech_en_female.flac"


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _time_calls(fn, x, calls: int) -> dict:
    fn(x)  # first call: allocations and weight prepacking
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1000
    return {"p50_ms": round(float(np.median(ms)), 1), "min_ms": round(float(ms.min()), 1), "calls": calls}


def child_onnx(model: str, precision: str, frames: list[int], calls: int, threads: int) -> dict:

    base = _rss_mb()
    t = time.perf_counter()
    # the check clip runs trimmed (its ~6 s of frames): a padded 3000-frame pass is what the latency rows time
    wl = WavLink.from_pretrained(model, precision=precision, threads=threads, clip_policy="trim")
    load_s = time.perf_counter() - t
    loaded = _rss_mb()
    embedding = wl.embed_audio([str(SAMPLE)])[0]
    rng = np.random.default_rng(0)
    latency = {}
    for n in frames:
        x = (rng.standard_normal((1, wl.spec.n_mels, n)) * 0.5).astype(np.float32)
        latency[str(n)] = _time_calls(lambda x: wl.audio_session.run({"input_features": x}), x, calls)
    return {"backend": f"ORT {precision}", "load_s": round(load_s, 1), "rss_loaded_mb": round(loaded - base),
            "rss_after_load_total_mb": round(loaded), "peak_rss_mb": round(_peak_mb()), "latency": latency,
            "sample_embedding_head": [round(float(v), 5) for v in embedding[:4]],
            "audio_file": next(a.file for a in wl.manifest.artifacts if a.tower == "audio" and a.precision_key in (
                precision, f"{precision}_dynamic"))}


def child_ct2(ct2_dir: str, compute_type: str, frames: list[int], calls: int, threads: int, n_mels: int) -> dict:
    import ctranslate2

    base = _rss_mb()
    t = time.perf_counter()
    model = ctranslate2.models.Whisper(ct2_dir, device="cpu", compute_type=compute_type, intra_threads=threads,
                                       inter_threads=1)
    load_s = time.perf_counter() - t
    loaded = _rss_mb()
    rng = np.random.default_rng(0)
    latency = {}
    for n in frames:
        x = (rng.standard_normal((1, n_mels, n)) * 0.5).astype(np.float32)
        try:
            latency[str(n)] = _time_calls(lambda x: model.encode(ctranslate2.StorageView.from_array(x)), x, calls)
        except (RuntimeError, ValueError) as exc:  # CT2 may insist on 3000 frames
            latency[str(n)] = {"error": str(exc).splitlines()[0][:200]}
    return {"backend": f"CTranslate2 encode {compute_type}", "load_s": round(load_s, 1),
            "rss_loaded_mb": round(loaded - base), "rss_after_load_total_mb": round(loaded),
            "peak_rss_mb": round(_peak_mb()), "latency": latency}


def run(args) -> list[dict]:
    rows = []
    jobs = [["--child-onnx", p] for p in args.precisions.split(",")]
    jobs += [["--child-ct2", c] for c in (args.ct2_types.split(",") if args.ct2 else [])]
    for job in jobs:
        cmd = [sys.executable, __file__, "--model", args.model, "--frames", args.frames, "--calls", str(args.calls),
               "--threads", str(args.threads), *job] + (["--ct2", args.ct2] if args.ct2 else [])
        print(f"running {' '.join(job)} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            rows.append({"backend": " ".join(job), "error": (proc.stderr.strip().splitlines() or ["?"])[-1]})
        else:
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--precisions", default="fp32,fp16,int8")
    parser.add_argument("--ct2", help="CTranslate2 Whisper directory converted from the same weights")
    parser.add_argument("--ct2-types", default="int8,float32")
    parser.add_argument("--frames", default="500,3000")
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out")
    parser.add_argument("--child-onnx", help=argparse.SUPPRESS)
    parser.add_argument("--child-ct2", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    frames = [int(f) for f in args.frames.split(",")]
    if args.child_onnx:
        print(json.dumps(child_onnx(args.model, args.child_onnx, frames, args.calls, args.threads)))
        return 0
    if args.child_ct2:
        n_mels = json.loads((Path(args.model) / "manifest.json").read_text())["model"]["n_mels"]
        print(json.dumps(child_ct2(args.ct2, args.child_ct2, frames, args.calls, args.threads, n_mels)))
        return 0

    rows = run(args)
    doc = {"machine": machine.describe(args.threads), "model": args.model, "frames": frames, "rows": rows}
    text = json.dumps(doc, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
