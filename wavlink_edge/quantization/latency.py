"""Quick CPU latency of every artifact of an export dir vs its fp32 tower (same process, batch 1).

    python quantization/latency.py EXPORT_DIR [--runs 7] [--threads N] [--markdown]
    python quantization/latency.py EXPORT_DIR --profile audio_int8_dynamic.onnx [--runs 7]   # time per op type

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

if not __package__:  # run by path: run as this checkout's package module (wavlink_edge/run_by_path.py says why)
    import runpy
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "run_by_path.py"))["run"](__file__)

from wavlink_edge.quantization import evaluate as ev
from wavlink_edge.runtime.arguments import add_model_option
from wavlink_edge.runtime.features import SAMPLE_RATE, clip_features


def inputs(export_dir: Path) -> dict:
    manifest = ev.load_manifest(export_dir)
    n_mels = manifest["model"]["n_mels"]

    speech = ev.load_audio(ev.SAMPLES_DIR / "speech_en_female.flac")
    clip5 = np.resize(speech, 5 * SAMPLE_RATE)  # 5 s: the sample repeated or cut
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


def profile(export_dir: Path, artifact: str, runs: int = 7, threads: int | None = None) -> dict:
    """Kernel time per op type (ORT's profiler), per audio input, averaged over runs after one warm-up run:
    where an artifact's time goes."""
    import json
    import tempfile

    feeds = inputs(export_dir)["audio"]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, feed in feeds.items():
            sess = ev.session(Path(export_dir) / artifact, threads, profile_prefix=str(Path(tmp) / "p"))
            for _ in range(runs + 1):
                sess.run(feed)
            events = json.loads(Path(sess.end_profiling()).read_text())
            runs_at = sorted(e["ts"] for e in events if e.get("name") == "model_run")
            start = runs_at[1]  # skip the warm-up run
            per_op: dict[str, float] = {}
            for e in events:
                if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
                    op = e["args"].get("op_name", "?")
                    per_op[op] = per_op.get(op, 0.0) + e["dur"] / 1000 / runs
            total = sum(per_op.values())
            out[label] = {"total_ms": total, "ops": dict(sorted(per_op.items(), key=lambda kv: -kv[1]))}
    return out


def profile_markdown(prof: dict, artifact: str, top: int = 8) -> str:
    lines = [f"Kernel time by op type, `{artifact}` (ORT profiler, batch 1; ms and share of the summed kernel time)", "",
             "| input | summed kernels (ms) | " + " | ".join(f"#{i + 1}" for i in range(top)) + " |", "|---|---|" + "---|" * top]
    for label, p in prof.items():
        cells = [f"{op} {ms:.1f} ({100 * ms / p['total_ms']:.0f} %)" for op, ms in list(p["ops"].items())[:top]]
        lines.append(f"| {label} | {p['total_ms']:.1f} | " + " | ".join(cells + [""] * (top - len(cells))) + " |")
    return "\n".join(lines)


def markdown(rows: list[dict], runs: int) -> str:
    lines = [f"CPU: {platform.processor() or platform.machine()}, onnxruntime CPUExecutionProvider, batch 1, "
             f"median of {runs} runs (interleaved), same process.", "",
             "| tower | input | artifact | ms | vs fp32 |", "|---|---|---|---|---|"]
    lines += [f"| {r['tower']} | {r['input']} | {r['artifact']} | {r['ms']:.0f} | {r['vs_fp32']:.2f}x |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_option(p, dest="export_dir", positional=True)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--threads", type=int)
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--profile", metavar="ARTIFACT", help="time per op type of one audio artifact instead")
    a = p.parse_args(argv)
    if a.profile:
        print(profile_markdown(profile(a.export_dir, a.profile, a.runs, a.threads), a.profile))
        return 0
    rows = measure(a.export_dir, a.runs, a.threads)
    if a.markdown:
        print(markdown(rows, a.runs))
    else:
        for r in rows:
            print(f"{r['tower']:5s} {r['input']:9s} {r['artifact']:28s} {r['ms']:8.1f} ms  {r['vs_fp32']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
