"""PNG plots from the result documents (matplotlib, Agg: no display needed).

- latency_vs_batch.png: ms per item against batch, one line per backend, one panel per input shape.
- tradeoff.png: audio latency per clip against T2A R@10, one point per precision x Matryoshka dim.
- pad_vs_trim.png: batch-1 latency per clip length under each policy, and the reference's recall per policy.
Every figure's title carries the model's heads label.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MARKERS = "os^Dv<>p*h"


def _title(doc: dict, what: str) -> str:
    m = doc["model"]
    return f"{what} — {m['name']} ({m['heads']} heads)"


def latency_vs_batch(lat: dict, path: Path) -> Path:
    shapes = []
    for r in lat["rows"]:
        key = (r["tower"], r["policy"], r["frames"])
        if key not in shapes and not r.get("shared_with"):
            shapes.append(key)
    fig, axes = plt.subplots(1, len(shapes), figsize=(4.5 * len(shapes), 4), squeeze=False)
    for ax, (tower, policy, frames) in zip(axes[0], shapes):
        rows = [r for r in lat["rows"] if (r["tower"], r["policy"], r["frames"]) == (tower, policy, frames)
                and not r.get("shared_with")]
        for i, backend in enumerate(dict.fromkeys(r["backend"] for r in rows)):
            pts = sorted((r["batch"], r["p50_ms"] / r["batch"], r["label"]) for r in rows if r["backend"] == backend)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=MARKERS[i % len(MARKERS)], label=pts[0][2])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch")
        ax.set_ylabel("p50 ms per item")
        ax.set_title(f"{tower}" + (f": {frames} frames ({policy})" if frames else ""), fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.suptitle(_title(lat, "Latency vs batch"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _audio_latency_by_precision(lat: dict, policy: str) -> dict:
    """Batch-1 per-clip p50 of the longest measured clip at this policy, per (engine, precision, variant)."""
    rows = [r for r in lat["rows"] if r["tower"] == "audio" and r["batch"] == 1 and r["policy"] == policy]
    if not rows:
        rows = [r for r in lat["rows"] if r["tower"] == "audio" and r["batch"] == 1]
    longest = max(r["clip_seconds"] for r in rows)
    return {(r["engine"], r["precision"], r["variant"], r["device"]): (r["p50_ms"], longest, r["policy"])
            for r in rows if r["clip_seconds"] == longest}


def tradeoff(lat: dict, rec: dict, path: Path) -> Path:
    policy = rec["settings"]["trained_policy"]
    latency = _audio_latency_by_precision(lat, policy)
    dataset = rec["datasets"][0]["name"]
    metric = "t2a_r10" if rec["datasets"][0]["task"] == "retrieval" else "top1"
    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    dims = sorted({r["dim"] for r in rec["rows"]}, reverse=True)
    colours = {k: f"C{i}" for i, k in enumerate(latency)}  # one colour per backend x precision, one marker per dim
    names = {}
    for r in rec["rows"]:
        key = (r["engine"], r["precision"], r["variant"], r["device"])
        if r["dataset"] != dataset or r["policy"] != policy or key not in latency:
            continue
        ax.scatter(latency[key][0], 100 * r["metrics"][metric], marker=MARKERS[dims.index(r["dim"]) % len(MARKERS)],
                   s=40, color=colours[key], alpha=0.85)
        names[key] = r["label"].split(" (")[0].removesuffix(f" d{r['dim']}")
    # Points of equal latency and recall overlap, so labels beside them collide: two legends name colour and marker.
    shown = [key for key in latency if key in names]
    backends = ax.legend([plt.Line2D([], [], color=colours[k], marker="o", linestyle="") for k in shown],
                         [f"{names[k]} ({latency[k][0]:.0f} ms)" for k in shown], fontsize=7, loc="upper left",
                         bbox_to_anchor=(1.01, 1), title="backend, precision", title_fontsize=7)
    ax.add_artist(backends)
    ax.legend([plt.Line2D([], [], color="grey", marker=MARKERS[i % len(MARKERS)], linestyle="") for i in range(len(dims))],
              [f"d{d}" for d in dims], fontsize=7, loc="lower left", bbox_to_anchor=(1.01, 0), title="dim", title_fontsize=7)
    any_lat = next(iter(latency.values()), (0, "?", policy))
    ax.set_xlabel(f"audio p50 ms per clip (batch 1, {any_lat[1]} s, {any_lat[2]})")
    ax.set_ylabel(f"{metric} % on {dataset}")
    ax.grid(alpha=0.3)
    ax.set_title(_title(rec, "Latency-recall trade-off (marker = dim)"), fontsize=9)
    fig.subplots_adjust(left=0.08, right=0.7, top=0.92, bottom=0.12)  # room for the legends right of the axes
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pad_vs_trim(lat: dict, rec: dict | None, path: Path) -> Path:
    rows = [r for r in lat["rows"] if r["tower"] == "audio" and r["batch"] == 1]
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    lengths = sorted({r["clip_seconds"] for r in rows})
    panels = 2 if rec else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 4.2), squeeze=False)
    ax = axes[0][0]
    width = 0.8 / max(len(backends), 1)
    for i, backend in enumerate(backends):
        for policy, hatch in (("pad", ""), ("trim", "//")):
            pts = {r["clip_seconds"]: r["p50_ms"] for r in rows if r["backend"] == backend and r["policy"] == policy}
            xs = [j + i * width for j, s in enumerate(lengths) if s in pts]
            ax.bar(xs, [pts[s] for s in lengths if s in pts], width, hatch=hatch, alpha=0.55 if policy == "pad" else 0.95,
                   color=f"C{i}", label=f"{backend} {policy}")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(lengths))], [f"{s:g} s" for s in lengths])
    ax.set_yscale("log")
    ax.set_ylabel("p50 ms (batch 1)")
    ax.legend(fontsize=5, ncol=2)
    ax.set_title("latency: pad (solid) vs trim (hatched)", fontsize=9)
    if rec:
        ax = axes[0][1]
        ref = [r for r in rec["rows"] if r["reference"] and r["dataset"] == rec["datasets"][0]["name"]]
        metric = "t2a_r10" if ref and ref[0]["task"] == "retrieval" else "top1"
        for j, policy in enumerate(dict.fromkeys(r["policy"] for r in ref)):
            pts = sorted((r["dim"], 100 * r["metrics"][metric]) for r in ref if r["policy"] == policy)
            ax.plot([str(p[0]) for p in pts], [p[1] for p in pts], marker=MARKERS[j], label=policy)
        ax.set_xlabel("Matryoshka dim")
        ax.set_ylabel(f"reference {metric} %")
        ax.legend()
        ax.set_title("recall of the PyTorch reference per policy", fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle(_title(lat, "Pad vs trim"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_all(lat: dict | None, rec: dict | None, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    made = []
    if lat:
        made.append(latency_vs_batch(lat, out_dir / "latency_vs_batch.png"))
        made.append(pad_vs_trim(lat, rec, out_dir / "pad_vs_trim.png"))
    if lat and rec:
        made.append(tradeoff(lat, rec, out_dir / "tradeoff.png"))
    return made
