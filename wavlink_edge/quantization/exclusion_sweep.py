"""Print cosine vs fp32 of INT8 for each exclusion set (which nodes stay fp32): static Q/DQ, or with
--dynamic the audio per-token recipe (where its error comes from, layer by layer).

    python quantization/exclusion_sweep.py EXPORT_DIR [--tower audio,text] [--calibration-method minmax]
        [--sets everything,no_add,...] [--markdown]
    python quantization/exclusion_sweep.py EXPORT_DIR --dynamic [--markdown]

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

if not __package__:  # run by path: run as this checkout's package module (wavlink_edge/run_by_path.py says why)
    import runpy
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "run_by_path.py"))["run"](__file__)

from wavlink_edge.quantization import evaluate as ev
from wavlink_edge.quantization import graph, recipes
from wavlink_edge.quantization import quantize as q
from wavlink_edge.runtime.arguments import add_model_option


def sweep(export_dir: Path, tower: str, sets, method: str = "minmax", calibration_limit: int | None = 8, log=print,
          smooth: bool = True) -> list[dict]:
    q.quiet_ort_logging()
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
            absmax = q.smoothing_stats(fp32, stats_feeds)
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


def dynamic_sets(fp32: onnx.ModelProto, int8_names: list[str]) -> dict[str, list[str]]:
    """Name -> MatMuls kept fp32, for the audio per-token recipe: everything, each layer alone, the ladder's rungs."""
    layers = recipes.n_layers(fp32, "audio")
    front = list(graph.FRONT_END_MATMULS)

    def only(keep):
        return [n for n in int8_names if n not in keep]

    sets = {"every weight MatMul int8": [], "front end fp32": front, "only the front end int8": only(front)}
    for layer in range(layers):
        sets[f"only layer {layer} int8"] = only([n for n in int8_names if recipes.layer_of(n, "audio") == layer])
    first_attention = [n for n in recipes.first_attention_nodes(fp32, "audio") if n in int8_names]  # q/k/v/out
    sets["layer 0 attention fp32 (first_attention_fp32)"] = first_attention
    sets["layer 0 attention + front end fp32"] = first_attention + front
    sets["layer 0 fp32 (first_layer_fp32)"] = [n for n in int8_names if recipes.layer_of(n, "audio") == 0]
    return sets


def dynamic_sweep(export_dir: Path, calibration_limit: int | None = 8, log=print) -> list[dict]:
    """Per-token dynamic INT8 of the audio tower with each dynamic_sets entry kept fp32, SmoothQuant on (as shipped)
    and, for the fully quantized graph, off."""
    q.quiet_ort_logging()
    src = Path(export_dir) / "audio.onnx"
    fp32 = onnx.load(str(src))
    held = ev.HeldOut(export_dir, "audio", eval_limit=0)
    feeds, _ = q.calibration_feeds(export_dir, "audio", None, calibration_limit)
    absmax = q.smoothing_stats(fp32, feeds, front_end=True)  # the sweep also measures front-end smoothing
    heads = q.audio_heads(src)
    probe, _ = graph.conv_front_end_as_matmuls(graph.fuse_attention(fp32, heads)[0])
    int8_names = graph.per_token_candidates(probe)
    sets = dynamic_sets(fp32, int8_names)
    runs = [(name, keep, absmax, None) for name, keep in sets.items()]
    runs.append(("every weight MatMul int8, no SmoothQuant", [], None, None))
    for alpha in (0.5, 0.3):  # the front-end windows smoothed by an explicit scale (not shipped)
        runs.append((f"layer 0 attention fp32, front end smoothed α {alpha}",
                     sets["layer 0 attention fp32 (first_attention_fp32)"], absmax, alpha))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, keep, stats, front_end_alpha in runs:
            out = Path(tmp) / "int8.onnx"
            onnx.save(q.audio_int8_graph(fp32, heads, keep, stats, front_end_alpha)[0], str(out))
            fig = held.fidelity(out)
            row = {"tower": "audio", "set": name, "cosine_mean": ev.min_mean(fig), "cosine_min": ev.min_min(fig),
                   "fp32_matmuls": len(keep), "int8_matmuls": len(int8_names) - len(keep), "inputs": len(held.feeds)}
            for policy, by in fig.get("by_policy", {}).items():
                row[f"{policy}_min"] = ev.min_min(by)
            rows.append(row)
            log(f"audio {name:48s} mean {row['cosine_mean']:.5f}  min {row['cosine_min']:.5f}")
    return rows


def dynamic_markdown(rows: list[dict], model_name: str) -> str:
    lines = [f"Measured on `{model_name}`: per-token dynamic INT8 (SmoothQuant α {q.SMOOTH_ALPHA} unless said), {rows[0]['inputs']} "
             "held-out inputs (runtime/samples + quantization/heldout incl. real/, pad and trim); cosine vs fp32 = "
             "worst Matryoshka dim.", "",
             "| kept fp32 / int8 where | int8 MatMuls | mean | min | min (pad) | min (trim) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['set']} | {r['int8_matmuls']} | {r['cosine_mean']:.4f} | {r['cosine_min']:.4f} | "
                     f"{r.get('pad_min', float('nan')):.4f} | {r.get('trim_min', float('nan')):.4f} |")
    return "\n".join(lines)


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
    add_model_option(p, dest="export_dir", positional=True)
    p.add_argument("--tower", default="audio,text")
    p.add_argument("--calibration-method", default="minmax", choices=q.CALIBRATION_METHODS)
    p.add_argument("--calibration-limit", type=int, default=8)
    p.add_argument("--sets", default=",".join(recipes.STATIC_SETS))
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--dynamic", action="store_true", help="the audio per-token dynamic recipe, layer by layer")
    a = p.parse_args(argv)
    if a.dynamic:
        rows = dynamic_sweep(a.export_dir, a.calibration_limit or None)
        if a.markdown:
            print(dynamic_markdown(rows, ev.load_manifest(a.export_dir)["model"]["name"]))
        return 0
    rows = []
    for tower in a.tower.split(","):
        rows += sweep(a.export_dir, tower, a.sets.split(","), a.calibration_method, a.calibration_limit or None)
    if a.markdown:
        print(markdown(rows, a.calibration_method, ev.load_manifest(a.export_dir)["model"]["name"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
