"""Generate the corpus: plan clips, render shared sources once, mix clips in parallel, write files."""
from __future__ import annotations

import csv
import io
import json
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from . import datacard, events, music, speech
from .audio import SR
from .captions import captions
from .mixing import render_clip, render_source, source_keys
from .oggfix import fix_serial
from .plan import composition, plan_split, resolve_events

SPLITS = ("train", "test")
CAPTION_COLUMNS = ["file_name"] + [f"caption_{i}" for i in range(1, 6)]
OPUS_LEVEL = 0.92  # ~28 kbit/s at 16 kHz: speech and music stay clear, 600 test clips fit in ~12 MB
_POOL: dict = {}  # rendered sources, set in each worker by _set_sources


def available() -> dict:
    eng = speech.available_engines()
    return {"speech": eng["espeak-ng"], "music": music.available(), "events": bool(events.inventory())}


def missing_packages(plans: dict | None = None) -> list[str]:
    """Debian packages a plan needs (all of them when no plan is given) that are not installed."""
    from pathlib import Path as _P

    clips = [c for cs in (plans or {}).values() for c in cs]
    needs_all = plans is None
    eng = speech.available_engines()
    out = []
    if (needs_all or any(c.get("speech", {}).get("engine") == "espeak-ng" for c in clips)) and not eng["espeak-ng"]:
        out.append("espeak-ng")
    if (needs_all or any(c.get("speech", {}).get("engine") == "festival" for c in clips)) and not eng["festival"]:
        out += ["festival", "festvox-kallpc16k"]
    if (needs_all or any("music" in c for c in clips)) and not music.available():
        out += ["fluidsynth"] + [pkg for path, (pkg, _) in music.SOUNDFONTS.items() if not _P(path).is_file()]
    if needs_all or any("events" in c for c in clips):
        out += [pkg for d, (pkg, _) in events.PACKAGES.items() if not _P(d).is_dir()]
    return sorted(set(out))


def _render_and_write(args) -> dict:
    clip, out_dir = args
    x, extra = render_clip(clip, _POOL)
    clip = {**clip, "extra": extra}
    path = Path(out_dir) / "audio" / clip["clip_id"].split("_")[0] / f"{clip['clip_id']}.flac"
    sf.write(str(path), x, SR, format="FLAC", subtype="PCM_16")
    return {"clip": clip, "captions": captions(clip), "length_s": len(x) / SR}


def _set_sources(sources: dict) -> None:
    global _POOL
    _POOL = sources


def _worker_pool(workers: int, sources: dict | None = None):
    """Worker processes started by a fork server (a clean single-threaded process), each given `sources`.
    A plain fork copies the caller's locks as they are: forked from a process with other threads running
    (tqdm's monitor, onnxruntime's and torch's pools, a test runner's), a child could wait forever on a
    lock one of them held at that instant -- seen here as a CI run hung in the corpus fixture."""
    return mp.get_context("forkserver").Pool(workers, initializer=_set_sources, initargs=(sources or {},))


def generate(out_dir, n_train: int = 3000, n_test: int = 600, seed: int = 0, workers: int = 2) -> dict:
    """Write DIR/audio/<split>/*.flac, captions_<split>.csv (Clotho), metadata_<split>.csv, DATA_CARD.md."""
    t0 = time.time()
    out = Path(out_dir)
    avail = available()
    plans = {"train": plan_split(seed, "train", n_train), "test": plan_split(seed, "test", n_test)}
    missing = missing_packages(plans)
    if missing:
        raise FileNotFoundError(f"the corpus plan needs Debian packages that are not installed: {', '.join(missing)} "
                                f"(apt-get install {' '.join(missing)})")
    plans = {s: resolve_events(clips) for s, clips in plans.items()}
    keys = sorted({k for clips in plans.values() for c in clips for k in source_keys(c)}, key=repr)
    with _worker_pool(workers) as pool:
        sources = dict(zip(keys, pool.map(render_source, keys, chunksize=4)))
    t_sources = time.time() - t0
    results = {}
    with _worker_pool(workers, sources) as pool:
        for split, clips in plans.items():
            (out / "audio" / split).mkdir(parents=True, exist_ok=True)
            results[split] = pool.map(_render_and_write, [(c, str(out)) for c in clips], chunksize=8)
            write_tables(out, split, results[split], ext=".flac")
    stats = {"seed": seed, "available": avail, "n_sources_rendered": len(keys),
             "seconds_sources": round(t_sources, 1), "seconds_total": round(time.time() - t0, 1),
             "splits": {s: split_stats(r) for s, r in results.items()}}
    (out / "stats.json").write_text(json.dumps(stats, indent=1))
    (out / "DATA_CARD.md").write_text(datacard.render(stats, audio_format="FLAC, 16-bit, 16 kHz mono"))
    return stats


