"""Past one machine: ``wavlink-edge embed ... --engine ray --out DIR`` as a Ray Data pipeline.

    read (from_items: index, source) -> decode + log-mel (stateless CPU tasks, map_batches with a function)
    -> encoder (map_batches with a callable class: an actor pool, one model and session per actor; one GPU
    per actor when ORT's CUDA provider is present) -> Parquet (index, source, source_bytes, embedding, error,
    model, dim, precision)

Ray schedules, retries and streams between the stages; nothing here is a scheduler. Ray Data does not
keep row order (its docs and ray-project/ray#50890), so rows carry their input ``index``; sort on it.
``map_batches`` batch sizes are a target, not a promise (ray#51419): the encoder takes any size. Features
travel as float32 bytes plus their frame counts (windows of one clip differ in length under ``trim``).
A file that cannot be decoded becomes a row with its error; every input gives exactly one row. A file name
that is not valid UTF-8 cannot be an Arrow string: ``source`` shows it with \\xNN escapes and
``source_bytes`` keeps its bytes exactly.
The paths and the export directory must be readable on every node (a shared file system); the Parquet
directory is written by the workers, so on a cluster it must be shared storage too (or s3://...).
Ray is an extra (`pip install 'wavlink-edge[ray]'`), imported only here, only when this engine is asked for.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np

from wavlink_edge.runtime.errors import AudioInputError, UsageError, WavLinkError
from wavlink_edge.runtime.manifest import Manifest
from wavlink_edge.runtime.model import WavLink


def printable(text: str) -> str:
    """UTF-8 text for a terminal, a UTF-8 stream or Arrow: a non-UTF-8 name's bytes shown as \\xNN escapes."""
    try:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no file name decodes to
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _ray():
    try:
        import pyarrow
        import ray
    except ImportError:
        raise WavLinkError("--engine ray needs Ray Data: pip install 'wavlink-edge[ray]'") from None
    return ray, pyarrow


def quiet_ray(verbose: bool) -> None:
    """Ray and Ray Data log start-up, execution plans, progress every few seconds and deprecation notes to
    the terminal; the command prints its own summary, so they are for --verbose only."""
    if verbose:
        return
    ray, _ = _ray()
    for name in [n for n in logging.root.manager.loggerDict if n == "ray" or n.startswith("ray.")] + ["ray"]:
        logging.getLogger(name).setLevel(logging.ERROR)
    ray.data.DataContext.get_current().enable_progress_bars = False


def featurize(batch, export_dir: str, clip_policy: str | None, window_hop_seconds: float | None):
    """A CPU task: decode each source and compute its windows' log-mel features (no session opened)."""
    import pyarrow as pa

    front_end = WavLink(Manifest.load(export_dir), None, None, None, "fp32", clip_policy=clip_policy,
                        window_hop_seconds=window_hop_seconds)
    features, frames, errors = [], [], []
    for source, raw in zip(batch["source"].to_pylist(), batch["source_bytes"].to_pylist()):
        try:
            windows = front_end.window_features(os.fsdecode(raw), source)
        except AudioInputError as exc:
            windows, error = None, str(exc)
        except (ValueError, TypeError, OSError, MemoryError, RuntimeError) as exc:
            windows, error = None, f"{source}: cannot decode audio ({type(exc).__name__}: {exc})"
        if windows is None:
            features.append(None)
            frames.append(None)
            errors.append(printable(error))  # Arrow strings are UTF-8: an OS error may quote the raw name
        else:
            features.append(b"".join(np.ascontiguousarray(w, np.float32).tobytes() for w in windows))
            frames.append([w.shape[-1] for w in windows])
            errors.append(None)
    return pa.table({"index": batch["index"], "source": batch["source"], "source_bytes": batch["source_bytes"],
                     "features": pa.array(features, pa.binary()), "frames": pa.array(frames, pa.list_(pa.int32())),
                     "error": pa.array(errors, pa.string())})


class Encoder:
    """An actor of the encoder pool: loads the model once, embeds every batch Ray hands it."""

    def __init__(self, export_dir: str, options: dict, dim: int | None, batch_size: int):
        self.model = WavLink.from_pretrained(export_dir, **options)
        self.dim, self.batch_size = self.model.check_dim(dim), batch_size

    def __call__(self, batch):
        import pyarrow as pa

        n_mels = self.model.spec.n_mels
        rows = batch.to_pydict()
        todo = [i for i, error in enumerate(rows["error"]) if error is None]
        windows = []
        for i in todo:
            flat = np.frombuffer(rows["features"][i], np.float32)
            bounds = np.cumsum([0] + [n_mels * f for f in rows["frames"][i]])
            windows.append([flat[a:b].reshape(n_mels, -1) for a, b in zip(bounds[:-1], bounds[1:])])
        embeddings = [None] * len(rows["index"])
        for i, embedding in zip(todo, self.model.embed_windows(windows, self.dim, self.batch_size)):
            embeddings[i] = embedding.tolist()
        count = len(embeddings)
        return pa.table({"index": rows["index"], "source": rows["source"],
                         "source_bytes": pa.array(rows["source_bytes"], pa.binary()),
                         "embedding": pa.array(embeddings, pa.list_(pa.float32())),
                         "error": pa.array(rows["error"], pa.string()),
                         "model": [self.model.spec.name] * count, "dim": [self.dim] * count,
                         "precision": [self.model.precision] * count})


