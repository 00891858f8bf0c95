"""Real recorded sound events from Debian packages, each file hand-labelled with a caption phrase.

The category is what the composition split holds out against backgrounds, so a test clip can pair,
say, a game sound with music although training never did.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from wavlink_edge.runtime.audio import decode_audio

from .audio import trim_silence

# directory -> (Debian package, licence of those files per debian/copyright)
PACKAGES = {
    "/usr/share/sounds/freedesktop/stereo": ("sound-theme-freedesktop", "CC-BY-SA-3.0 / CC-BY-3.0 / GPL-2+ (per file)"),
    "/usr/share/sounds/sound-icons": ("sound-icons", "GPL-2+"),
    "/usr/share/games/freedroid/sound": ("freedroid-data", "GPL-2+"),
    "/usr/share/games/pingus/data/sounds": ("pingus-data", "GPL-2+"),
    "/usr/share/tuxpaint/sounds": ("tuxpaint-data", "GPL-2+"),
}
CATEGORIES = ("alert", "game", "voice", "instrument", "household")

# (file-stem regex, category, caption phrase); first match wins, unmatched files are not used
LABELS = [
    (r"alarm-clock", "alert", "an alarm clock ringing"),
    (r"phone-incoming", "alert", "a phone ringing"),
    (r"phone-outgoing", "alert", "a telephone dial tone"),
    (r"^bell$|typewriterbell", "alert", "a small bell dinging"),
    (r"dialog-(error|warning)|suspend-error", "alert", "a warning beep"),
    (r"message|window-|dialog-information|complete|service-log", "alert", "a notification chime"),
    (r"device-|power-|network-|audio-volume|bleep", "alert", "a short electronic blip"),
    (r"^Alert$|Countdown", "alert", "an alarm siren"),
    (r"Blast|Explosion|GotIntoBlast", "game", "an explosion"),
    (r"Fire_Bullet", "game", "a laser gun firing"),
    (r"Collision|Got_Hit", "game", "a metallic crash"),
    (r"Elevator", "game", "an elevator whirring"),
    (r"Takeover|Menu|Refresh|Screenshot", "game", "a video game sound effect"),
    (r"audio-channel", "voice", "a voice announcing a speaker channel"),
    (r"goodidea|letsgo|ohno|yipee|areyousure|youcannot|tuxok|ThouArt", "voice", "a cartoon voice exclaiming"),
    (r"giggle", "voice", "someone giggling"),
    (r"Cry", "voice", "a robotic scream"),
    (r"cembalo|klavichord", "instrument", "a harpsichord note"),
    (r"guitar", "instrument", "a plucked guitar"),
    (r"piano|chord", "instrument", "a piano chord"),
    (r"trumpet", "instrument", "a trumpet playing"),
    (r"violoncello", "instrument", "a cello note"),
    (r"xylofon", "instrument", "a xylophone run"),
    (r"harp", "instrument", "a harp glissando"),
    (r"cymbaly|percussion", "instrument", "a percussion hit"),
    (r"camera-shutter|screen-capture", "household", "a camera shutter clicking"),
    (r"trash-empty", "household", "paper being crumpled"),
    (r"glass-water", "household", "water poured into a glass"),
    (r"splash", "household", "a splash of water"),
    (r"plop|bubble", "household", "a bubbly pop"),
    (r"click|scroll|flip|line_", "household", "a mouse click"),
    (r"eraser|paint|fill|stamp", "household", "a brush or stamp on paper"),
    (r"canary", "household", "a bird chirping"),
    (r"cockchafer", "household", "a buzzing insect"),
    (r"gummy-cat", "household", "a squeaky toy"),
    (r"digger|chink|ting|pipe", "household", "a metallic clink"),
]


@lru_cache(maxsize=1)
def inventory() -> tuple[dict, ...]:
    """All installed, labelled event files, sorted by path so indices are stable across machines."""
    items = []
    for d, (pkg, lic) in PACKAGES.items():
        for p in sorted(Path(d).glob("*")) if Path(d).is_dir() else []:
            if p.suffix not in (".wav", ".oga", ".ogg") or p.is_symlink():
                continue
            for pattern, cat, phrase in LABELS:
                if re.search(pattern, p.stem):
                    items.append({"path": str(p), "package": pkg, "licence": lic, "category": cat, "label": phrase})
                    break
    return tuple(items)


def by_category() -> dict[str, list[int]]:
    out: dict[str, list[int]] = {c: [] for c in CATEGORIES}
    for i, it in enumerate(inventory()):
        out[it["category"]].append(i)
    return {c: v for c, v in out.items() if v}


def load(index: int) -> np.ndarray:
    x = trim_silence(decode_audio(inventory()[index]["path"]))
    return x[: 8 * 16000]  # long jingles are cut so an event stays an event
