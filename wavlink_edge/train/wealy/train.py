"""Train the WEALY head on cached decoder states (NT-Xent, tau 0.1) and evaluate version matching on
held-out songs against Whisper-AvgEmb, transcription -> text tower, the WavLink audio embedding and the
late fusion of lyrics and audio.

    python -m wavlink_edge.train.wealy.train --corpus DIR --cache DIR --model EXPORT [--out HEAD.safetensors]

Songs of the train split are cut into train and validation songs; the step count and the fusion
weight are chosen on validation, then the head is retrained on all train songs for that many steps.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from wavlink_edge.export.wealy import HEAD_WEIGHTS, HeadDims, WealyHead, round_to_stored, save_head
from wavlink_edge.runtime.model import WavLink
from wavlink_edge.runtime.vectors import normalize

from . import cache as state_cache
from .corpus import load

TAU = 0.1
FUSION_WEIGHTS = tuple(np.round(np.linspace(0, 1, 11), 2))


def version_metrics(embeddings: np.ndarray, songs: np.ndarray) -> dict:
    """Each clip queries all others: MAP over the full ranking, MR1 (mean rank of the first version of
    the same song, 1 = best) and P@1."""
    return rank_metrics(normalize(embeddings) @ normalize(embeddings).T, songs)


def rank_metrics(sim: np.ndarray, songs: np.ndarray) -> dict:
    sim = sim.astype(np.float64).copy()
    np.fill_diagonal(sim, -np.inf)
    order = np.argsort(-sim, axis=1, kind="stable")[:, :-1]  # the query itself ranks last; drop it
    hits = songs[order] == songs[:, None]
    ranks = np.arange(1, hits.shape[1] + 1)
    ap = (np.cumsum(hits, axis=1) / ranks * hits).sum(1) / np.maximum(hits.sum(1), 1)
    return {"MAP": float(ap.mean()), "MR1": float((hits.argmax(1) + 1).mean()), "P@1": float(hits[:, 0].mean())}


def nt_xent(a: torch.Tensor, b: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """SimCLR's loss over 2N views: a[i] and b[i] are versions of one song, every other view a negative."""
    z = torch.cat([a, b])
    sim = z @ z.T / tau
    sim.fill_diagonal_(float("-inf"))
    n = len(a)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(sim, target)


