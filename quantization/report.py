"""Markdown tables of the quantized artifacts in an export dir's manifest (for docs/quantization.md).

    python quantization/report.py EXPORT_DIR
"""
from __future__ import annotations

import sys
from pathlib import Path

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


def main(argv=None) -> int:
    export_dir = Path((argv or sys.argv[1:])[0])
    m = ev.load_manifest(export_dir)
    print(f"Model `{m['model']['name']}` ({m['model']['heads']} heads).\n")
    print(fidelity_table(m))
    print()
    print(ladder_table(m))
    return 0


if __name__ == "__main__":
    sys.exit(main())
