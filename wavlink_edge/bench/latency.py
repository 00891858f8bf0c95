"""Latency of every backend x precision against the PyTorch reference, measured side by side in one run.

    python bench/latency.py --model DIR [--quick] [--out bench/results] [--threads N]

Each backend runs in its own fresh subprocess, so peak RSS is attributable to it and cold start
(interpreter + imports + load + first embedding) is real. Every backend gets the same pinned thread
count (CPU affinity + its library's intra-op setting). The PyTorch row is measured in the same run,
so each ratio compares like with like on the same machine state.

Under the `pad` policy every clip length becomes 3000 frames, so pad rows of different lengths (and
trim at 30 s) are one computation: they share one measurement and say so (`shared_with`).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

if not __package__:  # run by path: run as this checkout's package module (wavlink_edge/run_by_path.py says why)
    import runpy
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "run_by_path.py"))["run"](__file__)

from wavlink_edge.bench import backends as B
from wavlink_edge.bench import flops as F
from wavlink_edge.bench import machine, report
from wavlink_edge.runtime.arguments import DEFAULT_MODEL_DIR, error_exit
from wavlink_edge.runtime.audio import decode_audio
from wavlink_edge.runtime.bundled import sample_clips
from wavlink_edge.runtime.errors import WavLinkError
from wavlink_edge.runtime.text import TextTokenizer

FULL = {"lengths": [5, 10, 30], "policies": ["pad", "trim"], "batches": [1, 4, 16],
        "target_s": 4.0, "min_repeats": 3, "max_repeats": 30, "long_call_s": 8.0, "long_min_repeats": 2,
        "short_call_s": 1.0, "min_warmup": 3, "max_warmup": 6}
QUICK = {"lengths": [5], "policies": ["trim"], "batches": [1],
         "target_s": 0.3, "min_repeats": 2, "max_repeats": 3, "long_call_s": 8.0, "long_min_repeats": 2,
         "short_call_s": 1.0, "min_warmup": 3, "max_warmup": 6}
SENTENCES = [
    "a dog barks twice while cars pass by in the rain",
    "a woman speaks over a slow piano melody",
    "a phone is ringing",
    "birds chirp in the distance as wind blows through the trees",
    "a man gives a short speech and a crowd applauds",
    "an electric guitar plays a fast rock riff with drums",
    "water drips into a metal sink",
    "a short chime, like a notification sound",
    "children laugh and shout on a playground while a bell rings in the background",
    "a train horn sounds twice",
    "someone types quickly on a mechanical keyboard",
    "a violin and a cello play a sad melody together in a large hall",
    "footsteps on gravel",
    "thunder rumbles and heavy rain falls on a tin roof",
    "a siren approaches and fades away",
    "two people talk quietly in a cafe with dishes clinking",
]
WORKER_TIMEOUT_S = 1200


# --- planning (parent) ------------------------------------------------------------------------------

def plan_cells(tower: str, settings: dict) -> tuple[list[dict], list[dict]]:
    """(measurements to run, table rows). Rows whose input is the same computation point at one measurement."""
    cells, rows, by_shape = [], [], {}
    if tower == "text":
        for b in settings["batches"]:
            cells.append({"id": f"text-b{b}", "batch": b})
            rows.append({"cell": f"text-b{b}", "batch": b, "clip_seconds": None, "policy": None, "frames": None})
        return cells, rows
    for seconds in settings["lengths"]:
        for policy in settings["policies"]:
            frames = B.frames_for(seconds, policy)
            for b in settings["batches"]:
                shape = (frames, b)
                if shape not in by_shape:
                    by_shape[shape] = f"audio-f{frames}-b{b}"
                    cells.append({"id": by_shape[shape], "batch": b, "seconds": seconds, "policy": policy, "frames": frames})
                first = next(c for c in cells if c["id"] == by_shape[shape])
                shared = None if (first["seconds"], first["policy"]) == (seconds, policy) else first["id"]
                rows.append({"cell": by_shape[shape], "batch": b, "clip_seconds": seconds, "policy": policy,
                             "frames": frames, "shared_with": shared})
    # Smallest inputs first: warm state and the time estimate carry from batch to batch of one shape.
    cells.sort(key=lambda c: (c["frames"], c["batch"]))
    return cells, rows


def text_seq_len(export_dir: Path, batch: int) -> int:
    """Padded token length of the batch (padding is computed, so it counts in FLOPs)."""

    tok = TextTokenizer.from_json((Path(export_dir) / "tokenizer.json").read_text(encoding="utf-8"))
    return int(tok.feeds(batch_sentences(batch))["input_ids"].shape[1])


def batch_sentences(batch: int) -> list[str]:
    return [SENTENCES[i % len(SENTENCES)] for i in range(batch)]


def run_worker(spec: B.Spec, job: dict, timeout: int, on_cell=None) -> dict:
    """Run one backend in a fresh interpreter; its result JSON, or an error record."""
    env = dict(os.environ, OMP_NUM_THREADS=str(job["threads"]), MKL_NUM_THREADS=str(job["threads"]),
               TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    job = {**job, "spec": spec.to_dict(), "spawn_time": time.time()}
    job_path = Path(job["result_path"]).with_suffix(".job.json")
    job_path.write_text(json.dumps(job))
    proc = subprocess.Popen([sys.executable, "-m", "wavlink_edge.bench.latency", "--worker", str(job_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    start = time.time()
    for line in proc.stdout:  # one line per finished cell: drives the progress bar
        if on_cell and line.startswith("CELL "):
            on_cell(line[5:].strip())
        if time.time() - start > timeout:
            proc.kill()
            break
    try:
        _, err = proc.communicate(timeout=max(1, timeout - (time.time() - start)))
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    result_path = Path(job["result_path"])
    if proc.returncode == 0 and result_path.is_file():
        return json.loads(result_path.read_text())
    tail = (err or "").strip().splitlines()[-3:]
    return {"error": f"worker exited {proc.returncode}: {' | '.join(tail)}"}


# --- measuring (worker, fresh process) -------------------------------------------------------------

def _rss_peak_mb() -> float:
    """High-water RSS of this process so far (VmHWM), falling back to getrusage."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 1 << 20)


