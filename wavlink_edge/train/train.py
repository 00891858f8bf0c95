"""Train the WavLink-base demo heads on generated audio plus real recordings, from scratch, in one command.

    python train/train.py --workdir work_cache/train            # corpus -> features -> train -> card
    python train/train.py --workdir /tmp/t --quick              # tens of clips, a few epochs, seconds (CI)

Whisper-base (layers 0..4) and MiniLM stay frozen; their outputs are cached once (train/data.py). What is
trained on top and how (train/heads.py): the global token joining the frames at the last encoder layer, that
layer's query/output projections, MLP and LayerNorms, the final LayerNorm, both projectors and the temperature,
with a Matryoshka CLIP InfoNCE at 512/256/128/64, AdamW lr 1e-4 (train/loop.py). Augmentation (gain, noise,
speed, mixing, offset) is applied to the real train recordings' audio before caching (train/corpus/real.py);
the generated corpus is varied by construction. Scores: train/evaluate.py; the card: train/card.py.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

if not __package__:  # run by path: run as this checkout's package module (wavlink_edge/run_by_path.py says why)
    import runpy
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "run_by_path.py"))["run"](__file__)

from wavlink_edge.export.backbones import DEMO_HEADS, load_heads
from wavlink_edge.runtime.arguments import add_deprecated_alias
from wavlink_edge.train import card, data, levers, metrics
from wavlink_edge.train.corpus import real
from wavlink_edge.train.evaluate import Validation, choose_policy, evaluate_tests, validation_score
from wavlink_edge.train.heads import base_model, save_heads
from wavlink_edge.train.loop import Recipe, choose_epochs, train


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="work_cache/train")
    parser.add_argument("--corpus", help="existing corpus directory (default: generate into WORKDIR/corpus)")
    parser.add_argument("--n-train", type=int, default=3000)
    parser.add_argument("--n-test", type=int, default=600, help="600 = the committed bench/data/wavlink_eval split")
    parser.add_argument("--epochs", type=int, default=Recipe.epochs)
    parser.add_argument("--real-repeats", type=int, default=Recipe.real_repeats)
    parser.add_argument("--quick", action="store_true", help="tens of clips, a few epochs: the CI smoke run")
    add_deprecated_alias(parser, "--tiny", "--quick", action="store_true")
    parser.add_argument("--out", default=str(DEMO_HEADS.parent), help="where the heads, card and curves go")
    parser.add_argument("--render-card", action="store_true", help="only re-render the card from WORKDIR/results.json")
    parser.add_argument("--pad", choices=("all", "real", "none"), default="all",
                        help="test splits also evaluated padded to 30 s: both, the real one only, or neither (a padded "
                             "clip's features cost ~10x a trimmed one's)")
    parser.add_argument("--skip-generated-pad", dest="pad", action="store_const", const="real", help="= --pad real")
    parser.add_argument("--evaluate", metavar="HEADS", help="train nothing: score this heads file on the test splits "
                        "(the real one rendered into WORKDIR/corpus, the generated one from --generated-test)")
    parser.add_argument("--generated-test", default=str(Path(__file__).resolve().parents[1] / "bench" / "data" / "wavlink_eval"),
                        help="with --evaluate: the generated test split (default: the committed bench/data/wavlink_eval)")
    parser.add_argument("--levers", action="store_true", help="compare the recipe levers (train/levers.py) on validation "
                        "first and train the shipped heads with the best (one selection run per lever)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 when another job holds a core)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    work, out = Path(args.workdir), Path(args.out)
    if args.render_card:
        return render_card(work, out)
    if args.evaluate:
        return evaluate_heads(Path(args.evaluate), work, Path(args.generated_test), args.pad)
    load_start = os.getloadavg()[0]
    work.mkdir(parents=True, exist_ok=True)
    stages = Stages()
    corpus = Path(args.corpus) if args.corpus else work / "corpus"
    with stages("corpus"):
        data.build_corpus(corpus, args.quick, args.n_train, args.n_test)

    model, tokenizer = base_model()
    initial_state = {k: v.clone() for k, v in model.state_dict().items()}
    recipe = Recipe(epochs=3 if args.quick else args.epochs, batch_size=16 if args.quick else Recipe.batch_size,
                    real_repeats=args.real_repeats)
    cache_hits = sorted(f.name for f in work.glob("frames_*.npz"))  # features an earlier run computed
    with stages("audio_features"):
        splits, states = data.audio_features(model, corpus, work, args.pad)
    with stages("text_features"):
        features = data.text_features(model, tokenizer, corpus, work, splits, states)
    sets = data.TrainingSets(features, model.audio.layers[-1])
    validation = Validation(*sets.gen_val, real=sets.real_val)

    untrained = evaluate_tests(model, sets.tests)
    with stages("train"):
        # The epoch count is chosen with the validation files held out; the shipped heads are then trained afresh
        # on every train file for that many epochs.
        selection_rows = sets.fit(np.flatnonzero(~features.held_out))
        lever_results = {}
        if args.levers:  # each lever's run is a selection run; the best one's recipe and curves are kept
            lever_results = levers.compare(model, initial_state, recipe, selection_rows, validation)
            best = levers.chosen(lever_results)
            recipe, selection = replace(recipe, **levers.LEVERS[best]), lever_results[best]["curves"]
        else:
            selection = train(model, recipe, selection_rows, validation)
        final_recipe = replace(recipe, epochs=choose_epochs(selection))
        model.load_state_dict(initial_state)
        curves = train(model, final_recipe, sets.fit(np.arange(len(splits["real_train"]))), Validation(*sets.gen_val))
    with stages("evaluation"):
        # Evaluate what ships: the fp16-rounded heads loaded back into the frozen backbones.
        heads = save_heads(model, final_recipe, recipe.clip_policy, work / "heads.safetensors")
        model.load_state_dict(initial_state)
        load_heads(model, heads)
        trained = evaluate_tests(model, sets.tests)
        shipped = choose_policy(trained["real"], recipe.clip_policy, len(splits["real_test"]), model.config.embed_dim)
        heads = save_heads(model, final_recipe, shipped, work / "heads.safetensors")
        # The committed heads on the same validation files (none of them in its training data) and tests.
        previous = None
        if (out / DEMO_HEADS.name).is_file():
            model.load_state_dict(initial_state)
            load_heads(model, out / DEMO_HEADS.name)
            previous = {"validation": validation(model), "eval": evaluate_tests(model, sets.tests)}
    chosen = {k: v[final_recipe.epochs - 1] for k, v in selection.items()}
    better = previous is None or validation_score(chosen) > validation_score(previous["validation"])

    results = {
        "shipped_policy": shipped, "recipe": asdict(final_recipe), "dims": list(model.config.matryoshka_dims),
        "global_token_layer": model.config.global_token_layer,
        "counts": {"generated_train": sets.n_gen, "val": sets.n_val, "generated_test": len(splits["test"]),
                   "real_train": len(splits["real_train"]), "real_val_held_out": int(features.held_out.sum()),
                   "real_val_scored": int(features.scored.sum()), "real_test": len(splits["real_test"])},
        "selection": {"max_epochs": recipe.epochs, "epochs": final_recipe.epochs, "curves": selection,
                      "real_val_classes": features.val_classes},
        "real_classes": features.classes,
        "real_classes_seen": sorted(set(features.classes) & set(real.labels(corpus, "train"))),
        "eval": {"trained": trained, "untrained": untrained, **({"previous": previous["eval"]} if previous else {})},
        "levers": {name: {k: v for k, v in r.items() if k != "curves"} for name, r in lever_results.items()},
        "ship": {"better_on_validation": better, "validation_new": chosen,
                 "validation_previous": previous and previous["validation"]},
        "chance": {s: metrics.chance(len(splits[k]), data.CAPTIONS_PER_CLIP) for s, k in (("generated", "test"), ("real", "real_test"))},
        "previous_generated": card.previous_generated(out / "training_results.json"),
        "previous_real_zero_shot": card.previous_real_zero_shot(out / "training_results.json"),
        "curves": curves, "seconds": stages.seconds, "peak_rss_gb": stages.peak_rss_gb,
        "corpus_reused": bool(args.corpus), "cache_hits": cache_hits,
        "load_average": [round(load_start, 1), round(os.getloadavg()[0], 1)],
        "real_data_card": real.data_card(card.real_counts(corpus)),
    }
    (work / "results.json").write_text(json.dumps(results, indent=2))
    report(results)
    if args.quick:
        return 0
    if not better:
        print(f"the new heads score {validation_score(chosen):.3f} on validation, the committed ones "
              f"{validation_score(previous['validation']):.3f}: not shipped; card and heads in {work / 'candidate'}")
        out = work / "candidate"
    return card.write_outputs(results, out, heads)


class Stages:
    """Wall time and peak resident memory of each stage (this process and, separately, its finished workers)."""

    def __init__(self):
        self.start, self.seconds, self.peak_rss_gb = time.perf_counter(), {}, {}

    @contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - t, 1)
        self.seconds["total"] = round(time.perf_counter() - self.start, 1)
        self.peak_rss_gb[name] = {who: round(resource.getrusage(w).ru_maxrss / 1e6, 2)  # ru_maxrss is in kB on Linux
                                  for who, w in (("self", resource.RUSAGE_SELF), ("workers", resource.RUSAGE_CHILDREN))}


def evaluate_heads(heads: Path, work: Path, generated: Path, pad: str) -> int:
    """Score a heads file on the test splits with intervals, into WORKDIR/evaluation.json; nothing is trained."""
    stages = Stages()
    corpus = work / "corpus"
    with stages("corpus"):
        if not (corpus / "captions_real_test.csv").is_file():
            real.generate(corpus, seed=data.SEED, splits=("test",))
    model, tokenizer = base_model()
    with stages("features"):
        tests = data.test_sets(model, tokenizer, corpus, generated, work, pad)
    load_heads(model, heads)
    with stages("evaluation"):
        scores = evaluate_tests(model, tests)
    results = {"heads": str(heads), "clip_policy": model.config.clip_policy, "dims": list(model.config.matryoshka_dims),
               "real_classes": tests.zs[2], "real_labels": tests.zs[1], "counts": {"real_test": len(tests.zs[1])},
               "eval": {"heads": scores}, "seconds": stages.seconds, "peak_rss_gb": stages.peak_rss_gb}
    (work / "evaluation.json").write_text(json.dumps(results, indent=2))
    text = card.evaluation_markdown(results, {c["label"] for c in real.plan(data.SEED)["train"]})
    (work / "evaluation.md").write_text(text)
    print(text)
    return 0


def report(results: dict) -> None:
    """The headline figures on stdout."""
    ev, d = results["eval"]["trained"], str(results["dims"][0])
    print(json.dumps({"shipped_policy": results["shipped_policy"], "counts": results["counts"], "seconds": results["seconds"],
                      "real_zero_shot_top1": {p: ev["real"][p]["zero_shot"][d]["top1"] for p in data.POLICIES},
                      "generated_r1": {p: v["retrieval"][d] for p, v in ev["generated"].items()}}, indent=1))


def render_card(work: Path, out: Path) -> int:
    """Re-render the card from an earlier run's WORKDIR/results.json (the served policy re-chosen)."""
    results = json.loads((work / "results.json").read_text())
    results["shipped_policy"] = choose_policy(results["eval"]["trained"]["real"], results["recipe"]["clip_policy"],
                                              results["counts"]["real_test"], results["dims"][0])
    return card.write_outputs(results, out, None)


if __name__ == "__main__":
    sys.exit(main())
