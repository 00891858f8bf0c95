"""Corpus scale: embedding throughput (workers 1 and 2, Ray vs plain) and the vector index at >= 100 000 vectors.

    wavlink-edge bench scale --model exports/wavlink-base [--clips 160] [--vectors 100000] [--no-ray] [--libraries]
    wavlink-edge bench scale --model exports/wavlink-base --mixed 100 [--rounds 2]     # mixed-length batches only

Writes scale.{json,md,png} under --out (default ./wavlink-edge-results; the published figures are in
bench/results/); --mixed: scale_mixed.{json,md}, see mixed_batches.

Throughput: the first ``--clips`` clips of the bundled eval split (real renders, 1.5-9 s), fp32, trim
policy, embedded with ``runtime.parallel.embed_parallel`` at 1 worker (all cores) and at 2 workers (one
thread each), rounds interleaved, wall time from the call to the last row (process start-up included);
then the same files through ``runtime.ray_pipeline`` on a local Ray with this host's CPUs (ray.init
timed apart). Each path's vectors are compared with the one-worker ones.

Index: the real clips' full-width embeddings are the parents of ``--vectors`` synthetic vectors, each a
random convex mix of two parents plus Gaussian noise (sigma 0.03 per dim) re-normalised: a continuum
between real sounds, not copies of one point. Queries: 200 real captions of the eval split (text ->
audio) and 200 further synthetic vectors (audio -> audio). Recall@10 is against exact full-width search.
Graphs: HNSW over all 512 dims, and over the first 128 (Matryoshka) with the candidates re-ranked at
full width. Latency is per single query through ``WavLinkIndex.search_vectors``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if not __package__:  # run by path: run as this checkout's package module (wavlink_edge/run_by_path.py says why)
    import runpy
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "run_by_path.py"))["run"](__file__)

from wavlink_edge.bench.datasets import load_builtin
from wavlink_edge.bench.flops import wavlink_audio_flops
from wavlink_edge.bench.machine import describe
from wavlink_edge.bench.report import DEFAULT_OUT, command_line
from wavlink_edge.runtime import WavLink
from wavlink_edge.runtime.batching import DEFAULT_MAX_BATCH_FRAMES, FRAME_LENGTHS, WindowBatcher
from wavlink_edge.runtime.index import WavLinkIndex
from wavlink_edge.runtime.parallel import embed_parallel, threads_per_worker
from wavlink_edge.runtime.ray_pipeline import embed_to_parquet, read_parquet_rows
from wavlink_edge.runtime.vectors import normalize

K = 10


def lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor()


def throughput(model_dir: Path, clips: list[str], rounds: int) -> tuple[list[dict], np.ndarray]:
    rows, reference = [], None
    for _ in range(rounds):
        for workers in (1, 2):
            started = time.perf_counter()
            results = list(embed_parallel(model_dir, clips, workers=workers, batch_size=8))
            seconds = time.perf_counter() - started
            vectors = np.stack([r[1] for r in results])
            if reference is None:
                reference = vectors
            rows.append({"engine": "plain", "workers": workers, "threads_per_worker": threads_per_worker(workers),
                         "files": len(clips), "seconds": round(seconds, 2), "files_per_s": round(len(clips) / seconds, 2),
                         "max_abs_vs_1_worker": float(np.abs(vectors - reference).max())})
            print(rows[-1], flush=True)
    return rows, reference


def ray_throughput(model_dir: Path, clips: list[str], reference: np.ndarray) -> list[dict]:
    import ray

    started = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False)
    init_seconds = time.perf_counter() - started
    rows = []
    for _ in range(2):
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            summary = embed_to_parquet(model_dir, clips, Path(out) / "emb", batch_size=8)
            seconds = time.perf_counter() - started
            vectors = np.array([r["embedding"] for r in read_parquet_rows(Path(out) / "emb")], np.float32)
        rows.append({"engine": "ray", "workers": summary["actors"], "files": len(clips), "seconds": round(seconds, 2),
                     "files_per_s": round(len(clips) / seconds, 2), "ray_init_seconds": round(init_seconds, 2),
                     "max_abs_vs_1_worker": float(np.abs(vectors - reference).max())})
        print(rows[-1], flush=True)
    ray.shutdown()
    return rows


# Mixed-duration set: real recordings from the Debian sound packages installed here (sound themes, games,
# tuxpaint, asterisk prompts, drum kits, sample libraries), 1-30 s, the same number from each duration band.
SOUND_ROOTS = ("/usr/share/sounds", "/usr/share/games", "/usr/share/tuxpaint", "/usr/share/asterisk",
               "/usr/share/hydrogen", "/usr/share/lmms", "/usr/share/sonic-pi")
DURATION_BANDS = ((1, 2), (2, 4), (4, 8), (8, 16), (16, 30))


def mixed_duration_clips(count: int, seed: int = 0) -> list[tuple[str, float]]:
    """(path, seconds) of ``count`` real clips: count / 5 per band of DURATION_BANDS, drawn with a fixed seed
    from the sorted list of every .ogg/.oga/.wav/.flac under SOUND_ROOTS that libsndfile reads."""
    import soundfile as sf

    found = []
    for root in SOUND_ROOTS:
        for path in sorted(Path(root).rglob("*")) if Path(root).is_dir() else ():
            if path.suffix.lower() in (".ogg", ".oga", ".wav", ".flac") and path.is_file():
                try:
                    info = sf.info(str(path))
                except (RuntimeError, OSError):
                    continue
                found.append((str(path), info.frames / info.samplerate))
    rng = np.random.default_rng(seed)
    chosen = []
    for band, (lo, hi) in enumerate(DURATION_BANDS):
        pool = [clip for clip in found if lo <= clip[1] < hi or (band == len(DURATION_BANDS) - 1 and clip[1] == hi)]
        take = count // len(DURATION_BANDS) + (band < count % len(DURATION_BANDS))
        if len(pool) < take:
            raise SystemExit(f"only {len(pool)} clips of {lo}-{hi} s under {', '.join(SOUND_ROOTS)}; need {take}")
        chosen += [pool[i] for i in sorted(rng.choice(len(pool), take, replace=False))]
    return chosen


def batch_plan(frames: list[int], batch_size: int = 8, max_batch_frames: int = DEFAULT_MAX_BATCH_FRAMES) -> dict:
    """The batches the runtime's mixed-length batcher makes of windows of these frame counts (in this order):
    how many runs, rows per run, and the padded frames it encodes beyond the real ones."""
    batcher = WindowBatcher(batch_size, max_batch_frames, mixed_lengths=True)
    batches = [b for i, n in enumerate(frames) for b in batcher.add(i, np.zeros((1, n), np.float32))] + batcher.flush()
    padded = sum(b.features.shape[0] * b.features.shape[-1] for b in batches)
    return {"windows": len(frames), "runs": len(batches), "rows_mean": round(len(frames) / len(batches), 2),
            "rows_max": max(b.features.shape[0] for b in batches),
            "padding_over_real": round(padded / sum(frames) - 1, 4)}


def batch_exactness(model_dir: Path, paths: list[str], batches: int = 6) -> dict:
    """Per artifact: max abs of each window's embedding in the runtime's mixed batches against the window alone;
    of the window alone but padded to its batch's length (a batch of one) against alone; and of a row when
    its batch-mates are replaced by noise. The first ``batches`` batches of two or more rows are used."""
    manifest = WavLink.from_pretrained(model_dir).manifest
    windows = [WavLink.from_pretrained(model_dir).window_features(path, path)[0] for path in paths]
    batcher = WindowBatcher(8, mixed_lengths=True)
    plan = [b for i, w in enumerate(windows) for b in batcher.add(i, w)] + batcher.flush()
    plan = [b for b in plan if len(b.items) > 1][:batches]
    rng, out = np.random.default_rng(0), {}
    for precision in manifest.precisions("audio"):
        session = WavLink.from_pretrained(model_dir, precision=precision).audio_session
        batch_vs_alone = padded_vs_alone = mates = 0.0
        for b in plan:
            feeds = {"input_features": b.features, FRAME_LENGTHS: b.lengths}
            together = session.run(feeds)
            alone = np.concatenate([session.run({"input_features": windows[i][None]}) for i in b.items])
            padded = np.concatenate([session.run({"input_features": row[None], FRAME_LENGTHS: n[None]})
                                     for row, n in zip(b.features, b.lengths)])
            noise = b.features.copy()
            noise[1:] = rng.standard_normal(noise[1:].shape).astype(np.float32)
            batch_vs_alone = max(batch_vs_alone, float(np.abs(together - alone).max()))
            padded_vs_alone = max(padded_vs_alone, float(np.abs(padded - alone).max()))
            mates = max(mates, float(np.abs(session.run({**feeds, "input_features": noise})[0] - together[0]).max()))
        out[precision] = {"batch_vs_alone": batch_vs_alone, "alone_padded_vs_alone": padded_vs_alone,
                          "other_batch_mates": mates}
        print(precision, out[precision], flush=True)
    return {"batches": len(plan), "rows": sum(len(b.items) for b in plan), "max_abs": out}


def mixed_batches(model_dir: Path, count: int, rounds: int, precisions=("fp32", "int8")) -> dict:
    """Files/s of the mixed-duration set at batch 1 and with mixed-length batches (batch 8, the default
    3000-frame cap), end to end (paths in, decode + log-mel + encoder) and encoder only (the windows'
    features computed once), rounds interleaved; each batched result against batch 1."""
    clips = mixed_duration_clips(count)
    paths = [path for path, _ in clips]
    models = {p: WavLink.from_pretrained(model_dir, precision=p) for p in precisions}
    windows = [models[precisions[0]].window_features(path, path) for path in paths]
    frames = [w.shape[-1] for item in windows for w in item]
    # (precision, batch, path); "2 workers": end to end in two processes of one thread each (process start-up
    # included), against the one-process batch-1 run
    runs = {(p, b, what): [] for p in precisions for what in ("end to end", "encoder") for b in (1, 8)}
    runs.update({(p, 8, "end to end, 2 workers"): [] for p in precisions})
    vectors = {}
    for _ in range(rounds):
        for (precision, batch, what), seconds in runs.items():
            model = models[precision]
            started = time.perf_counter()
            if what == "encoder":
                out = np.stack(model.embed_windows(windows, batch_size=batch))
            elif what == "end to end":
                out = model.embed_audio(paths, batch_size=batch)
            else:
                out = np.stack([r[1] for r in embed_parallel(model_dir, paths, workers=2, batch_size=batch,
                                                             precision=precision)])
            seconds.append(time.perf_counter() - started)
            vectors[precision, batch, what] = out
            print(precision, batch, what, round(seconds[-1], 2), flush=True)
    rows = []
    for (precision, batch, what), seconds in runs.items():
        base = (precision, 1, "encoder" if what == "encoder" else "end to end")
        rows.append({"precision": precision, "batch": batch, "what": what, "seconds": [round(t, 2) for t in seconds],
                     "files_per_s": round(len(paths) / min(seconds), 2),
                     "max_abs_vs_batch_1": float(np.abs(vectors[precision, batch, what] - vectors[base]).max()),
                     "speedup_vs_batch_1": round(min(runs[base]) / min(seconds), 2)})
    return {"clips": len(paths), "seconds_of_audio": round(sum(d for _, d in clips), 1), "plan": batch_plan(frames),
            "exactness": batch_exactness(model_dir, paths),
            "durations": {"min": round(min(d for _, d in clips), 2), "median": round(float(np.median([d for _, d in clips])), 2),
                          "max": round(max(d for _, d in clips), 2)},
            "windows": len(frames), "distinct_frame_counts": len(set(frames)), "rounds": rounds,
            "load_average": [round(x, 2) for x in os.getloadavg()], "rows": rows,
            "set": [{"path": path, "seconds": round(d, 2)} for path, d in clips]}


def mixed_markdown(doc: dict) -> str:
    m = doc["mixed"]
    lines = [f"# Mixed-length exact batches — {doc['model']['name']}", "",
             f"`{doc['command']}` on {doc['machine']['cpu']} ({doc['machine']['cores']} cores, shared with another job; "
             f"load average after the run {', '.join(map(str, m['load_average']))}, niced).", "",
             f"{m['clips']} real clips from Debian sound packages ({m['seconds_of_audio']} s of audio; "
             f"{m['durations']['min']}-{m['durations']['max']} s, median {m['durations']['median']} s; "
             f"{m['clips'] // len(DURATION_BANDS)} per band of {', '.join(f'{lo}-{hi}' for lo, hi in DURATION_BANDS)} s), "
             f"trim policy: {m['windows']} windows with {m['distinct_frame_counts']} distinct frame counts. "
             f"Best of {m['rounds']} interleaved rounds; batch 8 = mixed-length batches, 3000-frame cap.", "",
             "| precision | path | batch | files/s | x batch 1 | seconds per round | max abs vs batch 1 |",
             "|---|---|---|---|---|---|---|"]
    for r in m["rows"]:
        lines.append(f"| {r['precision']} | {r['what']} | {r['batch']} | {r['files_per_s']} | "
                     f"{r['speedup_vs_batch_1']} | {', '.join(map(str, r['seconds']))} | {r['max_abs_vs_batch_1']:.1e} |")
    if m.get("exactness"):
        ex = m["exactness"]
        lines += ["", f"Exactness, per artifact: {ex['rows']} windows in {ex['batches']} of the mixed batches above "
                  "(max abs of the embedding):", "",
                  "| artifact | in its batch vs alone | alone, padded to the batch's length, vs alone | "
                  "a row when its batch-mates are noise |", "|---|---|---|---|"]
        for precision, e in ex["max_abs"].items():
            lines.append(f"| {precision} | {e['batch_vs_alone']:.1e} | {e['alone_padded_vs_alone']:.1e} | "
                         f"{e['other_batch_mates']:.1e} |")
    plan = m.get("plan")
    if plan:
        lines += ["", f"Batch 8 ran {plan['windows']} windows in {plan['runs']} encoder runs ({plan['rows_mean']} rows on "
                  f"average, at most {plan['rows_max']}), encoding {plan['padding_over_real']:.1%} padded frames beyond "
                  "the real ones."]
    return "\n".join(lines) + "\n"


def frontend_cost(model: WavLink, clips: list[str]) -> dict:
    """Decode + log-mel per clip in this process (ORT idle): the CPU share a GPU encoder still needs."""
    frames, started = [], time.perf_counter()
    for clip in clips:
        frames += [w.shape[-1] for w in model.window_features(clip, clip)]
    seconds = time.perf_counter() - started
    return {"clips": len(clips), "ms_per_clip": round(1e3 * seconds / len(clips), 1),
            "mean_frames": round(float(np.mean(frames)), 1)}


# Per GPU: peak dense FP16 tensor TFLOP/s as NVIDIA's datasheets state them (Orin: 170 sparse INT8 TOPS for its
# GPU -> 85 dense -> 42.5 FP16; L4: 242 sparse FP16; H100 SXM: 1979 sparse FP16) and the CPU cores beside it
# (Orin: its 12 Cortex-A78AE; an L4 server: 16 assumed; a DGX H100: 112 cores / 8 GPUs = 14). Projections take a
# fraction of the peak and the front-end cost measured here per core: estimates, no GPU was available to this work.
GPUS = {"Jetson AGX Orin 64GB": (42.5, 12), "NVIDIA L4": (121, 16), "NVIDIA H100 SXM": (989, 14)}
ASSUMED_UTILISATION = 0.25


def projections(doc: dict, config: dict) -> dict:
    """Clips per second and days for 1 M and 100 M clips: measured on this CPU; for GPUs, the lower of the
    encoder bound (analytic FLOPs at the measured mean frame count) and the front-end bound (cores beside
    the GPU / measured decode + log-mel cost per clip)."""

    frames = int(round(doc["frontend"]["mean_frames"] / 2) * 2)
    flops = wavlink_audio_flops(config, frames)
    best_cpu = max(r["files_per_s"] for r in doc["throughput"] if r["engine"] == "plain")
    rows = [{"host": f"this CPU ({doc['machine']['cores']} cores, measured)", "clips_per_s": best_cpu}]
    for name, (tflops, cores) in GPUS.items():
        encoder = tflops * 1e12 * ASSUMED_UTILISATION / flops
        front_end = cores / (doc["frontend"]["ms_per_clip"] / 1e3)
        rows.append({"host": f"{name} (estimate)", "encoder_bound": round(encoder, 1),
                     "front_end_bound": round(front_end, 1), "cores": cores, "clips_per_s": round(min(encoder, front_end), 1)})
    for row in rows:
        row["days_1M"] = round(1e6 / row["clips_per_s"] / 86400, 2)
        row["days_100M"] = round(1e8 / row["clips_per_s"] / 86400, 1)
    return {"frames": frames, "gflop_per_clip": round(flops / 1e9, 2), "utilisation": ASSUMED_UTILISATION, "rows": rows}


def synthetic(parents: np.ndarray, count: int, rng: np.random.Generator, sigma: float = 0.03) -> np.ndarray:
    if count > 100_000:  # in parts: the temporaries of one 1 M x 512 pass would need several GB
        out = np.empty((count, parents.shape[1]), np.float32)
        for start in range(0, count, 100_000):
            out[start:start + 100_000] = synthetic(parents, min(100_000, count - start), rng, sigma)
        return out
    a, b = rng.integers(0, len(parents), count), rng.integers(0, len(parents), count)
    mix = rng.uniform(0, 1, (count, 1)).astype(np.float32)
    noise = rng.standard_normal((count, parents.shape[1]), dtype=np.float32) * sigma
    return normalize(mix * parents[a] + (1 - mix) * parents[b] + noise)


def exact_top(queries: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Rows of the K best vectors per query (unordered), 50 queries at a time to bound memory."""
    parts = []
    for start in range(0, len(queries), 50):
        scores = queries[start:start + 50] @ vectors.T
        parts.append(np.argpartition(-scores, K - 1, axis=1)[:, :K])
    return np.concatenate(parts)