def _gpu_memory_mb(spec: B.Spec) -> float | None:
    if spec.device == "cpu":
        return None
    if spec.engine == "pytorch":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True)
    used = [float(r.split(",")[1]) for r in out.stdout.strip().splitlines() if r.split(",")[0].strip() == str(os.getpid())]
    return used[0] if used else None


def sample_waves(seconds: float, batch: int) -> list[np.ndarray]:
    """Real audio (the bundled clips, looped) cut to `seconds`, a different offset per batch item."""

    audio = np.concatenate([decode_audio(p) for p in sample_clips()])
    n = int(round(seconds * B.SAMPLE_RATE))
    audio = np.tile(audio, n // audio.size + 2)
    return [np.ascontiguousarray(audio[i * 8000: i * 8000 + n]) for i in range(batch)]


def _call(runner: B.Runner, cell: dict, inputs) -> float:
    start = time.perf_counter()
    if runner.spec.tower == "audio":
        runner.audio(inputs, cell["policy"])
    else:
        runner.text(inputs)
    if runner.spec.device == "cuda" and runner.spec.engine == "pytorch":
        runner._torch.cuda.synchronize()
    return time.perf_counter() - start


def _warm_up(runner: B.Runner, cell: dict, inputs, s: dict) -> list[float]:
    """One call, or for short calls (< short_call_s) at least min_warmup and more while the last one is still
    clearly slower than the best so far: some libraries (sentence-transformers) stay slow for 2 calls."""
    times = [_call(runner, cell, inputs)]
    if times[0] >= s["short_call_s"]:
        return times
    while len(times) < s["max_warmup"] and (len(times) < s["min_warmup"] or times[-1] > 1.5 * min(times[:-1])):
        times.append(_call(runner, cell, inputs))
    return times


def measure(runner: B.Runner, cells: list[dict], s: dict) -> list[dict]:
    """Warm-up then timed repeats per cell; repeats sized so each cell costs about target_s."""
    out, last = [], {}  # last: frames -> (batch, seconds per call) to estimate the next batch's cost
    for cell in cells:
        inputs = sample_waves(cell["seconds"], cell["batch"]) if runner.spec.tower == "audio" else batch_sentences(cell["batch"])
        shape = cell.get("frames")
        estimate = last[shape][1] * cell["batch"] / last[shape][0] if shape in last else None
        times = [] if (estimate and estimate > s["long_call_s"]) else _warm_up(runner, cell, inputs, s)
        warmup = len(times)
        per_call = times[-1] if times else estimate
        long_call = per_call > s["long_call_s"]
        repeats = int(np.clip(np.ceil(s["target_s"] / max(per_call, 1e-6)),
                              s["long_min_repeats"] if long_call else s["min_repeats"], s["max_repeats"]))
        timed = [_call(runner, cell, inputs) for _ in range(repeats)]
        last[shape] = (cell["batch"], float(np.median(timed)))
        ms = np.array(timed) * 1000
        out.append({"cell": cell["id"], "warmup": warmup, "repeats": repeats,
                    "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
                    "mean_ms": float(ms.mean()), "min_ms": float(ms.min()),
                    "peak_rss_mb": round(_rss_peak_mb(), 1), "gpu_memory_mb": _gpu_memory_mb(runner.spec)})
        print("CELL", cell["id"], flush=True)
    return out


def worker_main(job_path: str) -> int:
    t_start = time.time()
    job = json.loads(Path(job_path).read_text())
    spec, threads = B.Spec(**job["spec"]), job["threads"]
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, machine.usable_cores()[:threads])
    import importlib

    engine_module = {"pytorch": "torch", "onnxruntime": "wavlink_edge.runtime", "ctranslate2": "ctranslate2",
                     "sentence-transformers": "sentence_transformers"}[spec.engine]
    importlib.import_module(engine_module)
    t_import = time.time()
    runner = B.Runner(spec, Path(job["export_dir"]), threads, job.get("checkpoint") and Path(job["checkpoint"]))
    t_load = time.time()
    first = job["cells"][0]
    _call(runner, first, sample_waves(first["seconds"], 1) if spec.tower == "audio" else batch_sentences(1))
    t_first = time.time()
    cold = {"total_s": t_first - job["spawn_time"], "interpreter_s": t_start - job["spawn_time"],
            "import_s": t_import - t_start, "load_s": t_load - t_import, "first_embedding_s": t_first - t_load,
            "first_input": f"{first['id']} at batch 1"}
    cells = measure(runner, job["cells"], job["settings"])
    counted = {}
    if spec.reference and spec.device == "cpu":  # cross-check the analytic FLOPs with torch's own count
        import torch

        for frames in sorted({c["frames"] for c in job["cells"] if c.get("frames")}):
            counted[str(frames)] = F.counted_flops(runner.model.audio, torch.zeros(1, runner.n_mels, frames))
        if spec.tower == "text":
            for c in job["cells"]:
                ids = torch.from_numpy(runner.tokenizer.feeds(batch_sentences(c["batch"]))["input_ids"])
                counted[c["id"]] = F.counted_flops(runner.model.text, ids, torch.ones_like(ids))
    Path(job["result_path"]).write_text(json.dumps({
        "cold_start": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in cold.items()},
        "cells": cells, "peak_rss_mb": round(_rss_peak_mb(), 1), "flops_counted": counted,
        "threads": threads, "pid": os.getpid(),
    }))
    return 0


