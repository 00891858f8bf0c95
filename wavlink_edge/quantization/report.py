"""Markdown tables of the quantized artifacts in an export dir's manifest (for docs/quantization.md).

    python quantization/report.py EXPORT_DIR [--measure]

--measure re-runs the audio INT8 artifacts on the held-out clips and splits the fidelity by input group
(all / real microphone recordings) and clip policy (pad / trim).
"""
from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run by path: run as this checkout's package module (wavlink_edge/run_by_path.py says why)
    import runpy
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "run_by_path.py"))["run"](__file__)

from wavlink_edge.quantization import evaluate as ev


def fidelity_table(manifest: dict) -> str:
    dims = [str(d) for d in manifest["model"]["matryoshka_dims"]]
    lines = ["| artifact | MB | vs fp32 size | recipe | " + " | ".join(f"dim {d} mean / min" for d in dims) + " | gate | passed |",
             "|---" * (len(dims) + 5) + "|"]
    arts = manifest["artifacts"]
    for name, e in arts.items():
        if "fidelity" not in e or e.get("precision") == "fp32":
            continue
        fp32 = arts[f"{e['tower']}.onnx"]["bytes"]
        f = e["fidelity"]
        cells = " | ".join(f"{f[d]['cosine_mean']:.5f} / {f[d]['cosine_min']:.5f}" for d in dims)
        if e["precision"] == "fp16":
            recipe = "fp16; " + ", ".join(e["recipe"].get("kept_fp32_ops", [])) + " fp32"
        else:
            recipe = f"{e.get('variant')}: {e['recipe'].get('exclusion_set', '?')}"
        flag = "FORCED" if f.get("forced") else str(f["passed"])
        lines.append(f"| {name} | {e['bytes'] / 1e6:.1f} | {e['bytes'] / fp32:.2f} | {recipe} | {cells} | {f['gate']} | {flag} |")
    held = {e["tower"]: e["fidelity"]["heldout"] for e in arts.values() if "heldout" in e.get("fidelity", {})}
    notes = [f"- {t}: {h['n']} held-out inputs from {', '.join(h['inputs'])}, batch 1, reference {h['reference']}"
             for t, h in sorted(held.items())]
    return "\n".join(lines + [""] + notes)


def ladder_table(manifest: dict) -> str:
    lines = ["| artifact | tried (cosine mean / min, worst dim) |", "|---|---|"]
    for name, e in manifest["artifacts"].items():
        tried = e.get("recipe", {}).get("ladder_tried")
        if tried:
            lines.append(f"| {name} | " + "; ".join(f"{t['exclusion_set']} {t['cosine_mean']:.4f} / {t['cosine_min']:.4f}"
                                                     for t in tried) + " |")
    return "\n".join(lines)


REAL_SOURCES = ("heldout/real/", "_freedesktop.flac")  # microphone recordings (tuxpaint animals, freedesktop)


def measured_breakdown(export_dir: Path, artifacts: list[str] | None = None) -> str:
    """Re-measure audio artifacts on the held-out set, split by input group x clip policy (worst dim)."""
    import numpy as np

    held = ev.HeldOut(export_dir, "audio")
    paths = ev.heldout_audio_paths()
    real = {p.name for p in paths if any(r in str(p) for r in REAL_SOURCES)}
    groups = {"all": lambda k: True, "real recordings": lambda k: k.rsplit(":", 1)[0] in real}
    m = ev.load_manifest(export_dir)
    names = artifacts or [n for n, e in m["artifacts"].items() if e.get("tower") == "audio" and e.get("precision") == "int8"]
    lines = ["| artifact | inputs | policy | n | worst-dim mean | worst-dim min |", "|---|---|---|---|---|---|"]
    for name in names:
        got = ev.embed(ev.session(Path(export_dir) / name), held.feeds)
        for group, keep in groups.items():
            for policy in ("pad", "trim"):
                rows = np.array([keep(k) and k.endswith(":" + policy) for k, _ in held.feeds])
                if rows.any():
                    fig = ev.cosine_by_dim(held.reference[rows], got[rows], held.dims)
                    lines.append(f"| {name} | {group} | {policy} | {int(rows.sum())} | {ev.min_mean(fig):.5f} | "
                                 f"{ev.min_min(fig):.5f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    export_dir = Path(argv[0])
    m = ev.load_manifest(export_dir)
    print(f"Model `{m['model']['name']}` ({m['model']['heads']} heads).\n")
    print(fidelity_table(m))
    print()
    print(ladder_table(m))
    if "--measure" in argv:  # per input group and clip policy (re-runs the audio artifacts)
        print()
        print(measured_breakdown(export_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
