"""Quick CPU latency of every artifact of an export dir vs its fp32 tower (same process, batch 1).

    python quantization/latency.py EXPORT_DIR [--runs 7] [--threads N] [--markdown]

Audio: a 30 s padded clip (3000 frames) and a 5 s clip trimmed to its own length (500 frames); text:
one caption-length sentence. Median of --runs after one warm-up run, models timed interleaved so a
noisy neighbour slows them alike. A quick measurement, not the benchmark (bench/).
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

from wavlink_edge.quantization import evaluate as ev


def inputs(export_dir: Path) -> dict:
    manifest = ev.load_manifest(export_dir)
    n_mels = manifest["model"]["n_mels"]
    from wavlink_edge.runtime.features import clip_features

    speech = ev.load_audio(ev.SAMPLES_DIR / "speech_en_female.flac")
    clip5 = np.resize(speech, 5 * ev.SR)  # 5 s: the sample repeated or cut
    mel30 = clip_features(speech, n_mels, "pad")[None]
    mel5 = clip_features(clip5, n_mels, "trim")[None]
    text = ev.text_feeds(["a woman speaks over a slow piano melody while rain falls"], Path(export_dir) / "tokenizer.json")[0][1]
    return {"audio": {"30 s pad": {"input_features": mel30}, "5 s trim": {"input_features": np.ascontiguousarray(mel5)}},
            "text": {"sentence": text}}


def measure(export_dir: Path, runs: int = 7, threads: int | None = None) -> list[dict]:
    export_dir = Path(export_dir)
    manifest = ev.load_manifest(export_dir)
    feeds = inputs(export_dir)
    rows = []
    for tower in ("audio", "text"):
        names = [n for n, e in manifest["artifacts"].items() if e.get("tower") == tower and (export_dir / n).is_file()]
        names.sort(key=lambda n: (n != f"{tower}.onnx", n))
        sessions = {n: ev.session(export_dir / n, threads) for n in names}
        for label, feed in feeds[tower].items():
            times = {n: [] for n in names}
            for s in sessions.values():
                s.run(feed)  # warm-up
            for _ in range(runs):
                for n, s in sessions.items():
                    t = time.perf_counter()
                    s.run(feed)
                    times[n].append(time.perf_counter() - t)
            base = float(np.median(times[f"{tower}.onnx"]))
            for n in names:
                med = float(np.median(times[n]))
                rows.append({"tower": tower, "input": label, "artifact": n, "ms": med * 1000, "vs_fp32": med / base})
    return rows


def markdown(rows: list[dict], runs: int) -> str:
    lines = [f"CPU: {platform.processor() or platform.machine()}, onnxruntime CPUExecutionProvider, batch 1, "
             f"median of {runs} runs (interleaved), same process.", "",
             "| tower | input | artifact | ms | vs fp32 |", "|---|---|---|---|---|"]
    lines += [f"| {r['tower']} | {r['input']} | {r['artifact']} | {r['ms']:.0f} | {r['vs_fp32']:.2f}x |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("export_dir", type=Path)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--threads", type=int)
    p.add_argument("--markdown", action="store_true")
    a = p.parse_args(argv)
    rows = measure(a.export_dir, a.runs, a.threads)
    if a.markdown:
        print(markdown(rows, a.runs))
    else:
        for r in rows:
            print(f"{r['tower']:5s} {r['input']:9s} {r['artifact']:28s} {r['ms']:8.1f} ms  {r['vs_fp32']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
