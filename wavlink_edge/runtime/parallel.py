"""All cores of one host: ``embed --workers N`` runs N processes, each with its own model and sessions.

One ORT session already uses every core for one encoder run, but a run leaves cores idle (decoding, the
numpy front end, small trimmed clips, synchronisation between ops); N processes with cores/N threads each
keep them busy. Inputs go out in chunks of ``batch_size`` items and come back in input order (``imap``),
so the rows, the interrupt behaviour (finished rows stay) and ``--resume`` are those of one worker.
Processes are spawned, not forked: a fork would copy the parent's ORT thread pools mid-state.
fp32 and fp16 give the same vectors in any batch (bench/scale.py checks); dynamic INT8 quantises each
batch with its own scale, so its vectors follow the chunking unless ``--batch-size 1``.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from wavlink_edge.runtime.audio import describe_source
from wavlink_edge.runtime.errors import UsageError
from wavlink_edge.runtime.model import WavLink

_WORKER: dict = {}  # this worker process's model, dim and batch size


def host_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    """An equal share of the cores this process may use (at least one)."""
    return max(1, host_cores() // workers)


def _start_worker(model_dir: str, options: dict, dim: int | None, batch_size: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the pool
    _WORKER.update(model=WavLink.from_pretrained(model_dir, **options), dim=dim, batch_size=batch_size)


def _embed_chunk(chunk: list) -> list[tuple[str, np.ndarray | None, str | None]]:
    model = _WORKER["model"]
    return [(r.source, r.embedding, r.error)
            for r in model.iter_embed_audio(chunk, dim=_WORKER["dim"], batch_size=_WORKER["batch_size"])]


def embed_parallel(model_dir: str | Path, items: Sequence, workers: int = 1, batch_size: int = 8,
                   dim: int | None = None, precision: str = "fp32", providers=None, clip_policy: str | None = None,
                   window_hop_seconds: float | None = None, threads: int | None = None,
                   model: WavLink | None = None) -> Iterator[tuple[str, np.ndarray | None, str | None]]:
    """(source, embedding, error) for every item, in input order, embedded by ``workers`` processes.

    ``workers == 1`` runs in this process (on ``model`` if given). Each process opens ``model_dir`` with
    ``threads`` ORT threads (default: the cores shared out equally). A worker that dies takes the job
    with it (an exception here), never silently drops rows.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UsageError(f"workers must be a positive integer, got {workers!r}")
    options = {"precision": precision, "providers": providers, "clip_policy": clip_policy,
               "window_hop_seconds": window_hop_seconds, "threads": threads or threads_per_worker(workers)}
    items = list(items)
    if workers == 1 or len(items) <= batch_size:
        model = model or WavLink.from_pretrained(model_dir, **options)
        for r in model.iter_embed_audio(items, dim=dim, batch_size=batch_size):
            yield r.source, r.embedding, r.error
        return
    chunks = [items[start:start + batch_size] for start in range(0, len(items), batch_size)]
    pool = multiprocessing.get_context("spawn").Pool(min(workers, len(chunks)), _start_worker,
                                                     (str(model_dir), options, dim, batch_size))
    try:
        position = 0
        for chunk_rows in pool.imap(_embed_chunk, chunks):
            for local_name, embedding, error in chunk_rows:
                # An array item is named by its position ("array[3] ..."): in a chunk, the chunk's position.
                source = describe_source(items[position], position)
                yield source, embedding, error.replace(local_name, source, 1) if error else None
                position += 1
        pool.close()
    finally:
        pool.terminate()
        pool.join()


# -- command line (hooked into runtime/cli.py's embed) -----------------------------------------------------


def add_options(parser: argparse.ArgumentParser, positive_int) -> None:
    parser.add_argument("--workers", type=positive_int, default=1,
                        help="processes, each with its own session and cores/N threads (default 1)")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="ray: a Ray Data pipeline writing Parquet (pip install 'wavlink-edge[ray]')")
    parser.add_argument("--ray-address", default=None,
                        help="with --engine ray: an existing cluster (ray://host:10001 or auto); default a local Ray")


def cli_results(args: argparse.Namespace, paths: list[str]):
    """embed's rows from ``--workers`` processes."""
    return embed_parallel(args.model, paths, workers=args.workers, batch_size=args.batch_size, dim=args.dim,
                          precision=args.precision, providers=args.providers, clip_policy=args.clip_policy,
                          window_hop_seconds=args.hop)