def embed_to_parquet(export_dir: str | Path, paths: list[str], out: str | Path, dim: int | None = None,
                     precision: str = "fp32", providers=None, clip_policy: str | None = None,
                     window_hop_seconds: float | None = None, batch_size: int = 8, actors: int | None = None,
                     threads: int | None = None, address: str | None = None) -> dict:
    """Run the pipeline on ``paths``; Parquet files under ``out``. Starts a local Ray unless one is running
    or ``address`` names a cluster. Returns {"rows", "failed", "actors", "gpu"}."""
    ray, _ = _ray()
    import onnxruntime as ort

    export_dir = str(Path(export_dir).resolve())
    spec = Manifest.load(export_dir).model  # a missing export or a wrong dim: one line here, not a remote traceback
    if dim is not None and dim not in spec.matryoshka_dims:
        raise UsageError(f"dim {dim} is not one of this model's Matryoshka dims {', '.join(map(str, spec.matryoshka_dims))}")
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.getLogger("ray").getEffectiveLevel(),  # ERROR after quiet_ray
                 runtime_env=None if address else {"env_vars": {"OMP_NUM_THREADS": "1"}})
    gpu = "CUDAExecutionProvider" in ort.get_available_providers() and ray.cluster_resources().get("GPU", 0) >= 1
    cpus = int(ray.cluster_resources().get("CPU", 1))
    actors = actors or (int(ray.cluster_resources()["GPU"]) if gpu else max(1, cpus // 2))
    options = {"precision": precision, "providers": providers, "clip_policy": clip_policy,
               "window_hop_seconds": window_hop_seconds, "threads": threads or max(1, cpus // actors)}
    # Arrow strings must be UTF-8 and a file name need not be: "source" is the name for reading (non-UTF-8
    # bytes as \xNN escapes), "source_bytes" the exact bytes (os.fsdecode gives the path back).
    ds = ray.data.from_items([{"index": i, "source": printable(os.fspath(p)), "source_bytes": os.fsencode(p)}
                              for i, p in enumerate(paths)])
    # Half a CPU per decode task: its resources then differ from the encoder's, so Ray keeps the stages
    # apart (decode tasks spread over every node) instead of fusing decoding into the encoder actors.
    ds = ds.map_batches(featurize, batch_format="pyarrow", batch_size=batch_size, num_cpus=0.5,
                        fn_kwargs={"export_dir": export_dir, "clip_policy": clip_policy,
                                   "window_hop_seconds": window_hop_seconds})
    ds = ds.map_batches(Encoder, batch_format="pyarrow", batch_size=batch_size, concurrency=actors,
                        num_gpus=1 if gpu else 0, num_cpus=1,
                        fn_constructor_kwargs={"export_dir": export_dir, "options": options, "dim": dim,
                                               "batch_size": batch_size})
    ds.write_parquet(str(out))
    written = read_parquet_rows(out)
    return {"rows": len(written), "failed": sum(r["error"] is not None for r in written), "actors": actors, "gpu": gpu}


def read_parquet_rows(out: str | Path) -> list[dict]:
    """Every row the pipeline wrote, in input order."""
    _, pa = _ray()
    import pyarrow.parquet as pq

    table = pq.read_table(str(out))
    return sorted(table.to_pylist(), key=lambda row: row["index"])


def cmd_embed_ray(args: argparse.Namespace, sources: list[str]) -> int:
    """``embed --engine ray`` of ``sources`` (the expanded inputs): --out is the Parquet directory (created)."""
    if args.out is None:
        raise UsageError("--engine ray writes Parquet: give --out DIR")
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise UsageError(f"--out {args.out}: must be a new or empty directory (Parquet files are written into it)")
    if args.resume:
        raise UsageError("--resume works with the local engine's .jsonl output")
    quiet_ray(args.verbose)
    summary = embed_to_parquet(args.model, sources, args.out, dim=args.dim, precision=args.precision,
                               providers=args.providers, clip_policy=args.clip_policy, window_hop_seconds=args.hop,
                               batch_size=args.batch_size, address=args.ray_address)
    for row in read_parquet_rows(args.out):
        if row["error"]:
            print(f"failed: {row['error']}", file=sys.stderr)
    print(f"{summary['rows'] - summary['failed']} ok, {summary['failed']} failed -> {args.out} "
          f"(Ray Data, {summary['actors']} encoder actor{'s' if summary['actors'] > 1 else ''}"
          f"{' on GPUs' if summary['gpu'] else ''})", file=sys.stderr)
    return 1 if summary["failed"] else 0