def recall(hits: list[list], truth: np.ndarray) -> float:
    return float(np.mean([len({h.row for h in q} & set(t)) / K for q, t in zip(hits, truth)]))


def timed_search(index: WavLinkIndex, queries: np.ndarray, **options) -> tuple[list, list[float]]:
    hits, times = [], []
    for q in queries:
        started = time.perf_counter()
        hits.append(index.search_vectors(q[None], K, **options)[0])
        times.append((time.perf_counter() - started) * 1e3)
    return hits, times


def index_bench(model: WavLink, parents: np.ndarray, count: int, captions: list[str], workdir: Path,
                graph_dims: tuple[int, ...] | None = None) -> dict:
    rng = np.random.default_rng(0)
    vectors = synthetic(parents, count, rng)
    queries = np.concatenate([model.embed_text(captions[:200], dim=model.spec.embed_dim),
                              synthetic(parents, 200, rng)])
    truth = exact_top(queries, vectors)
    entries = [{"source": f"synthetic/{i:06d}", "size": 0, "mtime_ns": 0} for i in range(count)]
    doc = {"vectors": count, "dim": int(vectors.shape[1]), "queries": len(queries), "graphs": [], "points": []}
    for search_dim in graph_dims or (model.spec.embed_dim, model.spec.embed_dim // 4):
        index = WavLinkIndex.create(workdir / f"idx{search_dim}", model, search_dim=search_dim)
        started = time.perf_counter()
        index.add_vectors(entries, vectors)
        build = time.perf_counter() - started
        vectors = None  # the index holds its own copy: one at a time at 1 M vectors
        started = time.perf_counter()
        index.save()
        save = time.perf_counter() - started
        index = None
        started = time.perf_counter()
        index = WavLinkIndex.open(workdir / f"idx{search_dim}")
        open_seconds = time.perf_counter() - started
        vectors = index.vectors
        sizes = {p.name: p.stat().st_size for p in (workdir / f"idx{search_dim}").iterdir()}
        doc["graphs"].append({"search_dim": search_dim, "build_s": round(build, 1), "save_s": round(save, 2),
                              "open_s": round(open_seconds, 2), "bytes": sizes, "memory": index.memory_bytes()})
        print(doc["graphs"][-1], flush=True)
        sweeps = [("ef", ef, {"ef_search": ef}) for ef in (16, 32, 64, 128, 256)] if search_dim == model.spec.embed_dim \
            else [("candidates", c, {"candidates": c}) for c in (10, 20, 50, 100, 200, 400)]
        for knob, value, options in sweeps:
            hits, times = timed_search(index, queries, **options)
            doc["points"].append({"search_dim": search_dim, knob: value, "recall_at_10": round(recall(hits, truth), 4),
                                  "recall_text_queries": round(recall(hits[:200], truth[:200]), 4),
                                  "p50_ms": round(float(np.percentile(times, 50)), 3),
                                  "p99_ms": round(float(np.percentile(times, 99)), 3)})
            print(doc["points"][-1], flush=True)
    hits, times = timed_search(index, queries, exact=True)
    doc["exact"] = {"recall_at_10": round(recall(hits, truth), 4), "p50_ms": round(float(np.percentile(times, 50)), 3),
                    "p99_ms": round(float(np.percentile(times, 99)), 3)}
    print("exact", doc["exact"], flush=True)
    return doc


def library_bench(vectors: np.ndarray, queries: np.ndarray) -> list[dict]:
    """faiss IndexHNSWFlat vs usearch HNSW at the same M / efConstruction / efSearch, same vectors."""
    import faiss

    rows = []
    truth = exact_top(queries, vectors)
    try:
        import usearch.index as usearch_index
    except ImportError:
        usearch_index = None
    for dim in (vectors.shape[1], vectors.shape[1] // 4):
        x, q = normalize(vectors[:, :dim]), normalize(queries[:, :dim])
        exact = exact_top(q, x) if dim != vectors.shape[1] else truth
        started = time.perf_counter()
        f = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        f.hnsw.efConstruction = 128
        f.add(x)
        build = time.perf_counter() - started
        f.hnsw.efSearch = 64
        found, times = [], []
        for row in q:
            started = time.perf_counter()
            found.append(f.search(row[None], K)[1][0])
            times.append((time.perf_counter() - started) * 1e3)
        rows.append(_library_row("faiss-cpu " + faiss.__version__, dim, build, times, found, exact, faiss.serialize_index(f).nbytes))
        if usearch_index is None:
            continue
        started = time.perf_counter()
        u = usearch_index.Index(ndim=dim, metric="ip", dtype="f32", connectivity=32, expansion_add=128, expansion_search=64)
        u.add(np.arange(len(x)), x)
        build = time.perf_counter() - started
        found, times = [], []
        for row in q:
            started = time.perf_counter()
            found.append(u.search(row, K).keys)
            times.append((time.perf_counter() - started) * 1e3)
        import usearch
        rows.append(_library_row("usearch " + usearch.__version__, dim, build, times, found, exact, u.memory_usage))
    return rows


def _library_row(name, dim, build, times, found, exact, nbytes) -> dict:
    row = {"library": name, "dim": dim, "build_s": round(build, 1), "p50_ms": round(float(np.percentile(times, 50)), 3),
           "p99_ms": round(float(np.percentile(times, 99)), 3),
           "recall_at_10": round(float(np.mean([len(set(map(int, a)) & set(b)) / K for a, b in zip(found, exact)])), 4),
           "bytes": int(nbytes)}
    print(row, flush=True)
    return row


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    runs = {}
    for row in doc["throughput"]:
        label = f"{row['engine']}, {row['workers']} {'actor' if row['engine'] == 'ray' else 'worker'}" + \
                ("s" if row["workers"] > 1 else "")
        runs.setdefault(label, []).append(row["files_per_s"])
    labels = list(runs)
    left.bar(range(len(labels)), [max(v) for v in runs.values()], color=["C0", "C1", "C2", "C3"][:len(labels)])
    for i, values in enumerate(runs.values()):
        left.text(i, max(values), f"{max(values):.1f}", ha="center", va="bottom", fontsize=9)
    left.set_xticks(range(len(labels)), labels, fontsize=8)
    left.set_ylabel("files / s (best round)")
    left.set_title(f"Embedding throughput, {doc['throughput'][0]['files']} real clips", fontsize=10)
    for (search_dim, knob), marker in zip(((doc["index"]["dim"], "ef"), (doc["index"]["dim"] // 4, "candidates")), "os"):
        points = [p for p in doc["index"]["points"] if p["search_dim"] == search_dim]
        label = f"HNSW {search_dim}-d (efSearch sweep)" if knob == "ef" else \
            f"HNSW {search_dim}-d + {doc['index']['dim']}-d re-rank (candidates sweep)"
        right.plot([p["p50_ms"] for p in points], [p["recall_at_10"] for p in points], marker=marker, label=label)
    exact = doc["index"]["exact"]
    right.plot([exact["p50_ms"]], [exact["recall_at_10"]], marker="*", markersize=12, linestyle="", label="exact (numpy)")
    right.set_xscale("log")
    right.set_xlabel("p50 ms per query")
    right.set_ylabel("recall@10 vs exact")
    right.set_title(f"Search, {doc['index']['vectors']:,} vectors", fontsize=10)
    right.grid(alpha=0.3)
    right.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{doc['model']['name']} ({doc['model']['heads']} heads) — {doc['machine']['cpu']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def index_markdown(ix: dict) -> list[str]:
    lines = ["", f"## Index: {ix['vectors']:,} vectors of {ix['dim']} dims, {ix['queries']} queries, recall@10 vs exact",
             "", "| graph dim | build s | ann bytes | vectors bytes | open s |", "|---|---|---|---|---|"]
    for g in ix["graphs"]:
        lines.append(f"| {g['search_dim']} | {g['build_s']} | {g['memory']['ann']:,} | {g['memory']['vectors']:,} | {g['open_s']} |")
    lines += ["", "| graph dim | knob | recall@10 | text queries | p50 ms | p99 ms |", "|---|---|---|---|---|---|"]
    for p in ix["points"]:
        knob = f"efSearch {p['ef']}" if "ef" in p else f"{p['candidates']} candidates re-ranked"
        lines.append(f"| {p['search_dim']} | {knob} | {p['recall_at_10']} | {p['recall_text_queries']} | {p['p50_ms']} | {p['p99_ms']} |")
    lines.append(f"| exact | numpy | {ix['exact']['recall_at_10']} | | {ix['exact']['p50_ms']} | {ix['exact']['p99_ms']} |")
    return lines


def markdown(doc: dict) -> str:
    lines = [f"# Corpus scale — {doc['model']['name']} ({doc['model']['heads']} heads)", "",
             f"`{doc['command']}` on {doc['machine']['cpu']} ({doc['machine']['cores']} cores, shared with other jobs).",
             "", "## Throughput (fp32, trim, batch 8)", "", "| engine | workers/actors | files | s | files/s | max abs vs 1 worker |",
             "|---|---|---|---|---|---|"]
    for r in doc["throughput"]:
        lines.append(f"| {r['engine']} | {r['workers']} | {r['files']} | {r['seconds']} | {r['files_per_s']} | "
                     f"{r['max_abs_vs_1_worker']:.1e} |")
    lines += index_markdown(doc["index"])
    if doc.get("projection"):
        pr = doc["projection"]
        lines += ["", f"## Projection (front end {doc['frontend']['ms_per_clip']} ms/clip on one core, measured; encoder "
                  f"{pr['gflop_per_clip']} GFLOP/clip at {pr['frames']} frames, analytic; GPUs at "
                  f"{pr['utilisation']:.0%} of datasheet FP16 peak: estimates)", "",
                  "| host | encoder bound clips/s | front-end bound clips/s (cores) | clips/s | days for 1 M | days for 100 M |",
                  "|---|---|---|---|---|---|"]
        for r in pr["rows"]:
            bound = f"{r['front_end_bound']} ({r['cores']})" if "cores" in r else ""
            lines.append(f"| {r['host']} | {r.get('encoder_bound', '')} | {bound} | {r['clips_per_s']} | "
                         f"{r['days_1M']} | {r['days_100M']} |")
    if doc.get("libraries"):
        lines += ["", "## Library choice (same vectors, M 32, efConstruction 128, efSearch 64)", "",
                  "| library | dim | build s | p50 ms | p99 ms | recall@10 | bytes |", "|---|---|---|---|---|---|---|"]
        for r in doc["libraries"]:
            lines.append(f"| {r['library']} | {r['dim']} | {r['build_s']} | {r['p50_ms']} | {r['p99_ms']} | "
                         f"{r['recall_at_10']} | {r['bytes']:,} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a base export (python export/to_onnx.py --size base)")
    parser.add_argument("--clips", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--libraries", type=int, default=0, metavar="N",
                        help="also compare faiss and usearch on the first N synthetic vectors")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results directory (default ./{DEFAULT_OUT})")
    parser.add_argument("--index-only", action="store_true",
                        help="only the index part (parents: the clips embedded once by 2 workers); writes scale_index_N.json/md")
    parser.add_argument("--graph-dims", default=None, help="comma-separated graph dims (default: full and full/4)")
    parser.add_argument("--mixed", type=int, default=0, metavar="N",
                        help="only mixed-length batching: N real 1-30 s clips, batch 1 vs batch 8, fp32 and int8; "
                             "writes scale_mixed.json/md")
    parser.add_argument("--report-only", action="store_true",
                        help="re-render scale.md/png from scale.json (measuring the front end if it lacks it)")
    args = parser.parse_args(argv)
    command = command_line("scale", list(argv) if argv is not None else sys.argv[1:])
    if args.mixed:
        model = WavLink.from_pretrained(args.model)
        if args.report_only:  # re-render; the batch plan is recomputed from the recorded set if missing
            doc = json.loads((args.out / "scale_mixed.json").read_text())
            frames = [w.shape[-1] for clip in doc["mixed"]["set"] for w in model.window_features(clip["path"])]
            doc["mixed"].setdefault("plan", batch_plan(frames))
            if "exactness" not in doc["mixed"]:
                doc["mixed"]["exactness"] = batch_exactness(args.model, [clip["path"] for clip in doc["mixed"]["set"]])
        else:
            doc = {"command": command, "model": {"name": model.spec.name, "heads": model.spec.heads},
                   "machine": {"cpu": lscpu_model(), "cores": describe()["usable_cores"]},
                   "mixed": mixed_batches(args.model, args.mixed, args.rounds)}
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "scale_mixed.json").write_text(json.dumps(doc, indent=1) + "\n")
        (args.out / "scale_mixed.md").write_text(mixed_markdown(doc))
        print(mixed_markdown(doc))
        return 0
    data = load_builtin()
    clips = data.audio[: args.clips]
    model = WavLink.from_pretrained(args.model)
    if args.report_only:
        doc = json.loads((args.out / "scale.json").read_text())
        return report(doc, model, clips, args.out)
    doc = {"command": command,
           "model": {"name": model.spec.name, "heads": model.spec.heads, "digest": model.digest},
           "machine": {"cpu": lscpu_model(), "cores": describe()["usable_cores"]}}
    captions = [caps[0] for caps in data.captions]
    graph_dims = tuple(int(d) for d in args.graph_dims.split(",")) if args.graph_dims else None
    if args.index_only:
        parents = np.stack([r[1] for r in embed_parallel(args.model, clips, workers=2)])
        with tempfile.TemporaryDirectory() as workdir:
            doc["index"] = index_bench(model, parents, args.vectors, captions, Path(workdir), graph_dims)
        name = f"scale_index_{args.vectors}"
        (args.out / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
        (args.out / f"{name}.md").write_text("\n".join([f"# Index at {args.vectors:,} vectors — {model.spec.name}", "",
                                                        f"`{doc['command']}` on {doc['machine']['cpu']}."]
                                                       + index_markdown(doc["index"])) + "\n")
        return 0
    doc["throughput"], parents = throughput(args.model, clips, args.rounds)
    if not args.no_ray:
        doc["throughput"] += ray_throughput(args.model, clips, parents)
    with tempfile.TemporaryDirectory() as workdir:
        doc["index"] = index_bench(model, parents, args.vectors, captions, Path(workdir), graph_dims)
    if args.libraries:
        rng = np.random.default_rng(1)
        doc["libraries"] = library_bench(synthetic(parents, args.libraries, rng), synthetic(parents, 200, rng))
    args.out.mkdir(parents=True, exist_ok=True)
    return report(doc, model, clips, args.out)


def report(doc: dict, model: WavLink, clips: list[str], out: Path) -> int:
    if "frontend" not in doc:
        doc["frontend"] = frontend_cost(model, clips)
    doc["projection"] = projections(doc, json.loads(model.manifest.read_verified("config.json")))
    (out / "scale.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "scale.md").write_text(markdown(doc))
    plot(doc, out / "scale.png")
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
