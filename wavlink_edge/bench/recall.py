"""Recall of every backend x precision x Matryoshka dim, its delta to the PyTorch reference, and fidelity.

    python bench/recall.py --model DIR [--quick] [--dataset builtin|clotho:PATH|audiocaps:CSV:DIR|esc50:PATH ...]

Embeddings are computed once per (backend, clip policy) at full width and every Matryoshka dim is a
truncation of them (exactly what the runtime's `dim=` does); text embeddings do not depend on the
clip policy and are reused across policies; all of them are cached on disk keyed by the export and
the dataset, so reruns and run_all reuse them. Backends run at the model's trained clip policy; the
PyTorch reference also runs the other policy, so pad vs trim recall is measured once, on the reference.

Audio is embedded one clip at a time, so a recall figure can never depend on batch composition (every
shipped artifact is batch-independent, tested in tests/test_quantization.py; this keeps it so for any
export). Text is batched (32) except for dynamic INT8, for the same reason.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

if not __package__:  # run by path: run as this checkout's package module (wavlink_edge/run_by_path.py says why)
    import runpy
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "run_by_path.py"))["run"](__file__)

from wavlink_edge.bench import backends as B
from wavlink_edge.bench import datasets as D
from wavlink_edge.bench import machine, report
from wavlink_edge.runtime.arguments import DEFAULT_MODEL_DIR, error_exit
from wavlink_edge.runtime.errors import WavLinkError
from wavlink_edge.runtime.vectors import truncate
from wavlink_edge.train import metrics

QUICK_ITEMS = 12
TEXT_BATCH = 32


def _fingerprint(doc_digest: str, ds: D.Dataset) -> str:
    h = hashlib.sha256(doc_digest.encode())
    h.update(json.dumps([ds.name, ds.audio, ds.captions, ds.labels, ds.classes]).encode())
    return h.hexdigest()[:16]


class Embedder:
    """Loads each backend once and caches its embeddings (memory + disk)."""

    def __init__(self, export_dir: Path, threads: int, cache_dir: Path, checkpoint: Path | None, progress: bool):
        self.export_dir, self.threads, self.cache_dir = export_dir, threads, cache_dir
        self.checkpoint, self.progress = checkpoint, progress
        self.runners: dict[str, B.Runner] = {}
        self.seconds: dict[str, float] = {}

    def runner(self, spec: B.Spec) -> B.Runner:
        """One loaded backend serves both towers (the PyTorch model and the runtime hold both anyway)."""
        shared = (spec.engine, spec.precision, spec.variant, spec.device)
        if shared not in self.runners:
            self.runners[shared] = B.Runner(spec, self.export_dir, self.threads, self.checkpoint)
        return self.runners[shared]

    def _cached(self, name: str, compute) -> np.ndarray:
        path = self.cache_dir / f"{name}.npy"
        if path.is_file():
            return np.load(path)
        start = time.time()
        value = compute()
        self.seconds[name] = round(time.time() - start, 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, value)
        return value

    def audio(self, spec: B.Spec, waves: list[np.ndarray], policy: str, tag: str) -> np.ndarray:
        from tqdm import tqdm

        def compute():
            run = self.runner(spec)
            rows = [run.audio([w], policy)[0] for w in tqdm(waves, desc=f"{spec.key} {policy}", unit="clip",
                                                             leave=False, disable=not self.progress)]
            return np.stack(rows).astype(np.float32)

        return self._cached(f"{tag}-{spec.key}-audio-{policy}", compute)

    def text(self, spec: B.Spec, texts: list[str], tag: str) -> np.ndarray:
        batch = 1 if spec.variant == "dynamic" else TEXT_BATCH

        def compute():
            from tqdm import tqdm

            run = self.runner(spec)
            starts = tqdm(range(0, len(texts), batch), desc=f"{spec.key} text", unit="batch", leave=False,
                          disable=not self.progress)
            return np.concatenate([run.text(texts[i:i + batch]) for i in starts]).astype(np.float32)

        return self._cached(f"{tag}-{spec.key}-text", compute)


def evaluate(ds: D.Dataset, spec: B.Spec, policy: str, dims: list[int], audio: np.ndarray, text: np.ndarray,
             owner: np.ndarray, ref: tuple | None) -> list[dict]:
    rows = []
    for dim in dims:
        a, t = truncate(audio, dim), truncate(text, dim)
        if ds.task == "retrieval":
            m = metrics.retrieval(a, t, owner)
        else:
            m = metrics.classification(a, t, np.array(ds.labels))
        fid = None
        if ref is not None:
            ra, rt = truncate(ref[0], dim), truncate(ref[1], dim)
            fid = metrics.fidelity(a, t, ra, rt, ds.task)
        rows.append({"dataset": ds.name, "task": ds.task, "backend": spec.key, "label": spec.label,
                     "engine": spec.engine, "precision": spec.precision, "variant": spec.variant, "device": spec.device,
                     "policy": policy, "dim": dim, "reference": spec.reference, "metrics": m, "fidelity": fid,
                     "delta": None})
    return rows


def add_deltas(rows: list[dict], trained_policy: str) -> None:
    """Delta to the reference row of the same dataset, policy and dim; the reference's other-policy rows
    are compared with the reference at the trained policy (that is the pad vs trim recall cost)."""
    refs = {(r["dataset"], r["policy"], r["dim"]): r["metrics"] for r in rows if r["reference"]}
    for r in rows:
        if r["reference"]:
            base = refs.get((r["dataset"], trained_policy, r["dim"])) if r["policy"] != trained_policy else None
        else:
            base = refs.get((r["dataset"], r["policy"], r["dim"]))
        if base:
            r["delta"] = {k: r["metrics"][k] - base[k] for k in r["metrics"]}


def run(export_dir: Path, out_dir: Path, quick: bool = False, dataset_specs: list[str] | None = None,
        limit: int | None = None, threads: int | None = None, checkpoint: Path | None = None,
        only: list[str] | None = None, command: str | None = None, progress: bool = True) -> dict:
    export_dir, out_dir = Path(export_dir), Path(out_dir)
    started = time.time()
    manifest = B.load_manifest(export_dir)
    threads = threads or len(machine.usable_cores())
    head = report.header("recall", manifest, export_dir, command, machine.describe(threads))
    trained_policy = manifest["model"]["clip_policy"]
    dims = list(manifest["model"]["matryoshka_dims"])
    other_policy = {"pad": "trim", "trim": "pad"}[trained_policy]
    specs = [s for s in B.discover(export_dir, towers=("audio",), peers=False)
             if not only or s.reference or any(o in s.key for o in only)]
    if quick:  # seconds: few clips, trim (cheap) only, the extreme dims
        dims, limit = [dims[0], dims[-1]], limit or QUICK_ITEMS
        trained_policy = other_policy = "trim"
    embedder = Embedder(export_dir, threads, out_dir / ".cache" / "recall", checkpoint, progress)
    rows, summaries = [], []
    for spec_text in dataset_specs or ["builtin"]:
        ds = D.parse_spec(spec_text).limit(limit)
        summaries.append(ds.summary())
        tag = f"{ds.name}-{_fingerprint(head['model']['artifacts_digest'], ds)}"
        waves = [D.load_wave(p) for p in ds.audio]
        texts, owner = ds.texts()
        ref_spec = next(s for s in specs if s.reference)
        ref_text = embedder.text(_text_twin(ref_spec), texts, tag)
        ref_audio = {p: embedder.audio(ref_spec, waves, p, tag) for p in dict.fromkeys([trained_policy, other_policy])}
        for policy, audio in ref_audio.items():
            rows += evaluate(ds, ref_spec, policy, dims, audio, ref_text, owner, None)
        for spec in specs:
            if spec.reference:
                continue
            try:
                text = embedder.text(_text_twin(spec), texts, tag)
                audio = embedder.audio(spec, waves, trained_policy, tag)
            except Exception as exc:  # a missing text twin or a provider failure loses one row, not the run
                print(f"warning: {spec.key} skipped: {exc}", file=sys.stderr)
                continue
            rows += evaluate(ds, spec, trained_policy, dims, audio, text, owner, (ref_audio[trained_policy], ref_text))
    add_deltas(rows, trained_policy)
    doc = {**head, "settings": {"dims": dims, "trained_policy": trained_policy, "other_policy_on_reference": other_policy,
                                "quick": quick, "limit": limit, "threads": threads,
                                "notes": (f"backends at the trained clip policy `{trained_policy}`, the PyTorch reference also at "
                                          f"`{other_policy}`; audio embedded one clip at a time (first {D.MAX_SECONDS} s), text "
                                          f"in batches of {TEXT_BATCH} (1 for dynamic INT8); dims are truncations of one "
                                          "full-width embedding; fidelity = cosine to the reference at the same policy and dim")},
           "datasets": summaries, "rows": rows, "embedding_seconds": embedder.seconds, "wall_s": round(time.time() - started, 1)}
    report.write_recall(doc, out_dir)
    return doc


def _text_twin(audio_spec: B.Spec) -> B.Spec:
    """The same backend and precision for the text tower (the runtime loads both towers per precision)."""
    key = audio_spec.key.replace("-audio", "-text")
    artifact = audio_spec.artifact and audio_spec.artifact.replace("audio", "text", 1)
    return B.Spec(key, audio_spec.label, "text", audio_spec.engine, audio_spec.precision, audio_spec.variant,
                  audio_spec.device, artifact, audio_spec.reference, audio_spec.peer)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="export directory")
    parser.add_argument("--quick", action="store_true", help=f"seconds: {QUICK_ITEMS} clips, trim policy, 2 dims")
    parser.add_argument("--dataset", action="append",
                        help="builtin (default) | clotho:DIR_OR_CSV | audiocaps:CSV:AUDIO_DIR | esc50:DIR; repeatable")
    parser.add_argument("--limit", type=int, help="first N clips of each dataset")
    parser.add_argument("--out", default=str(report.DEFAULT_OUT), help=f"results directory (default ./{report.DEFAULT_OUT})")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--checkpoint", help="WavLink checkpoint the export came from (default: the built-in base)")
    parser.add_argument("--only", help="comma list of backend-key substrings (the reference always runs)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        doc = run(Path(args.model), Path(args.out), args.quick, args.dataset, args.limit, args.threads,
                  args.checkpoint and Path(args.checkpoint), args.only.split(",") if args.only else None,
                  report.command_line("recall", argv), progress=not args.no_progress)
    except (WavLinkError, OSError) as exc:
        return error_exit(exc)
    print(f"recall: {len(doc['rows'])} rows in {doc['wall_s']} s -> {Path(args.out) / 'recall.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
