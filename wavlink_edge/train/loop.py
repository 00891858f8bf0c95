"""The training loop: AdamW on the heads (heads.trainable_parameters), length-bucketed batches, one validation
pass per epoch, and the epoch count chosen on the validation curves."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from wavlink_edge.export.model import WavLinkModel
from wavlink_edge.train.data import CAPTIONS_PER_CLIP, SEED, FitSet
from wavlink_edge.train.heads import audio_vectors, matryoshka_clip_loss, trainable_parameters


@dataclass
class Recipe:
    epochs: int = 40  # the most; the count trained is chosen on validation (choose_epochs)
    batch_size: int = 128
    lr: float = 1e-4
    weight_decay: float = 0.01
    clip_policy: str = "trim"  # the policy the cached training states use
    real_repeats: int = 2  # real clips per epoch, relative to once: they are few and are what users record
    seed: int = SEED
    # levers (train/levers.py compares them on validation); the defaults are the recipe before they existed
    package_balance: float = 0.0  # real clips drawn with weight package_size ** -package_balance (0: each once a repeat)
    same_label_negatives: bool = True  # False: two real clips of one label are not each other's negatives


def real_pool(fit: FitSet, recipe: Recipe, rng: np.random.Generator) -> np.ndarray:
    """The real clips of one epoch, as rows of fit.clips: each `real_repeats` times, or (package_balance > 0) as many
    draws weighted so a large package does not dominate."""
    if recipe.package_balance == 0:
        return np.tile(np.arange(fit.n_generated, len(fit.clips)), recipe.real_repeats)
    _, package = np.unique(fit.real_packages, return_inverse=True)
    weight = np.bincount(package).astype(float)[package] ** -recipe.package_balance
    return fit.n_generated + rng.choice(fit.n_real, size=fit.n_real * recipe.real_repeats, p=weight / weight.sum())


def not_negative_pairs(fit: FitSet, idx: np.ndarray) -> torch.Tensor:
    """[B, B] True where two different real clips of the batch share a label (generated clips never do)."""
    n_gen = fit.n_generated
    labels = np.array([fit.real_labels[i - n_gen] if i >= n_gen else f"generated:{i}" for i in idx])
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    return torch.from_numpy(same)


def train(model: WavLinkModel, recipe: Recipe, fit: FitSet, validation, log=print) -> dict:
    """Returns per-epoch curves (`validation(model)`'s scores among them). Batches group clips of similar length so
    little padding is computed; the real recordings come `real_repeats` times per epoch (real_pool)."""
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    for p in model.parameters():
        p.requires_grad_(False)
    params = trainable_parameters(model)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    dims = list(model.config.matryoshka_dims)
    train_clips = fit.clips
    curves: dict[str, list] = {}
    start = time.perf_counter()
    for epoch in range(recipe.epochs):
        model.train()
        losses = []
        pool = np.concatenate([np.arange(fit.n_generated), real_pool(fit, recipe, rng)])
        # length buckets, re-drawn each epoch so repeated real clips meet different negatives
        jitter = rng.uniform(0, 20, size=len(pool))
        order = pool[np.argsort(train_clips.lengths[pool] + jitter, kind="stable")]
        batches = [order[i : i + recipe.batch_size] for i in range(0, len(order), recipe.batch_size)]
        for b in rng.permutation(len(batches)):
            idx = np.unique(batches[b])  # a clip twice in one batch would be its own negative
            if len(idx) < 2:
                continue
            caption = rng.integers(0, CAPTIONS_PER_CLIP, size=len(idx))
            text = model.text.projector(torch.from_numpy(fit.text[idx * CAPTIONS_PER_CLIP + caption]))
            loss = matryoshka_clip_loss(audio_vectors(model, train_clips, idx), text, model.logit_scale, dims,
                                        None if recipe.same_label_negatives else not_negative_pairs(fit, idx))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        model.eval()
        scores = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), **validation(model),
                  "seconds": time.perf_counter() - start}
        for key, value in scores.items():
            curves.setdefault(key, []).append(value)
        log(f"epoch {epoch + 1}/{recipe.epochs}: " + " ".join(f"{k} {v:.3f}" for k, v in list(scores.items())[1:]))
    return curves


def smoothed_score(curves: dict) -> np.ndarray:
    """Per epoch: real-validation zero-shot top-1 plus the generated split's mean R@1, averaged with the neighbouring
    epochs (one real validation clip is ~3 points)."""
    score = np.asarray(curves.get("real_val_zero_shot", 0.0)) + (np.asarray(curves["val_t2a_r1"]) + np.asarray(curves["val_a2t_r1"])) / 2
    return np.convolve(np.pad(score, 1, mode="edge"), np.ones(3) / 3, mode="valid")


def choose_epochs(curves: dict) -> int:
    """The epoch count with the best smoothed validation score; the later on ties."""
    smooth = smoothed_score(curves)
    return int(curves["epoch"][len(smooth) - 1 - int(np.argmax(smooth[::-1]))])
