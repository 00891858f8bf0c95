"""Linear probe of frozen audio embeddings: how much a backbone's embedding knows about a labelled set.

    python bench/probe.py --model exports/wavlink-base --model exports/whisper-base-mean --data ESC-50-master/

Each --model is an export directory (export/FORMAT.md): a WavLink export gives its global token's
embedding; one made by `export/mean_pool.py` gives the encoder's mean-pooled states (so an AuT or plain
Whisper encoder is probed the way the AuT paper does). Embeddings are frozen; a standardised
logistic regression (scikit-learn) is trained and scored per fold:

- ESC-50 (`meta/esc50.csv` with its 5 folds, audio in `audio/`): the official folds.
- Speech Commands (class folders + `validation_list.txt` / `testing_list.txt`): trained on the files in
  neither list, scored on the testing list.
- GTZAN (genre folders, under `genres_original/` or `genres/` or the root) and any class-folder set:
  stratified k folds (--folds, seeded).

Clips longer than 30 s are cut to their first 30 s (one encoder window); the input policy is the
model's own (manifest `clip_policy`) unless --policy says otherwise.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

if not __package__:  # run by path: run as this checkout's package module (wavlink_edge/run_by_path.py says why)
    import runpy
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "run_by_path.py"))["run"](__file__)

from wavlink_edge.runtime.audio import decode_audio
from wavlink_edge.runtime.errors import WavLinkError
from wavlink_edge.runtime.features import CLIP_POLICIES, SAMPLE_RATE, clip_features
from wavlink_edge.runtime.inputs import AUDIO_SUFFIXES  # every format the runtime decodes
from wavlink_edge.runtime.manifest import Manifest
from wavlink_edge.runtime.session import CPU_EP, open_session

LAYOUTS = ("auto", "esc50", "gtzan", "speechcommands", "folders")
MAX_SECONDS = 30
SPEECH_COMMANDS_SKIP = ("_background_noise_",)


class ProbeError(WavLinkError, ValueError):
    pass


@dataclass
class LabelledSet:
    name: str
    paths: list[Path]
    labels: list[str]
    folds: list[int] | None = None  # official folds (ESC-50)
    splits: list[str] | None = None  # train / validation / test (Speech Commands)

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels))

    def limit_per_class(self, n: int | None, seed: int = 0) -> LabelledSet:
        """At most n items per class, chosen by a seeded shuffle (the same items for every model)."""
        if not n:
            return self
        order = np.random.default_rng(seed).permutation(len(self.paths))
        taken: dict[str, int] = {}
        keep = sorted(i for i in order if taken.setdefault(self.labels[i], 0) < n
                      and not taken.update({self.labels[i]: taken[self.labels[i]] + 1}))

        def pick(values):
            return None if values is None else [values[i] for i in keep]
        return LabelledSet(self.name, pick(self.paths), pick(self.labels), pick(self.folds), pick(self.splits))


def _audio_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def read_esc50(root: Path) -> LabelledSet:
    meta = root / "meta" / "esc50.csv"
    paths, labels, folds = [], [], []
    with open(meta, newline="") as f:
        for row in csv.DictReader(f):
            try:
                paths.append(root / "audio" / row["filename"])
                labels.append(row["category"])
                folds.append(int(row["fold"]))
            except (KeyError, ValueError) as exc:
                raise ProbeError(f"{meta}: row {len(paths) + 1} lacks filename/category/fold ({exc})") from None
    return LabelledSet("esc50", paths, labels, folds=folds)


def read_class_folders(root: Path, name: str = "folders", skip=()) -> LabelledSet:
    paths, labels = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in skip and not p.name.startswith(".")):
        for path in _audio_in(folder):
            paths.append(path)
            labels.append(folder.name)
    return LabelledSet(name, paths, labels)


def read_gtzan(root: Path) -> LabelledSet:
    for sub in ("genres_original", "genres"):
        if (root / sub).is_dir():
            return read_class_folders(root / sub, "gtzan")
    return read_class_folders(root, "gtzan")


def read_speech_commands(root: Path) -> LabelledSet:
    data = read_class_folders(root, "speechcommands", skip=SPEECH_COMMANDS_SKIP)
    listed = {}
    for split, name in (("validation", "validation_list.txt"), ("test", "testing_list.txt")):
        for line in (root / name).read_text().splitlines():
            if line.strip():
                listed[line.strip()] = split
    data.splits = [listed.get(p.relative_to(root).as_posix(), "train") for p in data.paths]
    return data


def read_dataset(root: str | Path, layout: str = "auto") -> LabelledSet:
    root = Path(root)
    if not root.is_dir():
        raise ProbeError(f"--data {root}: not a directory")
    if layout == "auto":
        layout = ("esc50" if (root / "meta" / "esc50.csv").is_file() else
                  "speechcommands" if (root / "testing_list.txt").is_file() else
                  "gtzan" if any((root / s).is_dir() for s in ("genres_original", "genres")) else "folders")
    data = {"esc50": read_esc50, "gtzan": read_gtzan, "speechcommands": read_speech_commands,
            "folders": read_class_folders}[layout](root)
    if len(data.classes) < 2:
        raise ProbeError(f"--data {root} ({layout} layout): {len(data.paths)} files in {len(data.classes)} class(es); "
                         "a probe needs at least two classes")
    return data


# ---------------------------------------------------------------- embeddings

def embed(model_dir: str | Path, paths: list[Path], policy: str | None = None, threads: int | None = None,
          log=None, cache: Path | None = None) -> tuple[np.ndarray, dict]:
    """Frozen fp32 audio embeddings [N, D], one clip per run, through the runtime's decoder, front end and
    hash-checked session; returns them and a description of the model. With `cache`, features are kept
    in an .npy named by the artifact's sha256, the policy and the clip list (and the clips' sizes)."""
    manifest = Manifest.load(model_dir)
    artifact = manifest.find_artifact("audio", "fp32")
    policy = policy or manifest.model.clip_policy
    about = {"model": manifest.model.name, "heads": manifest.model.heads, "dims": manifest.model.embed_dim,
             "pooling": manifest.data["model"].get("pooling", "global token (projected, L2-normalised)"), "policy": policy}
    cached = None
    if cache:
        key = hashlib.sha256(json.dumps([artifact.sha256, policy, [(str(p), Path(p).stat().st_size) for p in paths]])
                             .encode()).hexdigest()[:20]
        cached = Path(cache) / f"{key}.npy"
        if cached.is_file():
            return np.load(cached), {**about, "seconds": 0.0, "cached": True}
    session = open_session("onnxruntime", manifest, artifact, [CPU_EP], threads)
    rows, start = [], time.perf_counter()
    for i, path in enumerate(paths):
        try:
            audio = decode_audio(path)[: MAX_SECONDS * SAMPLE_RATE]
        except (WavLinkError, OSError, ValueError) as exc:
            raise ProbeError(f"{path}: {exc}") from None
        rows.append(session.run({"input_features": clip_features(audio, manifest.model.n_mels, policy)[None]})[0])
        if log and (i + 1) % 50 == 0:
            log(f"  {manifest.model.name}: {i + 1}/{len(paths)} clips, {time.perf_counter() - start:.0f} s")
    features = np.stack(rows).astype(np.float64)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        np.save(cached, features)
    return features, {**about, "seconds": round(time.perf_counter() - start, 1)}


# ---------------------------------------------------------------- the probe

def fold_ids(data: LabelledSet, k: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """Fold number per item (-1 = train only) and how the folds were made."""
    if data.folds is not None:
        return np.asarray(data.folds), "official folds"
    if data.splits is not None:
        return np.array([1 if s == "test" else -1 for s in data.splits]), "trained on train, scored on the testing list"
    from sklearn.model_selection import StratifiedKFold

    counts = np.unique(data.labels, return_counts=True)[1]
    k = int(min(k, counts.min()))
    if k < 2:
        raise ProbeError(f"{data.name}: a class has {counts.min()} item(s); stratified folds need at least 2 per class")
    folds = np.zeros(len(data.labels), int)
    for fold, (_, test) in enumerate(StratifiedKFold(k, shuffle=True, random_state=seed).split(folds, data.labels), 1):
        folds[test] = fold
    return folds, f"{k} stratified folds (seed {seed})"


def probe(features: np.ndarray, labels, folds: np.ndarray, c: float = 1.0) -> dict:
    """Standardised logistic regression trained on the other folds, accuracy on each held-out fold."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(labels)
    scores, predicted = {}, np.full(len(labels), None, dtype=object)
    for fold in sorted(set(folds.tolist()) - {-1}):
        test = folds == fold
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))
        clf.fit(features[~test], labels[~test])
        predicted[test] = clf.predict(features[test])
        scores[int(fold)] = float((predicted[test] == labels[test]).mean())
    acc = np.array(list(scores.values()))
    return {"accuracy_mean": float(acc.mean()), "accuracy_std": float(acc.std()), "per_fold": scores,
            "chance": float(1 / len(set(labels.tolist()))), "predicted": predicted}