# --- assembling the table (parent) ---------------------------------------------------------------

def build_rows(export_dir: Path, config: dict, specs: list[B.Spec], results: dict, settings: dict, mach: dict) -> list[dict]:
    rows = []
    seq_lens = {b: text_seq_len(export_dir, b) for b in settings["batches"]}
    for spec in specs:
        res = results[spec.key]
        if "error" in res:
            continue
        by_cell = {c["cell"]: c for c in res["cells"]}
        size, size_what = B.model_bytes(spec, export_dir)
        for row in plan_cells(spec.tower, settings)[1]:
            m = by_cell[row["cell"]]
            if spec.tower == "audio":
                per_item = F.wavlink_audio_flops(config, row["frames"], peer=spec.engine == "ctranslate2")
            else:
                per_item = F.wavlink_text_flops(config, seq_lens[row["batch"]], peer=spec.peer)
            flop = per_item * row["batch"]
            achieved = flop / (m["p50_ms"] / 1000) / 1e9
            peak_basis = "int8_gops" if spec.precision == "int8" else "fp32_gflops"
            peak = mach["peak"][peak_basis] if spec.device == "cpu" else None
            rows.append({
                "backend": spec.key, "label": spec.label, "tower": spec.tower, "engine": spec.engine,
                "precision": spec.precision, "variant": spec.variant, "device": spec.device,
                "reference": spec.reference, "peer": spec.peer, **{k: v for k, v in row.items() if k != "cell"},
                "measurement": row["cell"], **{k: m[k] for k in ("warmup", "repeats", "p50_ms", "p95_ms", "mean_ms")},
                "throughput_per_s": row["batch"] / (m["p50_ms"] / 1000),
                "peak_rss_mb": m["peak_rss_mb"], "gpu_memory_mb": m["gpu_memory_mb"],
                "model_bytes": size, "model_bytes_what": size_what, "cold_start_s": res["cold_start"]["total_s"],
                "gflop": flop / 1e9, "gflops_achieved": achieved,
                "peak_fraction": achieved / peak if peak else None, "peak_basis": peak_basis if peak else None,
            })
    # Ratios against the reference measured in this run, for the same tower and input.
    ref = {(r["tower"], r["measurement"]): r["p50_ms"] for r in rows if r["reference"]}
    for r in rows:
        base = ref.get((r["tower"], r["measurement"]))
        r["speedup_vs_pytorch"] = base / r["p50_ms"] if base else None
    return rows


