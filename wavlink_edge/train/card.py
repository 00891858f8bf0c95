"""The model card: the run's results (results.json) rendered as MODEL_CARD.md with training_curves.png and
training_results.json beside the heads file."""
from __future__ import annotations

import json
import os
from pathlib import Path

from wavlink_edge.export.backbones import DEMO_HEADS
from wavlink_edge.train import levers
from wavlink_edge.train.corpus.real import PROMPT_TEMPLATES
from wavlink_edge.train.data import POLICIES
from wavlink_edge.train.heads import DEMO_NAME, TRAINED_TEXT, set_heads_policy


def plot_curves(results: dict, path: Path) -> Path:
    """Loss, generated-validation R@1 and real-validation zero-shot of the epoch-selection run, and the final run's
    training loss; the chosen epoch count is marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    final, selection = results["curves"], (results.get("selection") or {}).get("curves")
    sel = selection or final
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(sel["epoch"], sel["train_loss"], label="train (validation files held out)" if selection else "train")
    ax_loss.plot(sel["epoch"], sel["val_loss"], "--", label="generated validation")
    if selection:
        ax_loss.plot(final["epoch"], final["train_loss"], label="final run, every train file")
    ax_val.plot(sel["epoch"], sel["val_t2a_r1"], label="generated validation T2A R@1")
    if "val_a2t_r1" in sel:
        ax_val.plot(sel["epoch"], sel["val_a2t_r1"], label="generated validation A2T R@1")
    if "real_val_zero_shot" in sel:
        ax_val.plot(sel["epoch"], sel["real_val_zero_shot"], label="real validation zero-shot top-1")
    for ax in (ax_loss, ax_val):
        if selection:
            ax.axvline(results["recipe"]["epochs"], color="grey", linestyle=":", label="chosen epoch count")
        ax.set(xlabel="epoch")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    ax_loss.set(ylabel="Matryoshka CLIP loss", title="loss")
    ax_val.set(ylabel="fraction", title="validation (never the test splits)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _selection_lines(r: dict) -> list[str]:
    """The card's account of how the epoch count was chosen (absent from results written before it was)."""
    sel = r.get("selection")
    if not sel:
        return []
    c, at = sel["curves"], sel["epochs"] - 1
    return [f"- epoch count **{sel['epochs']}**, chosen out of 1-{sel['max_epochs']} on validation data only: "
            f"{r['counts']['real_val_scored']} sound-event files of the surveyed train packages ({len(sel['real_val_classes'])} "
            f"classes; held out with their augmented copies and the clips mixing them in, {r['counts']['real_val_held_out']} "
            f"clips) and the {r['counts']['val']} generated validation clips; score = real-validation zero-shot top-1 + "
            "generated mean R@1, averaged over neighbouring epochs. At that epoch: real-validation zero-shot "
            f"{_pct(c['real_val_zero_shot'][at])} %, generated validation R@1 T2A / A2T {_pct(c['val_t2a_r1'][at])} / "
            f"{_pct(c['val_a2t_r1'][at])} %. The shipped heads are then trained afresh on every train file (validation "
            "files included) for that many epochs"]


def _lever_lines(r: dict) -> list[str]:
    """The levers compared on validation (train/levers.py), when this run compared them."""
    if not r.get("levers"):
        return []
    best = levers.chosen(r["levers"])
    lines = [f"- levers compared on validation before training (`--levers`; each a selection run of up to "
             f"{r['selection']['max_epochs']} epochs from the same start; score = real-validation zero-shot top-1 + "
             f"generated validation mean R@1, smoothed over 3 epochs): the best, **{best}**, ships", "",
             "  | lever | recipe change | best score | at epoch |", "  |---|---|---|---|"]
    for name, lever in r["levers"].items():
        change = ", ".join(f"{k}={v}" for k, v in lever["change"].items()) or "-"
        lines.append(f"  | {name} | {change} | {lever['best_score']:.3f} | {lever['best_epoch']} |")
    return lines + [""]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _zero_shot_cells(zs: dict, dims) -> str:
    """Top-1 over clips / mean over classes, one cell per dim."""
    return " | ".join(f"{_pct(zs[str(d)]['top1'])} / {_pct(zs[str(d)]['balanced_top1'])}" for d in dims)


