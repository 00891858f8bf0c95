"""Retrieval / zero-shot metrics and fidelity to the reference, on L2-normalised embeddings (numpy only).

Conventions (Clotho / AudioCaps protocol): T2A has one relevant clip per caption; A2T counts a hit if any of the
clip's captions is in the top k. mAP@10 = mean over queries of AP@10 = sum_{k<=10} P@k * rel_k /
min(#relevant, 10). Ties rank against the target (a tie with the target counts as above it).
"""
from __future__ import annotations

import numpy as np

from wavlink_edge.runtime.vectors import truncate  # noqa: F401  (bench truncates through here)

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
