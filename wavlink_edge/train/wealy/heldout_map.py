"""Held-out version matching of the served lyrics model at each precision: the test songs of the
versions corpus embedded end to end by the runtime (`Lyrics.from_pretrained(..., precision=P)`: its own
greedy decoding, its own head), MAP / MR1 / P@1 as in `train.py`, and how many greedy tokens each
precision shares with fp32.

    python -m wavlink_edge.train.wealy.heldout_map --corpus DIR --model EXPORT [--precision fp32,int8]
        [--songs 36] [--out results.json]

Only the test clips of the first `--songs` songs are rendered (missing ones are generated here, as
`corpus.py` would); 36 songs are the ones `train.py` was run on (docs/wealy.md).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from wavlink_edge.quantization.lyrics import edit_distance
from wavlink_edge.runtime.lyrics import Lyrics

from .corpus import plan, render_missing
from .train import version_metrics


def test_clips(corpus: Path, songs: int, n_songs: int = 60, versions: int = 5, n_test: int = 20, seed: int = 0):
    """The test versions of the first `songs` songs (the plan `corpus.generate` writes), rendered if missing."""
    corpus.mkdir(parents=True, exist_ok=True)
    chosen = [v for v in plan(n_songs, versions, n_test, seed) if v.split == "test" and v.song < songs]
    render_missing(corpus, chosen, seed)
    return chosen


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--precision", default="fp32,int8")
    parser.add_argument("--songs", type=int, default=36)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    clips = test_clips(Path(args.corpus), args.songs)
    paths = [str(Path(args.corpus) / f"{v.clip}.flac") for v in clips]
    songs = np.array([v.song for v in clips])
    results = {"songs": len(set(songs.tolist())), "clips": len(clips), "precisions": {}}
    tokens = {}
    for precision in [p.strip() for p in args.precision.split(",") if p.strip()]:
        model = Lyrics.from_pretrained(args.model, threads=args.threads, precision=precision)
        t = time.perf_counter()
        rows, tokens[precision] = [], []
        for path in paths:
            decoded = model.decode(path)
            rows.append(model.embed_states(np.concatenate([d.states for d in decoded])))
            tokens[precision].append([t for d in decoded for t in d.tokens])
        metrics = {k: round(v, 4) for k, v in version_metrics(np.stack(rows), songs).items()}
        results["precisions"][precision] = {**metrics, "seconds": round(time.perf_counter() - t, 1)}
        if precision != "fp32" and "fp32" in tokens:
            diffs = [edit_distance(a, b) for a, b in zip(tokens["fp32"], tokens[precision])]
            results["precisions"][precision]["tokens_vs_fp32"] = {
                "identical_clips": sum(d == 0 for d in diffs), "differing_tokens": int(sum(diffs)),
                "fp32_tokens": sum(len(x) for x in tokens["fp32"])}
        print(precision, json.dumps(results["precisions"][precision]), flush=True)
    results["seconds"] = round(time.perf_counter() - start, 1)
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
