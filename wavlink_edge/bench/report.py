"""Result documents: the versioned JSON schema, its validation, and the Markdown tables.

Every document carries the schema id, the exact command that produced it, the model's name, heads
label and export hash, and the machine; a reader never has to guess where a figure came from.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import shlex
from pathlib import Path

from wavlink_edge.runtime.errors import WavLinkError

SCHEMA = "wavlink-edge-bench/1"
# Where a benchmark writes unless told (--out): a folder of the current directory, never the package itself
# (an installed one may be read-only, and in a checkout bench/results holds the tracked, published figures).
DEFAULT_OUT = Path("wavlink-edge-results")
UNTRAINED_NOTE = ("**untrained heads**: the global token and projectors are seeded, not trained; recall figures "
                  "are not meaningful, latency and fidelity figures are")
LATENCY_ROW_KEYS = ("backend", "label", "tower", "engine", "precision", "device", "reference", "peer", "clip_seconds",
                    "policy", "frames", "batch", "warmup", "repeats", "p50_ms", "p95_ms", "throughput_per_s",
                    "speedup_vs_pytorch", "peak_rss_mb", "model_bytes", "cold_start_s", "gflop", "gflops_achieved",
                    "peak_fraction")
RECALL_ROW_KEYS = ("dataset", "task", "backend", "precision", "policy", "dim", "reference", "metrics", "delta",
                   "fidelity")
HEADER_KEYS = ("schema", "kind", "command", "created", "model", "machine")


def command_line(tool: str, argv: list[str]) -> str:
    return " ".join(["wavlink-edge", "bench", tool.replace("run_all", "all"), *map(shlex.quote, argv)])


def header(kind: str, manifest: dict, export_dir: Path, command: str | None, machine: dict) -> dict:
    m = manifest["model"]
    digest = hashlib.sha256(json.dumps(manifest["artifacts"], sort_keys=True).encode()).hexdigest()[:16]
    return {
        "schema": SCHEMA, "kind": kind, "command": command, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": m["name"], "size": m.get("size"), "heads": m["heads"], "clip_policy": m["clip_policy"],
                  "embed_dim": m["embed_dim"], "matryoshka_dims": m["matryoshka_dims"], "export_dir": str(export_dir),
                  "artifacts_digest": digest, "untrained_heads": m["heads"] != "trained"},
        "machine": machine,
    }


class SchemaError(WavLinkError, ValueError):
    pass


def validate(doc: dict) -> dict:
    """Raise SchemaError naming the first thing that does not fit schema wavlink-edge-bench/1."""
    missing = [k for k in HEADER_KEYS if k not in doc]
    if missing:
        raise SchemaError(f"missing top-level keys {missing}")
    if doc["schema"] != SCHEMA:
        raise SchemaError(f"schema is {doc['schema']!r}, expected {SCHEMA!r}")
    row_keys = {"latency": LATENCY_ROW_KEYS, "recall": RECALL_ROW_KEYS}.get(doc["kind"])
    if row_keys is None:
        raise SchemaError(f"unknown kind {doc['kind']!r}")
    if not isinstance(doc.get("rows"), list) or not doc["rows"]:
        raise SchemaError("rows must be a non-empty list")
    for i, row in enumerate(doc["rows"]):
        absent = [k for k in row_keys if k not in row]
        if absent:
            raise SchemaError(f"row {i} ({row.get('backend')}) lacks {absent}")
    if "heads" not in doc["model"]:
        raise SchemaError("model.heads is required (trained/untrained label)")
    return doc


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(map(str, r)) + " |" for r in rows]


def _preamble(doc: dict, title: str) -> list[str]:
    m, mach = doc["model"], doc["machine"]
    lines = [f"# {title}", "", f"Model `{m['name']}` ({m['heads']} heads, trained clip policy `{m['clip_policy']}`), "
             f"export digest `{m['artifacts_digest']}`.", ""]
    if m["untrained_heads"]:
        lines += [f"> {UNTRAINED_NOTE}", ""]
    isa = ", ".join(k for k, v in mach["isa"].items() if v)
    lines += [f"Machine: {mach['cpu_model']}, {mach['usable_cores']} usable cores, {mach['threads_used']} threads pinned; "
              f"ISA: {isa}. Peak {mach['peak']['fp32_gflops']} GFLOP/s fp32 / {mach['peak']['int8_gops']} GOP/s int8 "
              f"= {mach['peak']['formula']}.", "",
              "Libraries: " + ", ".join(f"{k} {v}" for k, v in mach["libraries"].items()), "",
              f"Produced by: `{doc['command']}` ({doc['created']})", ""]
    return lines


def latency_markdown(doc: dict) -> str:
    lines = _preamble(doc, "Latency")
    s = doc["settings"]
    lines += [f"Repeats: {s['repeat_rule']}. Threads: {s['thread_pinning']}. Input: {s['input']}.", "",
              "Speedup = PyTorch reference p50 / row p50 for the same input, measured in the same run (>1 is faster). "
              "Peak RSS is the backend process's high-water mark after that cell (one process per backend, cells run "
              "smallest first). GFLOP/s = analytic encoder FLOPs / p50; % peak against the int8 peak for int8 rows, "
              "fp32 otherwise. Pad rows of every length are one 3000-frame computation (measured once: `shared`). "
              "ORT rows go through the runtime (`WavLink.from_pretrained`), which loads both towers of a precision, "
              "so their RSS holds both.", ""]
    load = doc.get("load_average") or {}
    if load.get("start") and max(load["start"][0], (load.get("end") or [0])[0]) > load["threads"]:
        lines += [f"> **busy machine**: 1-min load average {load['start'][0]} at start, {load['end'][0]} at end, above "
                  f"the {load['threads']} threads used: other processes competed for the cores and every figure is "
                  "inflated; rerun on an idle machine.", ""]
    header = ["backend", "tower", "clip s", "policy", "frames", "batch", "p50 ms", "p95 ms", "items/s", "× PyTorch",
              "GFLOP/s", "% peak", "peak RSS MB", "model MB", "cold start s", "n (warm-up)"]
    body = []
    for r in doc["rows"]:
        body.append([r["label"], r["tower"], _fmt(r["clip_seconds"]), _fmt(r["policy"]), _fmt(r["frames"]), r["batch"],
                     _fmt(r["p50_ms"]), _fmt(r["p95_ms"]), _fmt(r["throughput_per_s"], 2), _fmt(r["speedup_vs_pytorch"], 2),
                     _fmt(r["gflops_achieved"]), _fmt(r["peak_fraction"] and 100 * r["peak_fraction"]),
                     _fmt(r["peak_rss_mb"], 0), _fmt(r["model_bytes"] / 2**20), _fmt(r["cold_start_s"], 2),
                     f"{r['repeats']} ({r['warmup']})" + (" shared" if r.get("shared_with") else "")])
    lines += _table(header, body) + [""]
    lines += ["## Cold start (fresh process: interpreter + import + load + first embedding)", ""]
    lines += _table(["backend", "tower", "total s", "import s", "load s", "first embedding s", "peak RSS MB", "error"],
                    [[b["label"], b["tower"], _fmt(b.get("cold_start", {}).get("total_s"), 2),
                      _fmt(b.get("cold_start", {}).get("import_s"), 2), _fmt(b.get("cold_start", {}).get("load_s"), 2),
                      _fmt(b.get("cold_start", {}).get("first_embedding_s"), 2), _fmt(b.get("peak_rss_mb"), 0),
                      b.get("error", "")] for b in doc["backends"]]) + [""]
    lines += ["## Encoder FLOPs (analytic; torch count on the reference as a cross-check)", ""]
    lines += _table(["frames", "WavLink audio GFLOP", "counted GFLOP", "Whisper encoder (CT2 peer) GFLOP"],
                    [[f, _fmt(v["wavlink"] / 1e9, 2), _fmt(v["counted_reference"] and v["counted_reference"] / 1e9, 2),
                      _fmt(v["whisper_encoder_peer"] / 1e9, 2)] for f, v in doc["flops"]["audio"].items()]) + [""]
    return "\n".join(lines)


def recall_markdown(doc: dict) -> str:
    lines = _preamble(doc, "Recall and fidelity")
    lines += [f"Settings: {doc['settings']['notes']}", ""]
    for ds in doc["datasets"]:
        lines += [f"## {ds['name']} ({ds['items']} clips, {ds['queries']} text queries; {ds['task']})", ""]
        rows = [r for r in doc["rows"] if r["dataset"] == ds["name"]]
        if ds["task"] == "retrieval":
            header = ["backend", "policy", "dim", "T2A R@1", "R@5", "R@10", "mAP@10", "A2T R@1", "R@5", "R@10", "mAP@10",
                      "Δ T2A R@10", "Δ A2T R@10", "audio cos mean/min", "text cos mean/min", "top-1 agree T2A/A2T"]
            body = []
            for r in rows:
                m, d, f = r["metrics"], r["delta"] or {}, r["fidelity"] or {}
                body.append([r["label"], r["policy"], r["dim"], *(_fmt(100 * m[k]) for k in
                             ("t2a_r1", "t2a_r5", "t2a_r10", "t2a_map10", "a2t_r1", "a2t_r5", "a2t_r10", "a2t_map10")),
                             _fmt(d.get("t2a_r10") and 100 * d["t2a_r10"], 2), _fmt(d.get("a2t_r10") and 100 * d["a2t_r10"], 2),
                             _cos(f, "audio"), _cos(f, "text"),
                             f"{_fmt(f.get('t2a_top1_agreement'), 3)}/{_fmt(f.get('a2t_top1_agreement'), 3)}" if f else "–"])
        else:
            header = ["backend", "policy", "dim", "top-1 acc", "top-5 acc", "Δ top-1", "audio cos mean/min", "top-1 agree"]
            body = [[r["label"], r["policy"], r["dim"], _fmt(100 * r["metrics"]["top1"]), _fmt(100 * r["metrics"]["top5"]),
                     _fmt((r["delta"] or {}).get("top1") and 100 * r["delta"]["top1"], 2), _cos(r["fidelity"] or {}, "audio"),
                     _fmt((r["fidelity"] or {}).get("top1_agreement"), 3)] for r in rows]
        lines += _table(header, body) + [""]
    return "\n".join(lines)


def _cos(f: dict, tower: str) -> str:
    if f.get(f"{tower}_cosine_mean") is None:
        return "–"
    return f"{f[f'{tower}_cosine_mean']:.5f}/{f[f'{tower}_cosine_min']:.5f}"


def _write(doc: dict, out_dir: Path, stem: str, markdown: str) -> None:
    validate(doc)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(doc, indent=1, default=float) + "\n")
    (out_dir / f"{stem}.md").write_text(markdown + "\n")


def write_latency(doc: dict, out_dir: Path) -> None:
    _write(doc, out_dir, "latency", latency_markdown(doc))


def write_recall(doc: dict, out_dir: Path) -> None:
    _write(doc, out_dir, "recall", recall_markdown(doc))
