"""Arrange the labelled real recordings of the Debian packages the training corpus reads
(train/corpus/real.py) into class folders for `bench/probe.py`.

    python bench/arrange_real.py --out /tmp/real-probe

Most fine labels there have one or two recordings, too few to probe; they are grouped into six coarse
classes (animal, music, speech, vehicle, tools and household, water weather fire; labels that fit none
are left out) and speech, with hundreds of prompts, is capped (--speech, seeded). Each clip is the
recording as shipped (the `original` variant, decoded to 16 kHz mono, events cut to 10 s as the corpus
does), written as OUT/<class>/<clip id>.flac; OUT/meta.csv gives its fine label, package and the split
the demo model's corpus put it in (its heads were trained on the `train` ones: a probe of its global
token on them is optimistic).
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

if not __package__:  # run by path: run as this checkout's package module (wavlink_edge/run_by_path.py says why)
    import runpy
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "run_by_path.py"))["run"](__file__)

from wavlink_edge.runtime.features import SAMPLE_RATE
from wavlink_edge.train.corpus import real

COARSE = {
    "animal": ("frog blackbird crow cuckoo duck goose chicken heron lark sheep cow dog pig deer horse cat camel goat "
               "lion owl bird badger bat bear beaver bison bull chimpanzee dolphin donkey elephant ferret fox giraffe "
               "gorilla grasshopper hippopotamus hornet koala mosquito mouse rhea orca penguin quetzal rabbit seagull "
               "squirrel tiger toucan turkey vulture whale wombat zebra monkey bee").split() + ["sea lion"],
    "music": "music cello violin guitar bassoon cymbal drum bugle gong trumpet piano flute harp".split() + ["drum kit"],
    "speech": ["speech"],
    "vehicle": "train traffic jet airplane helicopter rocket".split() + ["car engine", "ship horn", "race car",
                                                                       "fire truck", "car horn", "level crossing"],
    "tools and household": ("hammer saw scissors door glass bottle kettle toilet telephone camera radio jackhammer "
                            "chainsaw machinery mallet whistle").split() + [
        "cash register", "washing machine", "vacuum cleaner", "wrapping paper", "candy wrapper", "electric sparks",
        "morse code"],
    "water weather fire": "rain thunder wind waterfall splash bubbles fire steam".split() + ["tree falling"],
}
SPEECH_CAP = 40


def coarse_class(label: str) -> str | None:
    return next((c for c, members in COARSE.items() if label in members), None)


def plan(seed: int = 0, speech: int = SPEECH_CAP) -> list[dict]:
    """The corpus's original recordings with a coarse class, speech capped by a seeded draw."""

    clips = [{**c, "split": split, "class": coarse_class(c["label"])} for split, items in real.plan(seed).items()
             for c in items if c["augment"] == "original"]
    clips = [c for c in clips if c["class"]]
    talk = [i for i, c in enumerate(clips) if c["class"] == "speech"]
    keep = set(np.random.default_rng([seed, 21]).permutation(talk)[:speech].tolist())
    return [c for i, c in enumerate(clips) if c["class"] != "speech" or i in keep]


def arrange(out: Path, seed: int = 0, speech: int = SPEECH_CAP, log=print) -> dict[str, int]:
    import soundfile as sf

    missing = real.missing_packages()
    if missing:
        raise RuntimeError(f"Debian packages not installed: {', '.join(missing)} (apt-get install -y {' '.join(missing)})")
    counts: dict[str, int] = {}
    rows = []
    for clip in plan(seed, speech):
        audio, _, info = real.render_clip(clip, seed)
        folder = out / clip["class"]
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / f"{clip['clip_id']}.flac", audio, SAMPLE_RATE)
        counts[clip["class"]] = counts.get(clip["class"], 0) + 1
        rows.append({"file": f"{clip['class']}/{clip['clip_id']}.flac", "class": clip["class"], "label": clip["label"],
                     "package": clip["package"], "source": info.get("file", clip["source"]), "demo_split": clip["split"]})
    with open(out / "meta.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    log(f"wrote {len(rows)} clips into {len(counts)} class folders under {out}: {counts}")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--speech", type=int, default=SPEECH_CAP, help=f"speech clips kept (default {SPEECH_CAP})")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        print(f"error: --out {out} is not empty", file=sys.stderr)
        return 2
    try:
        arrange(out, args.seed, args.speech)
    except (RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