def _batch(states: list[np.ndarray], rng: np.random.Generator, crop: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded [B, m, d] and mask, each item a random contiguous subsequence of >= crop of its states
    (WEALY trains on random subsequences)."""
    crops = []
    for s in states:
        keep = max(1, int(np.ceil(len(s) * rng.uniform(crop, 1.0))))
        start = int(rng.integers(0, len(s) - keep + 1))
        crops.append(s[start : start + keep])
    m = max(len(c) for c in crops)
    x = np.zeros((len(crops), m, crops[0].shape[1]), np.float32)
    mask = np.zeros((len(crops), m), bool)
    for i, c in enumerate(crops):
        x[i, : len(c)], mask[i, : len(c)] = c, True
    return torch.from_numpy(x), torch.from_numpy(mask)


def embed(head: WealyHead, states: list[np.ndarray]) -> np.ndarray:
    head.eval()
    with torch.no_grad():
        return np.stack([head(torch.from_numpy(s)[None])[0].numpy() for s in states])


def train_head(states: dict[int, list[np.ndarray]], steps: int, seed: int = 0, songs_per_batch: int = 16,
               lr: float = 3e-4, crop: float = 0.6, eval_every: int = 0, eval_fn=None) -> tuple[WealyHead, list]:
    """NT-Xent on pairs of versions of `songs_per_batch` songs; `eval_fn(head)` every `eval_every` steps."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    head = WealyHead(HeadDims())
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.05)
    songs = sorted(states)
    history = []
    for step in range(1, steps + 1):
        head.train()
        chosen = rng.choice(songs, size=min(songs_per_batch, len(songs)), replace=False)
        pairs = [rng.choice(len(states[s]), size=2, replace=False) for s in chosen]
        a = head(*_batch([states[s][i] for s, (i, _) in zip(chosen, pairs)], rng, crop))
        b = head(*_batch([states[s][j] for s, (_, j) in zip(chosen, pairs)], rng, crop))
        loss = nt_xent(a, b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if eval_every and step % eval_every == 0:
            history.append({"step": step, "loss": round(float(loss.detach()), 4), **eval_fn(head)})
    return head, history


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--model", required=True, help="export directory (WavLink towers for the baselines)")
    parser.add_argument("--out", default=str(HEAD_WEIGHTS))
    parser.add_argument("--results", default=str(Path(__file__).parent / "results.json"))
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--val-songs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny matrices: OpenMP threads only spin on a shared machine
    start = time.perf_counter()
    corpus = Path(args.corpus)
    versions = [v for v in load(corpus) if (Path(args.cache) / f"{v.clip}.npz").is_file()]
    cached = {v.clip: state_cache.read(args.cache, v.clip) for v in versions}
    rng = np.random.default_rng(args.seed)
    train_songs = sorted({v.song for v in versions if v.split == "train"})
    val_songs = set(rng.permutation(train_songs)[: args.val_songs].tolist())
    groups = {"test": [v for v in versions if v.split == "test"],
              "val": [v for v in versions if v.song in val_songs],
              "fit": [v for v in versions if v.split == "train" and v.song not in val_songs]}

    def by_song(vs):
        out = {}
        for v in vs:
            out.setdefault(v.song, []).append(cached[v.clip]["states"])
        return {s: x for s, x in out.items() if len(x) >= 2}

    wavlink = WavLink.from_pretrained(args.model, clip_policy="trim")
    features = {}
    for name in ("val", "test"):
        vs = groups[name]
        features[name] = {
            "songs": np.array([v.song for v in vs]),
            "states": [cached[v.clip]["states"] for v in vs],
            "avg": np.stack([cached[v.clip]["states"].mean(0) for v in vs]),
            "text": wavlink.embed_text([cached[v.clip]["text"] for v in vs]),
            "audio": wavlink.embed_audio([str(corpus / f"{v.clip}.flac") for v in vs]),
        }

    def scores(head, name):
        f = features[name]
        return {"MAP": version_metrics(embed(head, f["states"]), f["songs"])["MAP"]}

    steps_every = max(1, args.steps // 12)
    _, history = train_head(by_song(groups["fit"]), args.steps, args.seed, eval_every=steps_every,
                            eval_fn=lambda h: scores(h, "val"))
    best = max(history, key=lambda r: r["MAP"])
    head, _ = train_head(by_song(groups["fit"] + groups["val"]), best["step"], args.seed)
    head = round_to_stored(head)
    results = {"songs": {k: len({v.song for v in g}) for k, g in groups.items()},
               "clips": {k: len(g) for k, g in groups.items()}, "tau": TAU, "steps": best["step"],
               "validation_history": history}
    for name in ("val", "test"):
        f = features[name]
        lyrics = embed(head, f["states"])
        results[name] = {
            "wealy": version_metrics(lyrics, f["songs"]),
            "whisper_avgemb": version_metrics(f["avg"], f["songs"]),
            "transcript_text_tower": version_metrics(f["text"], f["songs"]),
            "wavlink_audio": version_metrics(f["audio"], f["songs"]),
            "fusion_map_by_weight": {str(w): rank_metrics(w * lyrics @ lyrics.T + (1 - w) * f["audio"] @ f["audio"].T,
                                                          f["songs"])["MAP"] for w in FUSION_WEIGHTS},
        }
    weight = max(FUSION_WEIGHTS, key=lambda w: results["val"]["fusion_map_by_weight"][str(w)])
    f, lyrics = features["test"], embed(head, features["test"]["states"])
    results["fusion_weight_from_val"] = float(weight)
    results["test"]["fusion"] = rank_metrics(weight * lyrics @ lyrics.T + (1 - weight) * f["audio"] @ f["audio"].T, f["songs"])
    results["seconds"] = round(time.perf_counter() - start, 1)
    save_head(head, args.out, name="wealy-base-demo", steps=best["step"], tau=TAU, corpus="train/wealy/corpus.py",
              fusion_weight=weight, test_map=round(results["test"]["wealy"]["MAP"], 4))
    Path(args.results).write_text(json.dumps(results, indent=1))
    print(json.dumps({k: results["test"][k] for k in ("wealy", "whisper_avgemb", "transcript_text_tower",
                                                       "wavlink_audio", "fusion")}, indent=1))


if __name__ == "__main__":
    main()