def metadata_row(clip: dict, ext: str) -> dict:
    """Flatten a clip plan into one CSV row; absent parameters stay empty."""
    sp, m = clip.get("speech", {}), clip.get("music", {})
    evs = [events.inventory()[i] for i in clip.get("events", [])]
    scene, a, b = composition(clip)
    sources = ([f"{sp['engine']}"] if sp else []) + (["fluidsynth:" + music.soundfont_of(m["variant"])] if m else []) \
        + sorted({e["package"] for e in evs}) + (["synth"] if scene == "synth" or "noise" in clip else [])
    return {
        "file_name": clip["clip_id"] + ext, "scene": scene, "composition": f"{scene}|{a}|{b}",
        "length_s": clip["length_s"], "sources": ";".join(sources),
        "language": sp.get("language", ""), "gender": sp.get("gender", ""), "speech_style": sp.get("style", ""),
        "tts_engine": sp.get("engine", ""), "family": m.get("family", ""), "tempo": m.get("tempo", ""),
        "mode": m.get("mode", ""), "ensemble": m.get("ensemble", ""), "music_variant": m.get("variant", ""),
        "music_level": clip.get("music_level", ""), "noise": clip.get("noise", ""), "snr_db": clip.get("snr_db", ""),
        "room_noise": clip.get("room_noise", ""), "event_category": clip.get("category", ""),
        "events": ";".join(e["label"] for e in evs), "event_files": ";".join(Path(e["path"]).name for e in evs),
        "event_positions": ";".join(clip.get("extra", {}).get("event_positions", [])),
        "loudness": clip.get("loudness", ""), "background": clip.get("background", ""),
        "synth_kind": clip.get("kind", ""), "envelope": clip.get("envelope", ""), "seed": json.dumps(clip["seed"]),
        "plan": json.dumps({k: v for k, v in clip.items() if k not in ("seed",)}, sort_keys=True),
    }


def write_tables(out: Path, split: str, results: list[dict], ext: str) -> None:
    with open(out / f"captions_{split}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CAPTION_COLUMNS)
        for r in results:
            w.writerow([r["clip"]["clip_id"] + ext] + r["captions"])
    rows = [metadata_row(r["clip"], ext) for r in results]
    with open(out / f"metadata_{split}.csv", "w", newline="") as f:
        if rows:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


def split_stats(results: list[dict]) -> dict:
    lengths = np.array([r["length_s"] for r in results]) if results else np.zeros(1)
    scenes: dict = {}
    for r in results:
        scenes[r["clip"]["scene"]] = scenes.get(r["clip"]["scene"], 0) + 1
    return {"clips": len(results), "hours": round(float(lengths.sum()) / 3600, 3),
            "length_mean_s": round(float(lengths.mean()), 2),
            "length_percentiles_s": {str(p): round(float(np.percentile(lengths, p)), 2) for p in (5, 25, 50, 75, 95, 100)},
            "scenes": dict(sorted(scenes.items())),
            "compositions": sorted({"|".join(map(str, composition(r["clip"]))) for r in results})}


def load_split(directory, split: str) -> list[tuple[str, list[str]]]:
    """[(audio_path, [5 captions])] for a corpus or eval directory in the Clotho layout."""
    d = Path(directory)
    with open(d / f"captions_{split}.csv", newline="") as f:
        return [(str(d / "audio" / split / row["file_name"]), [row[c] for c in CAPTION_COLUMNS[1:]])
                for row in csv.DictReader(f)]


def _to_ogg(job) -> int:
    src, dst = job
    x, sr = sf.read(src, dtype="float32")
    buf = io.BytesIO()
    sf.write(buf, x, sr, format="OGG", subtype="OPUS", compression_level=OPUS_LEVEL)
    data = fix_serial(buf.getvalue())
    Path(dst).write_bytes(data)
    return len(data)


def export_eval(src, out_dir, split: str = "test", workers: int = 2) -> dict:
    """Copy one split as Opus-in-Ogg (byte-reproducible) with its captions, metadata and data card."""
    src, out = Path(src), Path(out_dir)
    (out / "audio" / split).mkdir(parents=True, exist_ok=True)
    for old in (out / "audio" / split).glob("*.ogg"):
        old.unlink()
    for name in (f"captions_{split}.csv", f"metadata_{split}.csv"):
        text = (src / name).read_text().replace(".flac,", ".ogg,")
        (out / name).write_text(text)
    jobs = [(path, str(out / "audio" / split / (Path(path).stem + ".ogg"))) for path, _ in load_split(src, split)]
    with _worker_pool(workers) as pool:
        total = sum(pool.map(_to_ogg, jobs, chunksize=8))
    stats = json.loads((src / "stats.json").read_text())
    stats["splits"] = {split: stats["splits"][split]}
    stats["eval_audio_bytes"] = total
    (out / "DATA_CARD.md").write_text(datacard.render(stats, audio_format=f"Opus in Ogg, 16 kHz mono (libsndfile compression level {OPUS_LEVEL})",
                                                      eval_export=True))
    return {"clips": len(load_split(out, split)), "audio_bytes": total}
