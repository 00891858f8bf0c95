"""Encoder-level latency, front end, end-to-end files/s and long-file memory, side by side in one process.

    python bench/encoders.py --model DIR [--rounds N] [--threads 2] [--out bench/results] [--no-e2e] [--no-rss]

Why one process, round-robin: on a small shared CPU the machine state drifts by tens of percent within
minutes, so every backend runs one call per round in turn, on the same random log-mel, and only ratios
taken inside one round-robin are reported as goals. latency.py (a fresh process per backend, cold
start, RSS) stays the per-backend profile.

Rows: PyTorch eager (the reference WavLink audio tower), transformers WhisperEncoder with SDPA
attention (same Whisper-base weights), CTranslate2 Whisper.encode int8 and float32 (same weights), and
every CPU ONNX audio artifact of the export. "Fastest peer" = the fastest non-ONNX row of that shape.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if not __package__:  # run by path: run as this checkout's package module (wavlink_edge/run_by_path.py says why)
    import runpy
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "run_by_path.py"))["run"](__file__)

from wavlink_edge.bench import backends as B
from wavlink_edge.bench.machine import usable_cores
from wavlink_edge.bench.report import DEFAULT_OUT, command_line
from wavlink_edge.quantization.variants import build
from wavlink_edge.runtime import WavLink
from wavlink_edge.runtime.audio import decode_audio
from wavlink_edge.runtime.bundled import sample_clips
from wavlink_edge.runtime.features import CHUNK_SAMPLES, SAMPLE_RATE, clip_features
from wavlink_edge.runtime.manifest import Manifest
from wavlink_edge.runtime.model import int8_for_this_cpu
from wavlink_edge.runtime.session import OnnxSession

SHAPES = ((1, 3000), (4, 3000), (1, 500), (4, 500))
GOALS = {"int8_vs_ct2_int8_3000": 0.5, "int8_vs_ct2_int8_500": 0.8, "int8_speedup_vs_fp32_3000_b1": 1.8,
         "trim5_vs_30_front_end": 0.25, "peak_rss_2h_mb": 1024}


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    if hasattr(os, "sched_setaffinity"):

        os.sched_setaffinity(0, usable_cores()[:n])


def encoder_runners(export_dir: Path, threads: int, variants=(), variants_dir: Path | None = None) -> dict:
    """name -> (callable on a [B, 80, T] float32 log-mel, kind) for every encoder compared; `variants` adds
    audio INT8 graphs built by quantization/variants.py (names as there), cached in variants_dir."""
    import ctranslate2
    import torch

    runners = {}
    model = B.load_reference(export_dir)

    def torch_ref(x):
        with torch.inference_mode():
            return model.audio(torch.from_numpy(x)).numpy()

    runners["PyTorch eager (reference)"] = (torch_ref, "peer")
    runners["transformers WhisperEncoder SDPA"] = (_transformers_sdpa(), "peer")
    ct2_dir = str(B.ct2_whisper_dir())
    for compute_type in ("int8", "float32"):
        ct = ctranslate2.models.Whisper(ct2_dir, device="cpu", compute_type=compute_type, intra_threads=threads,
                                        inter_threads=1)
        runners[f"CTranslate2 encode {compute_type}"] = (
            (lambda ct: lambda x: np.asarray(ct.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(x)))))(ct),  # noqa: B023
            "peer")
    manifest = Manifest.load(export_dir)
    for spec in manifest.artifacts:
        if spec.tower != "audio":
            continue
        # an export can hold one dynamic INT8 artifact per CPU class: the one the runtime picks on this CPU is
        # "ORT int8_dynamic" (the goals' row), the others are named by file
        picked = int8_for_this_cpu(manifest, spec).file == spec.file
        name = f"ORT {spec.precision_key}" if picked else f"ORT {spec.file.removesuffix('.onnx')}"
        session = OnnxSession(manifest.read_verified(spec.file), name=spec.file, threads=threads)
        runners[name] = ((lambda s: lambda x: s.run({"input_features": x}))(session), "ours")
    if variants:
        (variants_dir or Path("variants")).mkdir(parents=True, exist_ok=True)
        for variant in variants:
            session = OnnxSession(build(export_dir, variant, variants_dir or Path("variants")), name=variant, threads=threads)
            runners[f"variant {variant}"] = ((lambda s: lambda x: s.run({"input_features": x}))(session), "variant")
    return runners


def _transformers_sdpa():
    import torch
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from wavlink_edge.export.backbones import whisper_base_ct2_state  # optional dependency: torch, for the transformers peer only

    config = WhisperConfig(d_model=512, encoder_layers=6, encoder_attention_heads=8, encoder_ffn_dim=2048,
                           num_mel_bins=80, max_source_positions=1500, attn_implementation="sdpa")
    config._attn_implementation = "sdpa"
    encoder = WhisperEncoder(config).eval()
    missing, unexpected = encoder.load_state_dict({k: torch.as_tensor(v) for k, v in whisper_base_ct2_state().items()},
                                                  strict=False)
    if unexpected or [m for m in missing if "embed_positions" not in m]:
        raise RuntimeError(f"transformers WhisperEncoder weights: missing {missing}, unexpected {unexpected}")

    def run(x):
        # transformers' encoder wants exactly 3000 frames; shorter inputs are zero-padded to it like
        # faster-whisper / openai-whisper do, so its 500-frame row computes 3000 frames
        if x.shape[-1] < 3000:
            x = np.pad(x, ((0, 0), (0, 0), (0, 3000 - x.shape[-1])))
        with torch.inference_mode():
            return encoder(torch.from_numpy(x)).last_hidden_state.numpy()

    return run


def round_robin(runners: dict, shapes, rounds: int, burst: int = 3, log=print) -> list[dict]:
    """Interleaved warm bursts: each round, every backend runs 1 + `burst` calls back to back.

    The first call of a burst is the "cold" one: the previous backend's weights hold the last-level
    cache (32 MiB here; an int8 Whisper-base is ~30 MB), which is not how an embedding job runs (one
    model, call after call). The `burst` calls after it are the warm, steady-state figure the goals use.
    Interleaving by round still cancels the machine's drift between backends.
    """
    rng = np.random.default_rng(0)
    rows = []
    for batch, frames in shapes:
        x = (rng.standard_normal((batch, 80, frames)) * 0.5).astype(np.float32)
        for fn, _ in runners.values():  # warm-up: first-call allocations and weight prepacking
            fn(x)
        warm = {name: [] for name in runners}
        cold = {name: [] for name in runners}
        n = rounds if frames >= 3000 else rounds * 2
        for _ in range(n):
            for name, (fn, _) in runners.items():
                for call in range(1 + burst):
                    t = time.perf_counter()
                    fn(x)
                    (cold if call == 0 else warm)[name].append(time.perf_counter() - t)
        for name, (_, kind) in runners.items():
            ms = np.array(warm[name]) * 1000
            rows.append({"backend": name, "kind": kind, "batch": batch, "frames": frames, "rounds": n, "burst": burst,
                         "p50_ms": float(np.median(ms)), "min_ms": float(ms.min()), "per_item_ms": float(np.median(ms)) / batch,
                         "p50_cold_ms": float(np.median(cold[name]) * 1000)})
        log(f"  b{batch} x {frames}: " + ", ".join(f"{r['backend']} {r['p50_ms']:.0f} (cold {r['p50_cold_ms']:.0f})"
                                                   for r in rows[-len(runners):]))
    return rows


def front_end(rounds: int = 15) -> dict:
    """clip_features (trim) of a 5 s clip vs a 30 s clip, interleaved."""

    rng = np.random.default_rng(1)
    audio = (0.1 * rng.standard_normal(CHUNK_SAMPLES)).astype(np.float32)
    clips = {"5 s": audio[: 5 * SAMPLE_RATE], "30 s": audio}
    times = {k: [] for k in clips}
    for _ in range(rounds):
        for k, a in clips.items():
            t = time.perf_counter()
            clip_features(a, 80, "trim")
            times[k].append(time.perf_counter() - t)
    ms = {k: float(np.median(v) * 1000) for k, v in times.items()}
    return {"trim_5s_ms": ms["5 s"], "trim_30s_ms": ms["30 s"], "ratio": ms["5 s"] / ms["30 s"], "rounds": rounds}


def _write_clips(folder: Path, seconds: float, count: int) -> list[Path]:
    import soundfile as sf

    audio = np.concatenate([decode_audio(p) for p in sample_clips()])
    n = int(seconds * 16000)
    audio = np.tile(audio, n // audio.size + 2)
    paths = []
    for i in range(count):
        path = folder / f"clip_{seconds:g}s_{i}.flac"
        # 44.1 kHz stereo on disk: decoding and resampling are part of the measured pipeline
        clip = audio[i * 4000: i * 4000 + n]
        import soxr

        stereo = np.stack([soxr.resample(clip, 16000, 44100)] * 2, axis=1)
        sf.write(path, stereo, 44100)
        paths.append(path)
    return paths


def end_to_end(export_dir: Path, threads: int, rounds: int = 3, count: int = 4, log=print) -> list[dict]:
    """Files/s from disk: WavLink (runtime defaults: int8 dynamic, the model's clip policy) vs a CTranslate2
    pipeline built the way faster-whisper builds it: decode to 16 kHz mono, Whisper feature extraction of
    the 30 s-padded clip (transformers' WhisperFeatureExtractor, numpy, the same recipe faster-whisper's
    own extractor implements), then Whisper.encode int8 on [1, 80, 3000]."""
    import ctranslate2
    from transformers import WhisperFeatureExtractor

    # int8 where the export has it (the shipped configuration); an fp32-only export (CI's) runs fp32.
    precision = "int8" if "int8_dynamic" in Manifest.load(export_dir).precisions("audio") else "fp32"
    wl = WavLink.from_pretrained(export_dir, precision=precision, providers=["CPUExecutionProvider"], threads=threads)
    ct = ctranslate2.models.Whisper(str(B.ct2_whisper_dir()), device="cpu", compute_type="int8", intra_threads=threads,
                                    inter_threads=1)
    fe = WhisperFeatureExtractor(feature_size=80)

    def ct2_pipeline(paths):
        for p in paths:
            feats = fe(decode_audio(p), sampling_rate=16000, return_tensors="np").input_features
            np.asarray(ct.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(feats, np.float32))))

    def wavlink(paths):
        wl.embed_audio([str(p) for p in paths])

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in (5, 30):
            paths = _write_clips(Path(tmp), seconds, count)
            runs = {f"WavLink runtime ({precision}, defaults)": wavlink, "CTranslate2 faster-whisper-style (int8)": ct2_pipeline}
            for fn in runs.values():
                fn(paths[:1])
            times = {k: [] for k in runs}
            for _ in range(rounds):
                for k, fn in runs.items():
                    t = time.perf_counter()
                    fn(paths)
                    times[k].append(time.perf_counter() - t)
            for k in runs:
                rows.append({"pipeline": k, "clip_seconds": seconds, "files": count, "rounds": rounds,
                             "files_per_s": count / float(np.median(times[k]))})
            log(f"  e2e {seconds} s: " + ", ".join(f"{r['pipeline']} {r['files_per_s']:.2f} files/s" for r in rows[-2:]))
    return rows


_RSS_CHILD = """
import sys, resource

from wavlink_edge.runtime import WavLink
from wavlink_edge.runtime.bundled import sample_clips
wl = WavLink.from_pretrained(sys.argv[1], precision="int8", providers=["CPUExecutionProvider"], threads=int(sys.argv[3]))
wl.embed_audio([sys.argv[2]])
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print(int(line.split()[1]) // 1024)
"""


def long_file_rss(export_dir: Path, threads: int, hours: float = 2.0, log=print) -> dict:
    """Peak RSS of a fresh process embedding one `hours`-long file at default settings (16 kHz mono FLAC)."""
    import soundfile as sf

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "long.flac"
        rng = np.random.default_rng(0)
        block = (0.05 * rng.standard_normal(16000 * 60)).astype(np.float32)
        with sf.SoundFile(path, "w", 16000, 1, format="FLAC") as f:
            for _ in range(int(hours * 60)):
                f.write(block)
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(export_dir), str(path), str(threads)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            return {"error": out.stderr.strip().splitlines()[-1:] or [f"exit {out.returncode}"]}
        mb = int(out.stdout.strip().splitlines()[-1])
        log(f"  peak RSS, {hours:g} h file: {mb} MB ({time.perf_counter() - t:.0f} s)")
        return {"hours": hours, "peak_rss_mb": mb, "seconds": round(time.perf_counter() - t, 1),
                "settings": "WavLink.from_pretrained(precision='int8', threads=N).embed_audio([file]), other defaults"}


def goals(rows: list[dict], fe: dict | None, rss: dict | None) -> list[dict]:
    def p50(name, b, f):
        return next((r["p50_ms"] for r in rows if r["backend"] == name and r["batch"] == b and r["frames"] == f), None)

    out = []
    int8 = "ORT int8_dynamic"
    for b, f in SHAPES:
        q, ct2 = p50(int8, b, f), p50("CTranslate2 encode int8", b, f)
        if q and ct2:
            target = GOALS["int8_vs_ct2_int8_3000" if f >= 3000 else "int8_vs_ct2_int8_500"]
            out.append({"goal": f"int8 time / CT2 int8 time, b{b} {f} frames", "value": q / ct2, "target": f"<= {target}",
                        "met": q / ct2 <= target})
        peers = [r for r in rows if r["kind"] == "peer" and r["batch"] == b and r["frames"] == f]
        if q and peers:
            best = min(peers, key=lambda r: r["p50_ms"])
            out.append({"goal": f"int8 time / fastest peer ({best['backend']}), b{b} {f} frames",
                        "value": q / best["p50_ms"], "target": "< 1 (context)", "met": q < best["p50_ms"]})
    fp32, q = p50("ORT fp32", 1, 3000), p50(int8, 1, 3000)
    if fp32 and q:
        out.append({"goal": "int8 speed-up vs ORT fp32, b1 3000 frames", "value": fp32 / q,
                    "target": f">= {GOALS['int8_speedup_vs_fp32_3000_b1']}", "met": fp32 / q >= GOALS["int8_speedup_vs_fp32_3000_b1"]})
    for f in (3000, 500):
        b1, b4 = p50(int8, 1, f), p50(int8, 4, f)
        if b1 and b4:
            out.append({"goal": f"int8 batching pays: b4 per item / b1, {f} frames", "value": b4 / 4 / b1, "target": "< 1",
                        "met": b4 / 4 < b1})
    if fe:
        out.append({"goal": "front end: 5 s trim / 30 s", "value": fe["ratio"], "target": f"<= {GOALS['trim5_vs_30_front_end']}",
                    "met": fe["ratio"] <= GOALS["trim5_vs_30_front_end"]})
    if rss and "peak_rss_mb" in rss:
        out.append({"goal": f"peak RSS, {rss['hours']:g} h file, defaults (MB)", "value": rss["peak_rss_mb"],
                    "target": f"<= {GOALS['peak_rss_2h_mb']}", "met": rss["peak_rss_mb"] <= GOALS["peak_rss_2h_mb"]})
    return out


def markdown(doc: dict) -> str:
    burst = doc["encoders"][0].get("burst", 1) if doc["encoders"] else 1
    lines = ["# Encoders side by side (one process, interleaved warm bursts)", "",
             f"Command: `{doc['command']}`. {doc['threads']} threads, load average {doc['load_average']['start']} → "
             f"{doc['load_average']['end']} (1/5/15 min; {os.cpu_count()} CPUs). Same random log-mel for every row; "
             f"each round runs every backend 1 + {burst} times back to back; the table is the median of the {burst} warm "
             "calls over all rounds (steady state, what an embedding job sees), and the cold column is the first call of each "
             "burst, run right after another backend filled the last-level cache. Only ratios within this table are compared.", "",
             "## Goals", "", "| goal | measured | target | met |", "|---|---|---|---|"]
    for g in doc["goals"]:
        lines.append(f"| {g['goal']} | {g['value']:.3g} | {g['target']} | {'yes' if g['met'] else '**no**'} |")
    lines += ["", "## Encoder latency (ms, median)", ""]
    names = list(dict.fromkeys(r["backend"] for r in doc["encoders"]))
    lines += ["| backend | " + " | ".join(f"b{b} × {f}" for b, f in SHAPES) + " | " + " | ".join(f"cold b{b} × {f}" for b, f in SHAPES)
              + " |", "|---|" + "---|" * 2 * len(SHAPES)]
    for n in names:
        found = [next((r for r in doc["encoders"] if r["backend"] == n and r["batch"] == b and r["frames"] == f), None)
                 for b, f in SHAPES]
        cells = [f"{r['p50_ms']:.0f}" if r else "–" for r in found]
        cells += [f"{r['p50_cold_ms']:.0f}" if r and "p50_cold_ms" in r else "–" for r in found]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    if doc.get("front_end"):
        fe = doc["front_end"]
        lines += ["", f"Front end (`clip_features`, trim): 5 s {fe['trim_5s_ms']:.1f} ms, 30 s {fe['trim_30s_ms']:.1f} ms "
                  f"→ {fe['ratio']:.2f} (median of {fe['rounds']} interleaved rounds)."]
    if doc.get("end_to_end"):
        lines += ["", "## End to end from disk (44.1 kHz stereo FLAC → embedding)", "",
                  "| pipeline | clip | files/s |", "|---|---|---|"]
        for r in doc["end_to_end"]:
            lines.append(f"| {r['pipeline']} | {r['clip_seconds']} s | {r['files_per_s']:.2f} |")
        lines += ["", "The CTranslate2 pipeline is built the way faster-whisper builds it (faster-whisper itself is not "
                  "installed here): soundfile + soxr decode, Whisper features of the 30 s-padded clip, encode of 3000 frames."]
    if doc.get("long_file"):
        lines += ["", f"Long file: {json.dumps(doc['long_file'])}"]
    return "\n".join(lines) + "\n"


def run(export_dir: Path, out_dir: Path, rounds: int, threads: int, e2e: bool = True, rss: bool = True,
        command: str = "", log=print, variants=(), variants_dir: Path | None = None) -> dict:
    _threads(threads)
    load_start = [round(x, 2) for x in os.getloadavg()]
    t0 = time.time()
    runners = encoder_runners(export_dir, threads, variants, variants_dir)
    rows = round_robin(runners, SHAPES, rounds, log=log)
    fe = front_end()
    log(f"  front end: 5 s {fe['trim_5s_ms']:.1f} ms, 30 s {fe['trim_30s_ms']:.1f} ms")
    del runners
    e2e_rows = end_to_end(export_dir, threads, log=log) if e2e else []
    long = long_file_rss(export_dir, threads, log=log) if rss else None
    doc = {"command": command, "threads": threads, "encoders": rows, "front_end": fe, "end_to_end": e2e_rows,
           "long_file": long, "goals": goals(rows, fe, long), "wall_s": round(time.time() - t0, 1),
           "load_average": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]}}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "encoders.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out_dir / "encoders.md").write_text(markdown(doc))
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--out", default=DEFAULT_OUT, type=Path, help=f"results directory (default ./{DEFAULT_OUT})")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds at 3000 frames (x2 at 500); a round = 1 cold + 3 warm calls each")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-e2e", action="store_true")
    parser.add_argument("--no-rss", action="store_true")
    parser.add_argument("--variants", default="", help="comma list of audio INT8 graph variants to time as well "
                        "(quantization/variants.py names, e.g. nb16,nb32,pt7-sq-x:fc2_edges_fp32)")
    parser.add_argument("--variants-dir", type=Path, help="where the variants are built and cached (default ./variants)")
    args = parser.parse_args(argv)
    command = command_line("encoders", sys.argv[1:] if argv is None else list(argv))
    doc = run(args.model, args.out, args.rounds, args.threads, not args.no_e2e, not args.no_rss, command,
              variants=[v for v in args.variants.split(",") if v], variants_dir=args.variants_dir)
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
