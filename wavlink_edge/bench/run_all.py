"""The full report in one command: latency + recall + plots + results/README.md with headline ratios.

    python bench/run_all.py --model DIR [--quick] [--out bench/results] [--dataset ...]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if not __package__:  # run by path: run as this checkout's package module (wavlink_edge/run_by_path.py says why)
    import runpy
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "run_by_path.py"))["run"](__file__)

from wavlink_edge.bench import encoders, latency, plots, recall, report
from wavlink_edge.runtime.arguments import DEFAULT_MODEL_DIR, error_exit
from wavlink_edge.runtime.errors import WavLinkError


def _p50(rows, **match) -> float | None:
    found = [r["p50_ms"] for r in rows if all(r.get(k) == v for k, v in match.items())]
    return found[0] if found else None


def headlines(lat: dict, rec: dict | None) -> list[str]:
    """The closing-note figures: ORT fp32 / int8 vs PyTorch, int8 vs CTranslate2 int8, trim vs pad at 5 s,
    and recall deltas per precision x dim."""
    rows = [r for r in lat["rows"] if r["tower"] == "audio" and r["device"] == "cpu" and not r.get("shared_with")]
    lines = []
    for seconds, policy, batch in dict.fromkeys((r["clip_seconds"], r["policy"], r["batch"]) for r in rows):
        at = dict(clip_seconds=seconds, batch=batch, policy=policy)
        ref = _p50(rows, engine="pytorch", **at)
        fp32 = _p50(rows, engine="onnxruntime", precision="fp32", **at)
        ct2 = _p50(rows, engine="ctranslate2", variant="int8", **at)
        # the fastest peer of this row (PyTorch reference or a CTranslate2 compute type)
        peers = [r for r in rows if r["engine"] in ("pytorch", "ctranslate2") and all(r.get(k) == v for k, v in at.items())]
        best = min(peers, key=lambda r: r["p50_ms"]) if peers else None
        parts = [f"ORT fp32 {ref / fp32:.2f}x PyTorch"] if ref and fp32 else []
        for variant in ("dynamic", "static"):
            q = _p50(rows, engine="onnxruntime", precision="int8", variant=variant, **at)
            if q and ref:
                parts.append(f"int8-{variant} {ref / q:.2f}x PyTorch" + (f", {ct2 / q:.2f}x CT2 int8" if ct2 else "")
                             + (f", {best['p50_ms'] / q:.2f}x the fastest peer ({best['label']})" if best else ""))
        if parts:
            frames = next(r["frames"] for r in rows if r["clip_seconds"] == seconds and r["policy"] == policy)
            lines.append(f"- audio {seconds:g} s {policy} ({frames} frames), batch {batch}: " + "; ".join(parts))
    for backend in dict.fromkeys(r["backend"] for r in rows):
        pad, trim = (_p50(lat["rows"], backend=backend, clip_seconds=5, batch=1, policy=p) for p in ("pad", "trim"))
        if pad and trim:
            lines.append(f"- trim vs pad, 5 s clip, batch 1, {backend}: {pad / trim:.2f}x faster ({pad:.0f} → {trim:.0f} ms)")
    return lines + (recall_delta_table(rec) if rec else [])


def recall_delta_table(rec: dict) -> list[str]:
    """Δ T2A R@10 / Δ A2T R@10 (points) against the PyTorch reference, per backend and policy x dim."""
    dims = rec["settings"]["dims"]
    lines = []
    for ds in (d for d in rec["datasets"] if d["task"] == "retrieval"):
        rows = [r for r in rec["rows"] if r["dataset"] == ds["name"] and r["delta"]]
        keys = list(dict.fromkeys((r["label"], r["policy"]) for r in rows))
        cells = {(r["label"], r["policy"], r["dim"]): r["delta"] for r in rows}
        lines += ["", f"Recall Δ vs PyTorch on {ds['name']} ({ds['items']} clips): T2A R@10 / A2T R@10, points "
                  "(the reference's own other-policy row is against the reference at the trained policy)", "",
                  "| backend | policy | " + " | ".join(f"dim {d}" for d in dims) + " |", "|---|---|" + "---|" * len(dims)]
        for label, policy in keys:
            vals = [cells.get((label, policy, d)) for d in dims]
            lines.append(f"| {label} | {policy} | " + " | ".join(
                f"{100 * v['t2a_r10']:+.1f} / {100 * v['a2t_r10']:+.1f}" if v else "–" for v in vals) + " |")
    return lines


def goal_lines(enc: dict | None) -> list[str]:
    """Issue-11 goals from the one-process interleaved bursts (bench/encoders.py): met or missed, with the ratio."""
    if not enc:
        return []
    lines = ["## Goals (one process, interleaved warm bursts, same input; [encoders.md](encoders.md))", "",
             f"Load average {enc['load_average']['start']} → {enc['load_average']['end']} on {enc['threads']} threads.", "",
             "| goal | measured | target | met |", "|---|---|---|---|"]
    lines += [f"| {g['goal']} | {g['value']:.3g} | {g['target']} | {'yes' if g['met'] else '**missed**'} |" for g in enc["goals"]]
    return lines + [""]


def write_readme(lat: dict, rec: dict | None, figures: list[Path], out_dir: Path, command: str, wall_s: float,
                 enc: dict | None = None) -> Path:
    m = lat["model"]
    lines = ["# WavLink Edge benchmark results", "",
             f"Model `{m['name']}` — **{m['heads']} heads**, trained clip policy `{m['clip_policy']}`. "
             f"Machine: {lat['machine']['cpu_model']}, {lat['machine']['threads_used']} threads.", ""]
    if m["untrained_heads"]:
        lines += [f"> {report.UNTRAINED_NOTE}", ""]
    lines += [f"Produced by `{command}` in {wall_s:.0f} s" + (f" (latency taken from `{lat['command']}`, {lat['created']})"
              if lat["command"] != command else "") + ".", "",
              "- [latency table](latency.md) ([JSON](latency.json))"]
    if rec:
        lines.append("- [recall and fidelity table](recall.md) ([JSON](recall.json))")
    if enc:
        lines.append("- [encoders side by side, front end, files/s, long-file memory](encoders.md) ([JSON](encoders.json))")
    lines += [f"- ![{p.stem}]({p.name})" for p in figures]
    lines += [""] + goal_lines(enc) + ["## Headlines", ""] + headlines(lat, rec) + [""]
    path = Path(out_dir) / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _reused_latency(out: Path, model: Path) -> dict | None:
    """An earlier latency.json for the same export (artifact digest), or None to measure afresh."""
    import json

    path = out / "latency.json"
    if not path.is_file():
        return None
    doc = report.validate(json.loads(path.read_text()))
    digest = report.header("latency", latency.B.load_manifest(model), model, None, {})["model"]["artifacts_digest"]
    return doc if doc["model"]["artifacts_digest"] == digest else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(report.DEFAULT_OUT), help=f"results directory (default ./{report.DEFAULT_OUT})")
    parser.add_argument("--dataset", action="append")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--checkpoint")
    parser.add_argument("--skip-recall", action="store_true")
    parser.add_argument("--limit", type=int, help="recall on the first N clips of each dataset")
    parser.add_argument("--reuse-latency", action="store_true",
                        help="take latency.json from --out (same export) instead of measuring again")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--encoder-rounds", type=int,
                        help="interleaved rounds of bench/encoders.py (default 5, 1 with --quick; 0 = skip it)")
    args = parser.parse_args(argv)
    if args.encoder_rounds is None:
        args.encoder_rounds = 1 if args.quick else 5
    command = report.command_line("run_all", argv)
    out, model = Path(args.out), Path(args.model)
    checkpoint = args.checkpoint and Path(args.checkpoint)
    start = time.time()
    try:
        lat = _reused_latency(out, model) if args.reuse_latency else None
        lat = lat or latency.run(model, out, args.quick, args.threads, checkpoint, command=command,
                                 progress=not args.no_progress)
        enc = (encoders.run(model, out, args.encoder_rounds, args.threads or 2, command=command)
               if args.encoder_rounds else None)
        rec = None if args.skip_recall else recall.run(model, out, args.quick, args.dataset, args.limit, args.threads, checkpoint,
                                                        command=command, progress=not args.no_progress)
    except (WavLinkError, OSError) as exc:
        return error_exit(exc)
    figures = plots.make_all(lat, rec, out)
    readme = write_readme(lat, rec, figures, out, command, time.time() - start, enc)
    print(f"report: {readme} ({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
