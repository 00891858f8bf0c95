"""Measure audio INT8 graph variants on real recordings, per clip policy, and time them round robin.

    python quantization/variants.py EXPORT_DIR --clips DIR [--clips DIR ...] [--out DIR] VARIANT [VARIANT ...]
    python bench/encoders.py --model EXPORT_DIR --variants VARIANT,VARIANT --no-e2e --no-rss   (their speed)

A VARIANT is a dash-separated name built from the export's fp32 audio graph by quantization.graph:
  nb<block>[w<bits>[s]]   block-wise MatMulNBits, int8 compute (w7: 7-bit weights; s: per-block clipping search)
  pt<bits>                per-token MatMulIntegerToFloat (the previous recipe)
and modifiers: `sq` (SmoothQuant fold, alpha `a<alpha>`), `x:<exclusion set>` (quantize.py's names),
`only:<group>` (int8 only in that group: fe, l0att, l0mlp, fc2, out, last, mid). E.g. `nb16`, `nb16w7`,
`pt8-sq`, `pt7-sq-x:fc2_edges_fp32`, `pt8-sq-only:fe`. Fidelity = cosine to the fp32 ONNX, worst
Matryoshka dim, mean / min, for pad and trim separately. Built graphs are cached under --out. Speed lives
in bench/ (a later stage): bench/encoders.py --variants times them round robin against CTranslate2.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import onnx

if not __package__:  # run by path: run as this checkout's package module (wavlink_edge/run_by_path.py says why)
    import runpy
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "run_by_path.py"))["run"](__file__)

from wavlink_edge.quantization import evaluate as ev
from wavlink_edge.quantization import graph, recipes
from wavlink_edge.quantization import quantize as qz
from wavlink_edge.runtime import vectors

GROUPS = {"fe": r"/audio/conv[12]/MatMul$", "l0att": r"layers\.0/self_attn/", "l0mlp": r"layers\.0/fc[12]",
          "fc2": r"/fc2/MatMul$", "out": r"out_proj", "last": r"layers\.5/", "mid": r"layers\.[1-4]/"}


def build(export_dir: Path, name: str, out_dir: Path) -> Path:
    path = out_dir / f"{name.replace(':', '_')}.onnx"
    if path.exists():
        return path
    model = onnx.load(str(export_dir / "audio.onnx"))
    parts = name.split("-")
    kind = parts[0]
    if "sq" in parts:
        feeds, _ = qz.calibration_feeds(export_dir, "audio", None, qz.SMOOTHING_CLIPS)
        alpha = float(next((p[1:] for p in parts if re.fullmatch(r"a[0-9.]+", p)), qz.SMOOTH_ALPHA))
        model, _ = graph.smooth_layernorms(model, qz.smoothing_stats(model, feeds), alpha)
    exclude = next((recipes.dynamic_exclusions(model, "audio", p[2:]) for p in parts if p.startswith("x:")), [])
    fused, _ = graph.fuse_attention(model, qz.audio_heads(export_dir / "audio.onnx"))
    fused, _ = graph.conv_front_end_as_matmuls(fused)
    only = next((p[5:] for p in parts if p.startswith("only:")), None)
    if only:
        exclude = [c for c in graph.per_token_candidates(fused) if not re.search(GROUPS[only], c)]
    if kind.startswith("nb"):
        m = re.fullmatch(r"nb(\d+)(?:w(\d+)(s?))?", kind)
        quantized, _ = graph.matmul_nbits_int8(fused, set(exclude), block_size=int(m[1]), weight_bits=int(m[2] or 8),
                                               search_scale=bool(m[3]))
    elif kind.startswith("pt"):
        quantized, _ = graph.per_token_int8(fused, set(exclude), weight_bits=int(kind[2:]))
    else:
        raise SystemExit(f"error: unknown variant kind {kind!r} (nb<block>[w<bits>[s]] or pt<bits>)")
    onnx.save(quantized, str(path))
    return path


def fidelity(export_dir: Path, clips: list[Path], variants: list[str], out_dir: Path) -> None:
    manifest = ev.load_manifest(export_dir)
    dims = manifest["model"]["matryoshka_dims"]
    feeds = ev.audio_feeds(clips, manifest["model"]["n_mels"])
    print(f"{len(clips)} clips x pad/trim = {len(feeds)} inputs: {', '.join(p.name for p in clips)}")
    reference = ev.embed(ev.session(export_dir / "audio.onnx"), feeds)
    print("| variant | pad mean / min | trim mean / min | worst input |\n|---|---|---|---|")
    for name in variants:
        got = ev.embed(ev.session(build(export_dir, name, out_dir)), feeds)
        cells = []
        for policy in ("pad", "trim"):
            rows = np.array([key.endswith(":" + policy) for key, _ in feeds])
            per = ev.cosine_by_dim(reference[rows], got[rows], dims)
            cells.append(f"{ev.min_mean(per):.4f} / {ev.min_min(per):.4f}")
        worst = min(dims, key=lambda d: float(vectors.cosine(vectors.truncate(reference, d), vectors.truncate(got, d)).min()))
        cos = vectors.cosine(vectors.truncate(reference, worst), vectors.truncate(got, worst))
        print(f"| {name} | {cells[0]} | {cells[1]} | {feeds[int(np.argmin(cos))][0]} ({cos.min():.4f}) |", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("export_dir", type=Path)
    p.add_argument("variants", nargs="+")
    p.add_argument("--clips", type=Path, action="append", default=[], help="folder of real recordings (repeatable)")
    p.add_argument("--out", type=Path, default=Path("variants"), help="where built graphs are cached")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    clips = [c for folder in (args.clips or [ev.HELDOUT_DIR / "real", ev.SAMPLES_DIR]) for c in ev.audio_files(folder)]
    if not clips:
        p.error("no clips found")
    fidelity(args.export_dir, clips, args.variants, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
