"""Retrieval / zero-shot metrics and fidelity to the reference, on L2-normalised embeddings (numpy only).

Conventions (Clotho / AudioCaps protocol): T2A has one relevant clip per caption; A2T counts a hit if any of the
clip's captions is in the top k. mAP@10 = mean over queries of AP@10 = sum_{k<=10} P@k * rel_k /
min(#relevant, 10). Ties rank against the target (a tie with the target counts as above it).
"""
from __future__ import annotations

import math

import numpy as np

KS = (1, 5, 10)


def _ranked_hits(sim: np.ndarray, relevant: np.ndarray, k: int = 10) -> np.ndarray:
    """hits[q, j] = whether the j-th ranked candidate of query q is relevant. relevant: bool [Q, C]."""
    k = min(k, sim.shape[1])
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(relevant, top, axis=1)


def _recall_map(sim: np.ndarray, relevant: np.ndarray, prefix: str) -> dict:
    hits = _ranked_hits(sim, relevant)
    out = {f"{prefix}_r{k}": float(hits[:, :k].any(axis=1).mean()) for k in KS}
    precision_at = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
    n_rel = np.minimum(relevant.sum(axis=1), 10)
    out[f"{prefix}_map10"] = float(((precision_at * hits).sum(axis=1) / np.maximum(n_rel, 1)).mean())
    return out


def retrieval(audio: np.ndarray, text: np.ndarray, owner: np.ndarray) -> dict:
    """T2A and A2T R@1/5/10 and mAP@10. owner[t] = index of the clip caption t describes."""
    sim = text @ audio.T  # [texts, clips]
    relevant = owner[:, None] == np.arange(audio.shape[0])[None, :]
    return {**_recall_map(sim, relevant, "t2a"), **_recall_map(sim.T, relevant.T, "a2t")}


BOOTSTRAP = 1000  # resamples behind every 95 % interval


def bootstrap_interval(statistic, n: int, seed: int = 0) -> list[float]:
    """95 % percentile interval of statistic(idx) over BOOTSTRAP resamples (with replacement) of n items."""
    rng = np.random.default_rng(seed)
    values = [statistic(rng.integers(0, n, n)) for _ in range(BOOTSTRAP)]
    return [float(v) for v in np.percentile(values, [2.5, 97.5])]


def recall(audio: np.ndarray, text: np.ndarray, per_clip: int, ks=KS, interval: bool = False) -> dict:
    """{'t2a': {'R@k': ...}, 'a2t': {...}} for text rows that come `per_clip` to a clip, in clip order; with
    interval, also 'R@k_ci': the bootstrap 95 % interval over clips (a clip drawn brings its captions; the ranking
    is not redone)."""
    owner = np.arange(text.shape[0]) // per_clip
    metrics = retrieval(audio, text, owner)
    out = {d: {f"R@{k}": metrics[f"{d}_r{k}"] for k in ks} for d in ("t2a", "a2t")}
    if interval:
        sim = text @ audio.T
        relevant = owner[:, None] == np.arange(audio.shape[0])[None, :]
        hits = {"t2a": _ranked_hits(sim, relevant).reshape(audio.shape[0], per_clip, -1),
                "a2t": _ranked_hits(sim.T, relevant.T)[:, None, :]}
        for d, h in hits.items():
            for k in ks:
                found = h[:, :, :k].any(axis=2)  # [clips, queries of that clip]
                out[d][f"R@{k}_ci"] = bootstrap_interval(lambda idx, found=found: found[idx].mean(), len(found))
    return out


def chance(n_clips: int, per_clip: int, ks=KS) -> dict:
    """recall()'s expected value for random embeddings."""
    n_caps = n_clips * per_clip
    a2t = {f"R@{k}": 1 - math.comb(n_caps - per_clip, k) / math.comb(n_caps, k) if k <= n_caps else 1.0 for k in ks}
    return {"t2a": {f"R@{k}": min(1.0, k / n_clips) for k in ks}, "a2t": a2t}


def zero_shot(audio: np.ndarray, prompts: np.ndarray, labels: list[str], classes: list[str], interval: bool = False) -> dict:
    """ESC-50 style: each clip's top-1 class (rows of `prompts`); accuracy over clips and mean over classes; with
    interval, their bootstrap 95 % intervals over clips ('top1_ci', 'balanced_top1_ci')."""
    target = np.array([classes.index(lab) for lab in labels])
    top = np.argmax(audio @ prompts.T, axis=1)
    per_class = {c: float((top[target == i] == i).mean()) for i, c in enumerate(classes)}
    out = {"top1": float((top == target).mean()), "balanced_top1": float(np.mean(list(per_class.values()))),
           "per_class": per_class, "predicted": [classes[i] for i in top]}
    if interval:
        right = top == target
        out["top1_ci"] = bootstrap_interval(lambda idx: right[idx].mean(), len(right))
        out["balanced_top1_ci"] = bootstrap_interval(lambda idx: balanced(right[idx], target[idx]), len(right))
    return out


def balanced(right: np.ndarray, target: np.ndarray) -> float:
    """Mean over the classes present of each class's accuracy."""
    counts = np.bincount(target)
    present = counts > 0
    return float((np.bincount(target, weights=right)[present] / counts[present]).mean())


def classification(audio: np.ndarray, prompts: np.ndarray, labels: np.ndarray) -> dict:
    sim = audio @ prompts.T
    top = np.argsort(-sim, axis=1, kind="stable")[:, :5]
    return {"top1": float((top[:, 0] == labels).mean()), "top5": float((top == labels[:, None]).any(axis=1).mean())}


def top1(queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    return np.argmax(queries @ candidates.T, axis=1)


def cosine_stats(a: np.ndarray, ref: np.ndarray, tower: str) -> dict:
    cos = np.sum(a * ref, axis=1)  # both normalised
    return {f"{tower}_cosine_mean": float(cos.mean()), f"{tower}_cosine_min": float(cos.min()),
            f"{tower}_cosine_p01": float(np.percentile(cos, 1))}


def fidelity(audio: np.ndarray, text: np.ndarray, ref_audio: np.ndarray, ref_text: np.ndarray, task: str) -> dict:
    """Per-item cosine to the reference and agreement of top-1 retrievals with the reference's."""
    out = {**cosine_stats(audio, ref_audio, "audio"), **cosine_stats(text, ref_text, "text")}
    if task == "retrieval":
        out["t2a_top1_agreement"] = float((top1(text, audio) == top1(ref_text, ref_audio)).mean())
        out["a2t_top1_agreement"] = float((top1(audio, text) == top1(ref_audio, ref_text)).mean())
    else:
        out["top1_agreement"] = float((top1(audio, text) == top1(ref_audio, ref_text)).mean())
    return out