HEADS_NAMES = {"trained": "trained (this run)", "previous": "committed before this run", "untrained": "untrained"}
GOALS = [("real zero-shot top-1, dim 512", "real", "zero_shot", "512", "top1", 0.60),
         ("real zero-shot class-balanced, dim 512", "real", "zero_shot", "512", "balanced_top1", 0.50),
         ("real zero-shot top-1, dim 64", "real", "zero_shot", "64", "top1", None),
         ("real zero-shot class-balanced, dim 64", "real", "zero_shot", "64", "balanced_top1", None),
         ("real caption retrieval T2A R@10, dim 512", "real", "retrieval", "512", ("t2a", "R@10"), 0.80),
         ("real caption retrieval A2T R@10, dim 512", "real", "retrieval", "512", ("a2t", "R@10"), 0.80),
         ("generated T2A R@1, dim 512", "generated", "retrieval", "512", ("t2a", "R@1"), 0.129 - 0.02),
         ("generated A2T R@1, dim 512", "generated", "retrieval", "512", ("a2t", "R@1"), 0.173 - 0.02)]


def _heads(ev: dict) -> list[str]:
    return [h for h in ("trained", "previous", "untrained") if h in ev]


def _with_interval(res: dict, key) -> tuple[float, list | None]:
    if isinstance(key, tuple):
        return res[key[0]][key[1]], res[key[0]].get(f"{key[1]}_ci")
    return res[key], res.get(f"{key}_ci")


def headline_lines(evals: dict, policy: str, names: dict) -> list[str]:
    """The headline figures at `policy` with bootstrap 95 % intervals, one column per evaluated heads
    (evals: {heads: evaluate_tests(...)}), and the goals they are held to."""
    lines = [f"## Headline figures (test splits, policy {policy}; [bootstrap 95 % interval over clips, "
             "1000 resamples])", "", "| figure | goal | " + " | ".join(names[h] for h in evals) + " |",
             "|---|---|" + "---|" * len(evals)]
    for name, split, kind, dim, key, goal in GOALS:
        cells = []
        for ev in evals.values():
            value, ci = _with_interval(ev[split][policy][kind][dim], key)
            cells.append(f"{_pct(value)}" + (f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else ""))
        goal_text = "within 3 points of dim 512" if goal is None else f">= {_pct(goal)}"
        lines.append(f"| {name} | {goal_text} | " + " | ".join(cells) + " |")
    return lines


def evaluation_markdown(r: dict, seen: set) -> str:
    """train.py --evaluate's results as markdown: headline figures with intervals, then top-1 per class at full
    width split by whether the class has real train audio (`seen`)."""
    ev, policy, dim = r["eval"]["heads"], r["clip_policy"], str(r["dims"][0])
    zs = ev["real"][policy]["zero_shot"][dim]
    labels = r.get("real_labels") or []
    with_audio = [c for c in r["real_classes"] if c in seen]
    def top1(classes):
        right = [p == t for p, t in zip(zs["predicted"], labels) if t in classes]
        return f"{_pct(sum(right) / max(1, len(right)))} % of {len(right)} clips"
    lines = [f"Heads `{Path(r['heads']).name}` scored by `python train/train.py --evaluate HEADS --pad none` "
             f"({r['counts']['real_test']} real test clips over {len(r['real_classes'])} classes; the generated test split "
             "bench/data/wavlink_eval).", "", *headline_lines({"heads": ev}, policy, {"heads": Path(r["heads"]).name}), "",
             f"Real zero-shot top-1 at dim {dim} (prompt ensemble): classes with real train audio "
             f"({len(with_audio)}): {top1(set(with_audio))}; classes without ({len(r['real_classes']) - len(with_audio)}: "
             f"{', '.join(c for c in r['real_classes'] if c not in seen)}): {top1(set(r['real_classes']) - seen)}.", "",
             "Per class: " + ", ".join(f"{c} {_pct(v)}" for c, v in zs["per_class"].items()) + ".", ""]
    return "\n".join(lines)


def _headline_lines(r: dict) -> list[str]:
    lines = headline_lines({h: r["eval"][h] for h in _heads(r["eval"]) if h != "untrained"}, r["shipped_policy"], HEADS_NAMES)
    sel = r.get("ship")
    if sel and sel.get("validation_previous"):
        lines += ["", "Shipped only if better on validation (never the tests): score = real-validation zero-shot "
                  "top-1 + generated-validation mean R@1, the committed heads scored on the same validation files "
                  f"(all from packages they never trained on): this recipe {_validation(sel['validation_new'])}, committed "
                  f"heads {_validation(sel['validation_previous'])}: "
                  + ("**shipped**." if sel["better_on_validation"] else "**not shipped** (the committed heads stay).")]
    return lines + [""]


def _validation(scores: dict) -> str:
    return (f"{_pct(scores.get('real_val_zero_shot', 0.0))} % zero-shot, R@1 T2A / A2T {_pct(scores['val_t2a_r1'])} / "
            f"{_pct(scores['val_a2t_r1'])} %")


def _peaks(r: dict) -> str:
    return "; ".join(f"{stage} {v['self']} (workers {v['workers']})" for stage, v in r.get("peak_rss_gb", {}).items()) or "not recorded"


