"""All cores of one host: ``embed --workers N`` runs N processes, each with its own model and sessions.

One ORT session already uses every core for one encoder run, but a run leaves cores idle (decoding, the
numpy front end, small trimmed clips, synchronisation between ops); N processes with cores/N threads each
keep them busy. Inputs go out in chunks of ``batch_size`` items, one chunk per worker at a time, and come
back in input order, so the rows, the interrupt behaviour (finished rows stay) and ``--resume`` are those
of one worker. The parent watches every worker's process: one that dies (the out-of-memory killer's
SIGKILL) turns the chunk it held into error rows naming it, and a fresh worker takes its place -- no
hang, and the output lock is released as usual when the run ends. ``--workers`` is capped by the cores
and the available memory, with a line saying so.
Processes are spawned, not forked: a fork would copy the parent's ORT thread pools mid-state.
fp32 and fp16 give the same vectors in any batch (bench/scale.py checks); dynamic INT8 quantises each
batch with its own scale, so its vectors follow the chunking unless ``--batch-size 1``.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from multiprocessing.connection import wait
from pathlib import Path

import numpy as np

from wavlink_edge.runtime.audio import describe_source
from wavlink_edge.runtime.errors import UsageError, WavLinkError
from wavlink_edge.runtime.files import hold_point
from wavlink_edge.runtime.manifest import Manifest
from wavlink_edge.runtime.model import WavLink

# A worker's memory beyond its model: the interpreter, numpy, onnxruntime and its arenas, a batch of features.
WORKER_BASE_BYTES = 400 << 20
# ORT holds the graph's weights plus its own copy while it optimises them.
MODEL_COPIES = 2


def host_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    """An equal share of the cores this process may use (at least one)."""
    return max(1, host_cores() // workers)


def available_memory() -> int | None:
    """Bytes the kernel says can be used without swapping (MemAvailable), or None off Linux."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def worker_bytes(model_dir: str | Path, precision: str) -> int:
    """What one worker is expected to hold: the audio graph of ``precision`` (as the manifest records its
    size) twice, plus the interpreter and ORT. Unknown sizes count as the base only."""
    try:
        manifest = Manifest.load(model_dir)
        artifact = manifest.find_artifact("audio", precision)
        size = int(manifest.files[artifact.file].get("bytes") or 0)
    except (WavLinkError, OSError, ValueError, KeyError):
        size = 0
    return WORKER_BASE_BYTES + MODEL_COPIES * size


