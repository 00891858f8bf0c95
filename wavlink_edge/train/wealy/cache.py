"""Decode every clip of a versions corpus once with the exported lyrics model and cache what training and
evaluation need: the final decoder states, the greedy tokens, the language and the transcript.

    python -m wavlink_edge.train.wealy.cache --corpus DIR --model EXPORT --out CACHE [--workers 2]

One `<clip>.npz` per clip (a killed run resumes where it stopped), song by song.
Greedy decoding of whisper-base dominates (seconds per clip on two cores), hence the cache.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np

from wavlink_edge.runtime.lyrics import Lyrics

from .corpus import load


def _decode_all(args) -> int:
    model_dir, clips, out = args
    model = Lyrics.from_pretrained(model_dir, threads=1)
    for path in clips:
        target = Path(out) / f"{Path(path).stem}.npz"
        if target.is_file():
            continue
        decoded = model.decode(path)
        np.savez(target.with_suffix(".tmp.npz"), states=np.concatenate([d.states for d in decoded]),
                 tokens=np.array([t for d in decoded for t in d.tokens], np.int64),
                 language=np.array(model.language_code(decoded[0].language)), text=np.array(model.text(decoded)))
        target.with_suffix(".tmp.npz").rename(target)
    return len(clips)


def cache(corpus: str | Path, model_dir: str | Path, out: str | Path, workers: int = 2) -> None:
    corpus, out = Path(corpus), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    versions = sorted(load(corpus), key=lambda v: v.clip)  # song by song: a cut-short run holds both splits
    clips = [str(corpus / f"{v.clip}.flac") for v in versions]
    start = time.perf_counter()
    jobs = [(str(model_dir), clips[i::workers], str(out)) for i in range(workers)]  # interleaved: songs finish in order
    # a fork server, not fork: a fork copies the caller's other threads' locks as they stand (train/corpus/generate.py)
    with mp.get_context("forkserver").Pool(workers) as pool:
        pool.map(_decode_all, jobs)
    print(f"decoded {len(clips)} clips in {time.perf_counter() - start:.0f} s ({workers} workers, 1 thread each)")


def read(out: str | Path, clip: str) -> dict:
    with np.load(Path(out) / f"{clip}.npz") as z:
        return {"states": z["states"], "tokens": z["tokens"], "language": str(z["language"]), "text": str(z["text"])}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--model", required=True, help="export directory written with to_onnx.py --lyrics")
    parser.add_argument("--out", required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    cache(args.corpus, args.model, args.out, args.workers)


if __name__ == "__main__":
    main()