def model_card(results: dict, path: Path) -> Path:

    r = results
    prompts = [t.replace("{A}", "{class}") for t in PROMPT_TEMPLATES]
    ev, ship = r["eval"], r["shipped_policy"]
    real_n, classes = r["counts"]["real_test"], r["real_classes"]
    lines = [
        f"# {DEMO_NAME}: WavLink-base demo heads trained in this repo",
        "",
        "**A demo model, not the paper's: trained on generated audio (train/corpus) plus real recordings from "
        "Debian packages (counts below). Backbones are real and frozen:** Whisper-base encoder (OpenAI, MIT, "
        "CTranslate2 weights) and all-MiniLM-L6-v2 (Apache-2.0).",
        "",
        *_headline_lines(r),
        "## Recipe",
        f"- trained: {TRAINED_TEXT}",
        f"- the global token is trained, but it joins the frames at the input of the last layer "
        f"(config `global_token_layer: {r['global_token_layer']}`), not before layer 0 as in the paper: with a "
        "frozen encoder this lets the frames' states be computed once and cached; the exported graph does the same",
        f"- Matryoshka CLIP loss at {r['dims']}, learnable temperature; AdamW lr {r['recipe']['lr']}, weight decay "
        f"{r['recipe']['weight_decay']}, batch {r['recipe']['batch_size']}, {r['recipe']['epochs']} epochs, real clips "
        f"{r['recipe']['real_repeats']}x per epoch, seed {r['recipe']['seed']}; trained on {r['recipe']['clip_policy']} states"
        + (f"; real clips drawn with weight (package size)^-{r['recipe']['package_balance']}" if r["recipe"].get("package_balance") else "")
        + ("; two real clips of one label are not each other's negatives" if r["recipe"].get("same_label_negatives") is False else ""),
        *_selection_lines(r),
        *_lever_lines(r),
        f"- input-length policy served: **{ship}**: the policy the heads were trained on, unless the other beats it on "
        "zero-shot top-1 at full width on the real test split by more than one clip (trim: the encoder runs only on the "
        "frames holding audio, >= 1 s, ~4x faster for short clips; pad: 30 s windows)",
        f"- data: {r['counts']['generated_train']} generated train clips ({r['counts']['val']} held out for validation "
        f"curves) + {r['counts']['real_train']} real train clips; tests: {r['counts']['generated_test']} generated clips "
        f"(compositions never in training; bench/data/wavlink_eval) and {real_n} real clips (held-out packages and classes); "
        "5 captions per clip",
        f"- weights: `{DEMO_HEADS.name}` (fp16 safetensors, {r['heads_bytes'] / 1e6:.1f} MB), curves: `training_curves.png`",
        f"- whole pipeline (`python train/train.py`): {r['seconds']['total']:.0f} s on this machine ({r['seconds']}; "
        f"peak resident memory after each stage, GB: {_peaks(r)}); "
        + ("corpus reused from `--corpus`; " if r.get("corpus_reused") else "")
        + (f"audio features {', '.join(r['cache_hits'])} (and the corpus they came from) were cache hits in the workdir "
           "(an earlier run of the same command computed them), so this is not a from-scratch time; " if r.get("cache_hits")
           else "corpus and audio features were cache hits in the workdir (an earlier run of the same command computed "
           "them), so this is not a from-scratch time; " if "cache_hits" not in r and r["seconds"]["audio_features"] < 60 else "")
        + f"load average at start/end {r['load_average']} on {os.cpu_count()} cores (shared with other jobs when above)",
        "",
        f"## Real test split: zero-shot classification ({len(classes)} classes, {real_n} clips)",
        "",
        f"Classes: {', '.join(classes)}. Top-1 over clips / mean over classes, %. Each class's text vector is the mean "
        f"of the normalised embeddings of {len(prompts)} prompts ({'; '.join(prompts)}; {{class}} with its article), "
        "the prompt ensembling of CLIP and CLAP; the one-prompt rows use only \"the sound of {class}\".",
        "",
        "| heads | prompts | policy | " + " | ".join(f"dim {d}" for d in r["dims"]) + " |",
        "|---|---|---|" + "---|" * len(r["dims"]),
    ]
    rows = [(h, p, k) for h in _heads(ev) for p, k in (("ensemble", "zero_shot"), ("one prompt", "zero_shot_single"))]
    for heads, prompts, key in rows:
        for policy in POLICIES:
            zs = ev[heads]["real"][policy].get(key)
            if zs is None:
                continue
            lines.append(f"| {HEADS_NAMES[heads]} | {prompts} | {policy} | {_zero_shot_cells(zs, r['dims'])} |")
    # the previous demo's figures from its own training run, only when its heads were not scored on this split
    for policy, zs in ((r.get("previous_real_zero_shot") or {}) if "previous" not in ev else {}).items():
        lines.append(f"| previous demo (fewer real sources) | one prompt | {policy} | {_zero_shot_cells(zs, r['dims'])} |")
    lines.append("| chance | - | - | " + " | ".join(_pct(1 / len(classes)) for _ in r["dims"]) + " |")
    zs = ev["trained"]["real"][ship]["zero_shot"][str(r["dims"][0])]
    lines += ["", f"Per class (trained, {ship}, dim {r['dims'][0]}): "
              + ", ".join(f"{c} {_pct(v)}" for c, v in zs["per_class"].items())
              + f". Test classes with real train recordings (from other packages' files): "
              f"{', '.join(r['real_classes_seen']) or 'none'}; with none: "
              f"{', '.join(c for c in classes if c not in r['real_classes_seen'])} (speech, music and some instrument "
              "families do occur in the generated corpus; the others occur in no training data).", ""]
    for split, title in (("real", f"Real test split retrieval ({real_n} clips)"),
                         ("generated", f"Generated test split retrieval ({r['counts']['generated_test']} clips)")):
        lines += [f"## {title} (R@1 / R@5 / R@10, %)", "",
                  "| heads | policy | dim | T2A R@1 | T2A R@5 | T2A R@10 | A2T R@1 | A2T R@5 | A2T R@10 |",
                  "|---|---|---|---|---|---|---|---|---|"]
        rows = [(h, p, ev[h][split][p]["retrieval"]) for h in _heads(ev) for p in POLICIES if p in ev[h][split]]
        if split == "generated" and r.get("previous_generated"):
            rows.append(("previous demo (generated data only)", "trim", r["previous_generated"]))
        for label, policy, table in rows:
            label = HEADS_NAMES.get(label, label)
            for dim, m in table.items():
                lines.append(f"| {label} | {policy} | {dim} | " + " | ".join(_pct(m[d][f"R@{k}"]) for d in ("t2a", "a2t") for k in (1, 5, 10)) + " |")
        ch = r["chance"][split]
        if any(p not in ev["trained"][split] for p in POLICIES):
            lines.append("| (pad not evaluated in this run: `--pad`) | | | | | | | | |")
        lines += ["| chance | - | any | " + " | ".join(_pct(ch[d][f"R@{k}"]) for d in ("t2a", "a2t") for k in (1, 5, 10)) + " |", ""]
    lines += [r["real_data_card"], "The generated corpus's sources (espeak-ng, festival, fluidsynth and soundfonts, "
              "sound themes, game sounds) and licences are in the DATA_CARD.md it writes (train/corpus/datacard.py).", "",
              "Produced by `python train/train.py` (numbers above are from its last run; `training_results.json` here).", ""]
    path.write_text("\n".join(lines))
    return path