def cap_workers(requested: int, model_dir: str | Path, precision: str = "fp32", chunks: int | None = None,
                notify=lambda message: print(message, file=sys.stderr)) -> int:
    """``requested`` workers, at most one per core, as many as the available memory holds (at least one),
    and no more than there are chunks of work; a line says when and why fewer start."""
    cores = host_cores()
    limits = {f"{cores} core{'s' if cores != 1 else ''} here (more processes than cores only compete)": cores}
    memory = available_memory()
    if memory is not None:
        each = worker_bytes(model_dir, precision)
        limits[f"{memory / 1e9:.1f} GB of memory available, about {each / 1e9:.2f} GB per worker"] = max(1, memory // each)
    reason, cap = min(limits.items(), key=lambda item: item[1])
    workers = min(requested, cap)
    if workers < requested:
        notify(f"--workers {requested} capped at {workers}: {reason}")
    if chunks is not None:
        workers = max(1, min(workers, chunks))  # more would only start and stop: not worth a line
    return workers


def _worker_main(conn, model_dir: str, options: dict, dim: int | None, batch_size: int) -> None:
    """One worker process: load the model, then embed each (chunk id, items) the parent sends until None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the workers
    try:
        model = WavLink.from_pretrained(model_dir, **options)
    except Exception as exc:  # the parent stops the run with this line
        conn.send(("fatal", None, f"{type(exc).__name__}: {exc}" if not isinstance(exc, WavLinkError) else str(exc)))
        return
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return  # the parent is gone
        if task is None:
            return
        chunk_id, chunk = task
        hold_point("worker-chunk")
        rows = [(r.source, r.embedding, r.error)
                for r in model.iter_embed_audio(chunk, dim=dim, batch_size=batch_size)]
        conn.send(("rows", chunk_id, rows))


class _Worker:
    def __init__(self, context, args: tuple):
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child, *args), daemon=True)
        self.process.start()
        child.close()
        self.chunk: int | None = None

    def give(self, chunk_id: int | None, chunk: list | None) -> None:
        self.chunk = chunk_id
        try:
            self.conn.send(None if chunk_id is None else (chunk_id, chunk))
        except OSError:
            pass  # it died already: its sentinel tells, and the chunk it was given is reported with it

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()


def _death(process) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}" + (" (as the out-of-memory killer does)" if -code == signal.SIGKILL else "")
    return f"exited with status {code}"


def embed_parallel(model_dir: str | Path, items: Sequence, workers: int = 1, batch_size: int = 8,
                   dim: int | None = None, precision: str = "fp32", providers=None, clip_policy: str | None = None,
                   window_hop_seconds: float | None = None, threads: int | None = None,
                   model: WavLink | None = None,
                   notify=lambda message: print(message, file=sys.stderr)) -> Iterator[tuple[str, np.ndarray | None, str | None]]:
    """(source, embedding, error) for every item, in input order, embedded by ``workers`` processes.

    ``workers == 1`` runs in this process (on ``model`` if given). More are capped by cores and memory
    (``cap_workers``, said through ``notify``). Each process opens ``model_dir`` with ``threads`` ORT
    threads (default: the cores shared out equally) and is handed one chunk of ``batch_size`` items at a
    time. A worker that dies (killed, out of memory, crashed) is seen at once (its process sentinel): each
    input of the chunk it held becomes an error row naming the death, a line names them all, a fresh
    worker takes its place and the run finishes the rest. A worker that cannot open the model stops the
    run with its error (a WavLinkError here).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UsageError(f"workers must be a positive integer, got {workers!r}")
    items = list(items)
    chunks = [items[start:start + batch_size] for start in range(0, len(items), batch_size)]
    if workers > 1:
        workers = cap_workers(workers, model_dir, precision, len(chunks), notify)
    options = {"precision": precision, "providers": providers, "clip_policy": clip_policy,
               "window_hop_seconds": window_hop_seconds, "threads": threads or threads_per_worker(workers)}
    if workers == 1:
        model = model or WavLink.from_pretrained(model_dir, **options)
        for r in model.iter_embed_audio(items, dim=dim, batch_size=batch_size):
            yield r.source, r.embedding, r.error
        return
    context = multiprocessing.get_context("spawn")  # not fork: a fork copies the parent's ORT thread pools mid-state
    args = (str(model_dir), options, dim, batch_size)
    pool: list[_Worker] = []
    results: dict[int, list] = {}
    next_chunk = next_out = 0
    try:
        for _ in range(workers):
            pool.append(_Worker(context, args))
            pool[-1].give(next_chunk, chunks[next_chunk])
            next_chunk += 1
        while next_out < len(chunks):
            while next_out in results:
                start = next_out * batch_size
                for offset, (local_name, embedding, error) in enumerate(results.pop(next_out)):
                    # An array item is named by its position ("array[3] ..."): in a chunk, the chunk's position.
                    source = describe_source(items[start + offset], start + offset)
                    yield source, embedding, error.replace(local_name, source, 1) if error else None
                next_out += 1
            if next_out == len(chunks):
                break
            busy = [w for w in pool if w.chunk is not None]
            ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy]))
            for worker in busy:
                message = None
                if worker.conn in ready:
                    try:
                        message = worker.conn.recv()
                    except (EOFError, OSError):
                        message = None
                if message is not None:
                    kind, chunk_id, payload = message
                    if kind == "fatal":
                        raise WavLinkError(f"a worker could not open {model_dir}: {payload}")
                    results[chunk_id] = payload
                elif worker.process.sentinel in ready or worker.conn in ready:
                    worker.process.join()
                    results[worker.chunk] = _lost_chunk(items, worker.chunk * batch_size, chunks[worker.chunk],
                                                        worker.process, notify)
                    worker.stop()
                    pool.remove(worker)
                    worker = _Worker(context, args)  # the run goes on with a fresh one in its place
                    pool.append(worker)
                else:
                    continue
                if next_chunk < len(chunks):
                    worker.give(next_chunk, chunks[next_chunk])
                    next_chunk += 1
                else:
                    worker.give(None, None)
    finally:
        for worker in pool:
            worker.stop()


def _lost_chunk(items: list, start: int, chunk: list, process, notify) -> list:
    """Error rows for the inputs a dead worker held, and the line that names them all."""
    names = [describe_source(item, start + i) for i, item in enumerate(chunk)]
    how = _death(process)
    notify(f"warning: worker process {process.pid} {how} while embedding {len(names)} input"
           f"{'s' if len(names) != 1 else ''}: {', '.join(names)}; they are reported as failed, the run goes on")
    return [(name, None, f"{name}: not embedded: its worker process ({process.pid}) {how}; run again "
             "(with fewer --workers if memory is short) to embed it") for name in names]


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
