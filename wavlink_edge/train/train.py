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
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run by path (`python train/train.py`): import the package of this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from wavlink_edge.export.backbones import DEMO_HEADS, load_heads
from wavlink_edge.train import card, data, metrics
from wavlink_edge.train.corpus import real
from wavlink_edge.train.evaluate import Validation, choose_policy, evaluate_tests
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
    parser.add_argument("--quick", "--tiny", action="store_true", help="tens of clips, a few epochs: the CI smoke run")
    parser.add_argument("--out", default=str(DEMO_HEADS.parent), help="where the heads, card and curves go")
    parser.add_argument("--render-card", action="store_true", help="only re-render the card from WORKDIR/results.json")
    parser.add_argument("--skip-generated-pad", action="store_true",
                        help="do not evaluate the generated split with 30 s padding (its features cost ~15 min here)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 when another job holds a core)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    work, out = Path(args.workdir), Path(args.out)
    if args.render_card:
        return render_card(work, out)
    load_start = os.getloadavg()[0]
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    seconds = {}
    corpus = Path(args.corpus) if args.corpus else work / "corpus"
    data.build_corpus(corpus, args.quick, args.n_train, args.n_test)
    seconds["corpus"] = time.perf_counter() - t0

    model, tokenizer = base_model()
    initial_state = {k: v.clone() for k, v in model.state_dict().items()}
    recipe = Recipe(epochs=3 if args.quick else args.epochs, batch_size=16 if args.quick else Recipe.batch_size,
                    real_repeats=args.real_repeats)
    t = time.perf_counter()
    cache_hits = sorted(f.name for f in work.glob("frames_*.npz"))  # features an earlier run computed
    splits, states = data.audio_features(model, corpus, work, generated_pad=not args.skip_generated_pad)
    seconds["audio_features"] = time.perf_counter() - t
    t = time.perf_counter()
    features = data.text_features(model, tokenizer, corpus, work, splits, states)
    seconds["text_features"] = time.perf_counter() - t
    sets = data.TrainingSets(features, model.audio.layers[-1])

    untrained = evaluate_tests(model, sets)
    t = time.perf_counter()
    # The epoch count is chosen with the validation files held out; the shipped heads are then trained afresh on
    # every train file for that many epochs (the validation files are a fifth of the scarce real sound events).
    selection = train(model, recipe, *sets.fit(np.flatnonzero(~features.held_out)), Validation(*sets.gen_val, real=sets.real_val))
    final_recipe = replace(recipe, epochs=choose_epochs(selection))
    model.load_state_dict(initial_state)
    curves = train(model, final_recipe, *sets.fit(np.arange(len(splits["real_train"]))), Validation(*sets.gen_val))
    seconds["train"] = time.perf_counter() - t
    # Evaluate what ships: the fp16-rounded heads loaded back into the frozen backbones.
    heads = save_heads(model, final_recipe, recipe.clip_policy, work / "heads.safetensors")
    model.load_state_dict(initial_state)
    load_heads(model, heads)
    trained = evaluate_tests(model, sets)
    shipped = choose_policy(trained["real"], recipe.clip_policy, len(splits["real_test"]), model.config.embed_dim)
    heads = save_heads(model, final_recipe, shipped, work / "heads.safetensors")
    seconds["total"] = time.perf_counter() - t0

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
        "eval": {"trained": trained, "untrained": untrained},
        "chance": {s: metrics.chance(len(splits[k]), data.CAPTIONS_PER_CLIP) for s, k in (("generated", "test"), ("real", "real_test"))},
        "previous_generated": card.previous_generated(out / "training_results.json"),
        "previous_real_zero_shot": card.previous_real_zero_shot(out / "training_results.json"),
        "curves": curves, "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "corpus_reused": bool(args.corpus), "cache_hits": cache_hits,
        "load_average": [round(load_start, 1), round(os.getloadavg()[0], 1)],
        "real_data_card": real.data_card(card.real_counts(corpus)),
    }
    (work / "results.json").write_text(json.dumps(results, indent=2))
    report(results)
    return 0 if args.quick else card.write_outputs(results, out, heads)


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