def _previous(path: Path, key: str, derive) -> dict | None:
    """A figure of the committed model for the before/after rows: carried forward under `key`, or derived from
    its own results."""
    if not path.is_file():
        return None
    old = json.loads(path.read_text())
    return old[key] if key in old else derive(old)


def previous_generated(path: Path) -> dict | None:
    """The committed model's generated-split figures (trim)."""
    return _previous(path, "previous_generated",
                     lambda old: old.get("trained", {}).get(old.get("shipped_mode", ""), {}).get("trim"))


def previous_real_zero_shot(path: Path) -> dict | None:
    """The committed model's real-split zero-shot figures ({policy: {dim: ...}}), one prompt."""
    def derive(old):
        real = old.get("eval", {}).get("trained", {}).get("real", {})
        return {p: {d: {k: v[k] for k in ("top1", "balanced_top1")} for d, v in real[p]["zero_shot"].items()}
                for p in real} or None

    return _previous(path, "previous_real_zero_shot", derive)


def real_counts(corpus: Path) -> dict:
    import csv

    out = {}
    for split in ("train", "test"):
        with open(corpus / f"metadata_real_{split}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        out[split] = {"clips": len(rows), "seconds": round(sum(float(r["length_s"]) for r in rows), 1),
                      "classes": sorted({r["label"] for r in rows}), "packages": sorted({r["package"] for r in rows})}
    return out


def write_outputs(results: dict, out: Path, heads: Path | None) -> int:
    """Heads file (when given), curves, model card and results JSON into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    if heads is not None:
        (out / DEMO_HEADS.name).write_bytes(heads.read_bytes())
    set_heads_policy(out / DEMO_HEADS.name, results["shipped_policy"])
    results["heads_bytes"] = (out / DEMO_HEADS.name).stat().st_size
    plot_curves(results, out / "training_curves.png")
    model_card(results, out / "MODEL_CARD.md")
    (out / "training_results.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {out / DEMO_HEADS.name} (policy {results['shipped_policy']}) and {out / 'MODEL_CARD.md'}")
    return 0