def group_accuracy(data: LabelledSet, predicted, groups_csv: Path, column: str) -> dict:
    """Accuracy of the held-out predictions per value of `column` in a csv whose `file` column names each
    clip relative to the data folder (bench/arrange_real.py writes meta.csv with `demo_split`)."""
    with open(groups_csv, newline="") as f:
        group = {row["file"]: row[column] for row in csv.DictReader(f)}
    root = Path(groups_csv).parent
    out = {}
    for value in sorted(set(group.values())):
        rows = [i for i, p in enumerate(data.paths) if group.get(Path(p).relative_to(root).as_posix()) == value
                and predicted[i] is not None]
        if rows:
            out[value] = {"accuracy": float(np.mean([predicted[i] == data.labels[i] for i in rows])), "n": len(rows)}
    return out


def table(rows: list[dict]) -> str:
    groups = sorted({g for r in rows for g in r.get("by_group", {})})
    lines = ["| model | pooling | dims | accuracy (mean ± std over folds) |" + "".join(f" {g} clips |" for g in groups),
             "|---|---|---|---|" + "---|" * len(groups)]
    for r in rows:
        cells = "".join(f" {100 * r['by_group'][g]['accuracy']:.1f} % (n {r['by_group'][g]['n']}) |"
                        if g in r.get("by_group", {}) else " – |" for g in groups)
        heads = "" if r["heads"].startswith("none") else f" ({r['heads']} heads)"
        lines.append(f"| {r['model']}{heads} | {r['pooling']} | {r['dims']} | "
                     f"{100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_std']:.1f} % |" + cells)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, help="export directory (repeat to compare)")
    parser.add_argument("--data", required=True)
    parser.add_argument("--layout", default="auto", choices=LAYOUTS)
    parser.add_argument("--folds", type=int, default=5, help="stratified folds where the set has none (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-per-class", type=int, default=0, help="at most N clips per class (seeded; 0 = all)")
    parser.add_argument("--policy", choices=CLIP_POLICIES, help="input policy (default: each model's own)")
    parser.add_argument("-C", type=float, default=1.0, help="inverse L2 strength of the logistic regression")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--cache", type=Path, help="keep each model's features here (reruns skip the encoder)")
    parser.add_argument("--groups", help="csv (file, <column>) giving each clip a group: accuracy is also reported per group")
    parser.add_argument("--group-column", default="demo_split")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    try:
        data = read_dataset(args.data, args.layout).limit_per_class(args.limit_per_class, args.seed)
        folds, how = fold_ids(data, args.folds, args.seed)
        log(f"{data.name}: {len(data.paths)} clips, {len(data.classes)} classes, {how}")
        rows = []
        for model in args.model:
            features, about = embed(model, data.paths, args.policy, args.threads, log, args.cache)
            result = probe(features, data.labels, folds, args.C)
            predicted = result.pop("predicted")
            if args.groups:
                result["by_group"] = group_accuracy(data, predicted, Path(args.groups), args.group_column)
            rows.append({**about, **result})
            log(f"  {about['model']}: {100 * rows[-1]['accuracy_mean']:.1f} % ({about['seconds']} s to embed)")
    except (ProbeError, WavLinkError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{data.name}: {len(data.paths)} clips, {len(data.classes)} classes (chance {100 / len(data.classes):.1f} %), {how}")
    print(table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps({"data": str(args.data), "layout": data.name, "clips": len(data.paths),
                                              "classes": data.classes, "folds": how, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
