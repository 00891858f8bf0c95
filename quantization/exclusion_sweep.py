"""Print cosine vs fp32 of static Q/DQ INT8 for each exclusion set (which nodes stay fp32).

    python quantization/exclusion_sweep.py EXPORT_DIR [--tower audio,text] [--calibration-method minmax]
        [--sets everything,no_add,...] [--markdown]

One calibration pass per tower (all tensors, minmax by default), then every exclusion set is
quantized from the same ranges and measured on the held-out set (runtime/samples + quantization/heldout;
the benchmark eval split is left out here to keep the sweep a few minutes). The table in
docs/quantization.md is this script's --markdown output.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import onnx

from wavlink_edge.quantization import evaluate as ev
from wavlink_edge.quantization import graph, recipes
from wavlink_edge.quantization import quantize as q


def sweep(export_dir: Path, tower: str, sets, method: str = "minmax", calibration_limit: int | None = 8, log=print,
          smooth: bool = True) -> list[dict]:
    q._quiet_ort_logging()
    src = Path(export_dir) / f"{tower}.onnx"
    held = ev.HeldOut(export_dir, tower, eval_limit=0)
    feeds, _ = q.calibration_feeds(export_dir, tower, None, calibration_limit, method)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cal.json"
        absmax = None
        if smooth and tower == "audio":  # as quantize.py ships it: SmoothQuant fold before calibration
            fp32 = onnx.load(str(src))
            stats_feeds = feeds if method == "minmax" else q.calibration_feeds(export_dir, tower, None, calibration_limit)[0]
            absmax = graph.activation_absmax(fp32, graph.layernorm_outputs(fp32), stats_feeds)
        src = q.prepare_for_static(src, Path(tmp) / "prepared.onnx", absmax)
        q.calibrate(src, feeds, method, cache)
        model = onnx.load(str(src))
        n_weight = len(recipes.weight_matmuls(model))
        for name in sets:
            out = Path(tmp) / f"{name}.onnx"
            t = time.perf_counter()
            try:
                q.make_int8_static(src, out, tower, name, cache, method)
            except Exception as exc:  # noqa: BLE001  (a set ORT cannot quantize is a row, not a crash)
                rows.append({"tower": tower, "set": name, "error": str(exc).splitlines()[0][:200]})
                log(f"{tower:5s} {name:34s} failed: {rows[-1]['error']}")
                continue
            fig = held.fidelity(out)
            qdq = recipes.count_ops(onnx.load(str(out), load_external_data=False)).get("DequantizeLinear", 0)
            row = {"tower": tower, "set": name, "cosine_mean": ev.min_mean(fig), "cosine_min": ev.min_min(fig),
                   "dq_nodes": qdq, "weight_matmuls": n_weight, "seconds": round(time.perf_counter() - t, 1)}
            rows.append(row)
            log(f"{tower:5s} {name:34s} mean {row['cosine_mean']:.5f}  min {row['cosine_min']:.5f}  ({qdq} DQ nodes)")
    return rows


def markdown(rows: list[dict], method: str, model_name: str) -> str:
    lines = [f"Measured on `{model_name}`, calibration {method}; cosine vs fp32 = worst Matryoshka dim's mean / min.",
             "", "| tower | exclusion set | cosine mean | cosine min | DequantizeLinear nodes |", "|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['tower']} | {r['set']} | failed: {r['error']} | | |")
        else:
            lines.append(f"| {r['tower']} | {r['set']} | {r['cosine_mean']:.4f} | {r['cosine_min']:.4f} | {r['dq_nodes']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("export_dir", type=Path)
    p.add_argument("--tower", default="audio,text")
    p.add_argument("--calibration-method", default="minmax", choices=q.CALIBRATION_METHODS)
    p.add_argument("--calibration-limit", type=int, default=8)
    p.add_argument("--sets", default=",".join(recipes.STATIC_SETS))
    p.add_argument("--markdown", action="store_true")
    a = p.parse_args(argv)
    rows = []
    for tower in a.tower.split(","):
        rows += sweep(a.export_dir, tower, a.sets.split(","), a.calibration_method, a.calibration_limit or None)
    if a.markdown:
        print(markdown(rows, a.calibration_method, ev.load_manifest(a.export_dir)["model"]["name"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