def _load_average() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def run(export_dir: Path, out_dir: Path, quick: bool = False, threads: int | None = None, checkpoint: Path | None = None,
        only: list[str] | None = None, command: str | None = None, progress: bool = True) -> dict:
    from tqdm import tqdm

    export_dir, out_dir = Path(export_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = dict(QUICK if quick else FULL)
    threads = threads or len(machine.usable_cores())
    mach = machine.describe(threads)
    manifest = B.load_manifest(export_dir)
    config = {k: v for k, v in json.loads((export_dir / "config.json").read_text()).items() if k != "model_type"}
    specs = [s for s in B.discover(export_dir) if not only or any(o in s.key for o in only)]
    if any(s.engine == "ctranslate2" for s in specs):
        B.ct2_whisper_dir()  # join the split file once, outside every timed cold start
    work_dir = out_dir / ".work"
    work_dir.mkdir(exist_ok=True)
    total = sum(len(plan_cells(s.tower, settings)[0]) for s in specs)
    results, started, load_start = {}, time.time(), _load_average()
    with tqdm(total=total, desc="latency", unit="cell", disable=not progress) as bar:
        for spec in specs:
            bar.set_postfix_str(spec.key)
            cells = plan_cells(spec.tower, settings)[0]
            job = {"export_dir": str(export_dir), "threads": threads, "cells": cells, "settings": settings,
                   "checkpoint": str(checkpoint) if checkpoint else None,
                   "result_path": str(work_dir / f"{spec.key}.result.json")}
            Path(job["result_path"]).unlink(missing_ok=True)
            t0 = time.time()
            results[spec.key] = run_worker(spec, job, WORKER_TIMEOUT_S, on_cell=lambda _: bar.update(1))
            results[spec.key]["wall_s"] = round(time.time() - t0, 1)
    rows = build_rows(export_dir, config, specs, results, settings, mach)
    frames_set = sorted({c["frames"] for s in specs if s.tower == "audio" for c in plan_cells("audio", settings)[0]})
    ref_counts = next((results[s.key].get("flops_counted", {}) for s in specs if s.reference and s.tower == "audio"), {})
    doc = {
        **report.header("latency", manifest, export_dir, command, mach),
        "settings": {**settings, "threads": threads, "thread_pinning": "sched_setaffinity to the first N usable cores; "
                     "torch.set_num_threads / ORT intra_op (default = physical cores) / CT2 intra_threads = N, inter = 1; "
                     "OMP_NUM_THREADS = MKL_NUM_THREADS = N",
                     "repeat_rule": (f"warm-up: 1 call, or for calls < {settings['short_call_s']} s at least "
                                     f"{settings['min_warmup']} and up to {settings['max_warmup']} until the last is within 1.5x "
                                     f"of the best; none when a smaller batch of the same shape already ran and the "
                                     f"call is estimated > {settings['long_call_s']} s; then ceil({settings['target_s']} s / "
                                     f"call time) timed calls, clipped to [{settings['min_repeats']}, {settings['max_repeats']}] "
                                     f"({settings['long_min_repeats']} minimum for calls > {settings['long_call_s']} s); "
                                     "each row records its own warmup/repeats"),
                     "input": "16 kHz waveforms (bundled real clips, looped) -> numpy log-mel -> encoder; text rows "
                              "include tokenization"},
        "flops": {"method": "analytic from model dims (matmul/conv MACs x 2); torch FlopCounterMode count on the "
                  "reference for cross-check",
                  "audio": {str(f): {"wavlink": F.wavlink_audio_flops(config, f),
                                     "whisper_encoder_peer": F.wavlink_audio_flops(config, f, peer=True),
                                     "counted_reference": ref_counts.get(str(f))} for f in frames_set},
                  "text": {f"b{b}": {"seq_len": text_seq_len(export_dir, b),
                                     "wavlink_per_item": F.wavlink_text_flops(config, text_seq_len(export_dir, b))}
                           for b in settings["batches"]}},
        "backends": [{**s.to_dict(), **{k: v for k, v in results[s.key].items() if k not in ("cells",)}} for s in specs],
        "rows": rows,
        "wall_s": round(time.time() - started, 1),
        # Other processes compete for the same cores: a load above the thread count inflates every row.
        "load_average": {"start": load_start, "end": _load_average(), "threads": threads},
    }
    report.write_latency(doc, out_dir)
    return doc


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--worker"]:
        return worker_main(argv[1])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="export directory (manifest.json, *.onnx)")
    parser.add_argument("--quick", action="store_true", help="seconds: one clip length (5 s trim), batch 1, 2-3 repeats")
    parser.add_argument("--out", default=str(report.DEFAULT_OUT), help=f"results directory (default ./{report.DEFAULT_OUT})")
    parser.add_argument("--threads", type=int, help="threads for every backend (default: all usable cores)")
    parser.add_argument("--checkpoint", help="WavLink checkpoint the export came from (default: the built-in base)")
    parser.add_argument("--only", help="comma list of backend-key substrings to run (e.g. 'pytorch,ort-cpu')")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        doc = run(Path(args.model), Path(args.out), args.quick, args.threads, args.checkpoint and Path(args.checkpoint),
                  args.only.split(",") if args.only else None, report.command_line("latency", argv),
                  progress=not args.no_progress)
    except (WavLinkError, OSError) as exc:
        return error_exit(exc)
    failed = [b for b in doc["backends"] if "error" in b]
    for b in failed:
        print(f"warning: {b['key']} failed: {b['error']}", file=sys.stderr)
    print(f"latency: {len(doc['rows'])} rows from {len(doc['backends']) - len(failed)} backends in {doc['wall_s']} s "
          f"-> {Path(args.out) / 'latency.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
