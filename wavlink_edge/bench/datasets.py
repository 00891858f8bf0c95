"""Evaluation sets: the bundled split and loaders for local copies of Clotho, AudioCaps and ESC-50.

Each loader returns a `Dataset` of audio paths plus either captions (retrieval) or labels with
prompts (zero-shot classification). Missing audio files are counted and skipped, never silently
shrinking a test set: the count travels into the results.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wavlink_edge.runtime.audio import decode_audio
from wavlink_edge.runtime.errors import WavLinkError
from wavlink_edge.runtime.features import SAMPLE_RATE
from wavlink_edge.runtime.inputs import AUDIO_SUFFIXES

BUILTIN = Path(__file__).resolve().parent / "data" / "wavlink_eval"
ESC50_PROMPT = "the sound of {}"
MAX_SECONDS = 30  # one encoder window: longer clips are cut for every backend alike


@dataclass
class Dataset:
    name: str
    task: str  # "retrieval" | "classification"
    audio: list[str]
    captions: list[list[str]] = field(default_factory=list)  # retrieval: captions of audio[i]
    labels: list[int] = field(default_factory=list)  # classification: class index of audio[i]
    classes: list[str] = field(default_factory=list)
    missing_audio: int = 0
    source: str = ""

    @property
    def prompts(self) -> list[str]:
        return [ESC50_PROMPT.format(c.replace("_", " ")) for c in self.classes]

    def texts(self) -> tuple[list[str], np.ndarray]:
        """Every text query and the audio index it belongs to (retrieval) / class prompts (classification)."""
        if self.task == "classification":
            return self.prompts, np.arange(len(self.classes))
        texts = [c for caps in self.captions for c in caps]
        owner = np.array([i for i, caps in enumerate(self.captions) for _ in caps])
        return texts, owner

    def limit(self, n: int | None) -> Dataset:
        """First n items (deterministic): for quick runs and bounded full runs."""
        if not n or n >= len(self.audio):
            return self
        return Dataset(self.name, self.task, self.audio[:n], self.captions[:n], self.labels[:n], self.classes,
                       self.missing_audio, self.source + f" (first {n})")

    def summary(self) -> dict:
        return {"name": self.name, "task": self.task, "items": len(self.audio), "queries": len(self.texts()[0]),
                "missing_audio": self.missing_audio, "source": self.source}


def _index_audio(dirs: list[Path]) -> dict[str, Path]:
    """File name and stem -> path over candidate folders (first folder wins)."""
    index: dict[str, Path] = {}
    for d in dirs:
        if d.is_dir():
            for p in sorted(d.iterdir()):
                if p.suffix.lower() in AUDIO_SUFFIXES:
                    index.setdefault(p.name, p)
                    index.setdefault(p.stem, p)
    return index


def load_clotho(root: str | Path, split: str | None = None, name: str = "clotho") -> Dataset:
    """Clotho layout: a captions CSV (file_name, caption_1..caption_5) and the audio files.

    `root` may be the CSV itself or a folder holding `captions_<split>.csv` / `clotho_captions_<split>.csv`;
    audio is looked for under audio/<split>/, <split>/, audio/, clotho_audio_<split>/ and the folder itself.
    """
    root = Path(root)
    if root.is_file():
        csv_path, folder = root, root.parent
    else:
        folder = root
        candidates = [root / f"{p}captions_{s}.csv" for s in ([split] if split else ["test", "evaluation", "validation"])
                      for p in ("", "clotho_")]
        csv_path = next((c for c in candidates if c.is_file()), None)
        if csv_path is None:
            raise FileNotFoundError(f"no Clotho captions CSV in {root} (looked for {[c.name for c in candidates]})")
    split = split or csv_path.stem.split("captions_")[-1]
    index = _index_audio([folder / "audio" / split, folder / split, folder / "audio", folder / f"clotho_audio_{split}", folder])
    audio, captions, missing = [], [], 0
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cap_cols = [c for c in reader.fieldnames or [] if c.startswith("caption")]
        if "file_name" not in (reader.fieldnames or []) or not cap_cols:
            raise ValueError(f"{csv_path}: expected columns file_name, caption_1..caption_5, got {reader.fieldnames}")
        for row in reader:
            path = index.get(row["file_name"]) or index.get(Path(row["file_name"]).stem)
            if path is None:
                missing += 1
                continue
            audio.append(str(path))
            captions.append([row[c] for c in cap_cols if row[c].strip()])
    return Dataset(name, "retrieval", audio, captions, missing_audio=missing, source=str(csv_path))


def load_builtin(root: str | Path = BUILTIN) -> Dataset:
    """The bundled eval split. It lives in a checkout (bench/data/wavlink_eval, 12 MB of clips), not in the
    wheel: an installed package says where to get it."""
    if not (Path(root) / "captions_test.csv").is_file():
        raise WavLinkError(f"the built-in eval split is not at {root} (the wheel leaves it out): run from a "
                              "checkout of wavlink-edge, where it is bench/data/wavlink_eval, or regenerate it with "
                              "`wavlink-edge corpus generate --out DIR` then `wavlink-edge corpus export-eval --from DIR "
                              f"--out {root}` (needs Debian's sound packages), or pass --dataset clotho:DIR / esc50:DIR")
    return load_clotho(root, "test", name="wavlink_eval")


def load_audiocaps(csv_path: str | Path, audio_dir: str | Path, name: str = "audiocaps") -> Dataset:
    """AudioCaps CSV (audiocap_id, youtube_id, start_time, caption): one row per caption, clips named by
    youtube_id (`<id>.wav`, or `<id>_<start>.wav` as some downloaders write). Captions grouped per clip."""
    csv_path, audio_dir = Path(csv_path), Path(audio_dir)
    index = _index_audio([audio_dir])
    groups: dict[str, list[str]] = {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        need = {"audiocap_id", "youtube_id", "start_time", "caption"}
        if not need <= set(reader.fieldnames or []):
            raise ValueError(f"{csv_path}: expected columns {sorted(need)}, got {reader.fieldnames}")
        for row in reader:  # dict order = first appearance of each clip
            yid = row["youtube_id"]
            groups.setdefault(yid, []).append(row["caption"])
            if yid not in index and f"{yid}_{row['start_time']}" in index:
                index[yid] = index[f"{yid}_{row['start_time']}"]
    audio, captions, missing = [], [], 0
    for yid, caps in groups.items():
        path = index.get(yid)
        if path is None:
            missing += 1
            continue
        audio.append(str(path))
        captions.append(caps)
    return Dataset(name, "retrieval", audio, captions, missing_audio=missing, source=str(csv_path))


def load_esc50(root: str | Path, folds: list[int] | None = None, name: str = "esc50") -> Dataset:
    """ESC-50 (meta/esc50.csv: filename, fold, target, category, ...; audio/): zero-shot classification
    with one prompt per class, "the sound of <category>"."""
    root = Path(root)
    meta = root / "meta" / "esc50.csv"
    if not meta.is_file():
        raise FileNotFoundError(f"{root} is not an ESC-50 copy: {meta} is missing")
    with open(meta, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"filename", "fold", "target", "category"} <= set(rows[0]):
        raise ValueError(f"{meta}: expected columns filename, fold, target, category, got {list(rows[0])}")
    classes = {int(r["target"]): r["category"] for r in rows}
    class_list = [classes[t] for t in sorted(classes)]
    index = _index_audio([root / "audio"])
    audio, labels, missing = [], [], 0
    for r in rows:
        if folds and int(r["fold"]) not in folds:
            continue
        path = index.get(r["filename"])
        if path is None:
            missing += 1
            continue
        audio.append(str(path))
        labels.append(sorted(classes).index(int(r["target"])))
    return Dataset(name, "classification", audio, labels=labels, classes=class_list, missing_audio=missing,
                   source=str(meta))


def parse_spec(spec: str) -> Dataset:
    """CLI dataset spec: builtin | clotho:DIR_OR_CSV | audiocaps:CSV:AUDIO_DIR | esc50:DIR."""
    kind, _, rest = spec.partition(":")
    if kind == "builtin":
        return load_builtin(rest or BUILTIN)
    if kind == "clotho":
        return load_clotho(rest)
    if kind == "audiocaps":
        csv_path, _, audio_dir = rest.partition(":")
        return load_audiocaps(csv_path, audio_dir or Path(csv_path).parent)
    if kind == "esc50":
        return load_esc50(rest)
    raise ValueError(f"unknown dataset {spec!r}: use builtin, clotho:PATH, audiocaps:CSV:AUDIO_DIR or esc50:PATH")


def load_wave(path: str) -> np.ndarray:
    """Mono float32 at 16 kHz (the runtime's decoder: soundfile + soxr), first 30 s: the same samples go
    to every backend."""

    return np.ascontiguousarray(decode_audio(path)[: MAX_SECONDS * SAMPLE_RATE])
