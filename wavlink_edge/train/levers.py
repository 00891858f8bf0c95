"""Recipe levers compared on validation before the shipped heads are trained: each is a change to the Recipe, trained
from the same starting point on the same rows for the same epochs; the one with the best smoothed validation score
(loop.smoothed_score) is the recipe that ships, and its curves choose the epoch count. The test splits are not read.
"""
from __future__ import annotations

from dataclasses import replace

from wavlink_edge.train.loop import Recipe, choose_epochs, smoothed_score, train

LEVERS = {
    "as before": {},
    "package-balanced sampling": {"package_balance": 0.5},
    "same label not a negative": {"same_label_negatives": False},
    "both": {"package_balance": 0.5, "same_label_negatives": False},
    "real clips 4x, same label not a negative": {"real_repeats": 4, "same_label_negatives": False},
}


def compare(model, initial_state: dict, recipe: Recipe, fit, validation, levers: dict = LEVERS, log=print) -> dict:
    """{lever: {"change", "curves", "best_score", "best_epoch"}}, each trained for recipe.epochs from initial_state."""
    results = {}
    for name, change in levers.items():
        log(f"lever '{name}': {change or 'the recipe as it was'}")
        model.load_state_dict(initial_state)
        curves = train(model, replace(recipe, **change), fit, validation, log)
        best_epoch = choose_epochs(curves)
        results[name] = {"change": change, "curves": curves, "best_epoch": best_epoch,
                         "best_score": float(smoothed_score(curves)[curves["epoch"].index(best_epoch)])}
    model.load_state_dict(initial_state)
    return results


def chosen(results: dict) -> str:
    """The lever with the best score; the earlier-listed one on ties (the simpler recipe)."""
    return max(results, key=lambda name: (results[name]["best_score"], -list(results).index(name)))
