"""The surveyed Debian packages (docs/real_audio_candidates.md): thousands of labelled real recordings, one
caption vocabulary (vocabulary.LABELS), split by whole package.

debian_sounds.tsv.gz beside this file lists every labelled file (package, path, label, note, duration): rows
labelled `HELDOUT:` (the test-only classes frog and bee) and rows noted `dup-of` (byte-identical to an earlier
row) are never used. TEST_PACKAGES are test-only as whole packages; the rest are train packages. Per class, at
most TRAIN_CAP files of the train packages and TEST_CAP of the test packages are taken (picked by a hash of the
path, so the choice is stable), so the big drum, speech and guitar-strum sets do not swamp the rest.
"""
from __future__ import annotations

import csv
import gzip
import zlib
from pathlib import Path

import numpy as np

from wavlink_edge.runtime.audio import decode_audio
from wavlink_edge.runtime.features import SAMPLE_RATE as SR

from .vocabulary import LABELS

TABLE = Path(__file__).with_name("debian_sounds.tsv.gz")
# `path<TAB>path of the earlier byte-identical file` for every surveyed file whose bytes an earlier row (table
# order) or a file the corpus already uses holds: written by find_duplicates() from the installed packages
DUPLICATES = Path(__file__).with_name("debian_sounds_duplicates.tsv")
# package -> licence of the sound files (debian/copyright, as surveyed)
LICENCES = {
    "scorched3d-data": "GPL-2+ (base mod); apoc mod (animals, car horns, sirens, crowd) CC-BY-SA-3.0",
    "megaglest-data": "CC-BY-SA-3.0", "widelands-data": "GPL-2+ (3 music tracks CC-BY-SA-3.0)",
    "flare-game": "CC-BY-SA-3.0+", "ufoai-sound": "per file: GPL-2+ / CC-BY-SA-3.0 / CC-BY-3.0 / public domain",
    "btanks-data": "GPL-2+ with Battle-Tanks exception", "micropolis-data": "GPL-3+", "wesnoth-1.16-data": "GPL-2+",
    "hedgewars-data": "GFDL-1.3 (Droplet*: CC-BY-SA-3.0); music GPL-2",
    "minetest-data": "CC-BY-SA-3.0 (doors: CC-BY-3.0; some CC0)", "frozen-bubble-data": "GPL-2", "tuxfootball": "GPL-2+",
    "foobillardplus-data": "GPL-2", "sonic-pi-samples": "CC0", "lmms-common": "GPL-2+", "sound-icons": "GPL-2+",
    "hydrogen-drumkits": "per kit: GPL-2 / GPL-2+ / CC-BY-SA-3.0-us / CC-BY-SA-3.0",
    "hydrogen-drumkits-effects": "CC-BY-3.0 (belofilms_GuitarStrums)", "hydrogen-data": "GPL-2+",
    "bucklespring-data": "GPL-2+", "wordwarvi-sound": "CC-BY-SA-3.0",
    "warmux-data": "GPL-2+", "freeciv-data": "GPL-2+", "stormbaancoureur-data": "GPL-3",
    "freedink-data": "zlib-style (Dink data) / GPL-3+ (FreeDink additions)", "extremetuxracer-data": "GPL-2+",
    "netpanzer-data": "GPL-2+", "mirrormagic-data": "GPL-2", "tuxpaint-data": "GPL-2+",
    "tuxmath-data": "GPL-3+", "tuxtype-data": "GPL-2", "heroes-sound-effects": "GPL-2+", "gl-117-data": "GPL-2",
    "gnubg-data": "GPL-3+", "gnome-audio": "GPL / CC-BY-SA-2.0", "lomiri-sounds": "CC0 / CC-BY-3.0 / CC-BY-4.0 / CC-BY-SA-3.0 per file",
    "asterisk-prompt-it-menardi-wav": "CC-BY-SA-3.0", "pocketsphinx-testdata": "BSD-2", "neverball-common": "GPL-2+",
    "moon-lander-data": "BSD-2-Clause", "alsa-utils": "GPL-2",
}
# Whole packages never trained on: most of their classes have train audio from other packages (footsteps, pain
# cries, guns, fire, doors, drums, horses, wolves, applause, car horns...); the rest are the stated unseen classes.
TEST_PACKAGES = ("ufoai-sound", "hydrogen-drumkits", "wesnoth-1.16-data", "micropolis-data", "foobillardplus-data",
                 "frozen-bubble-data", "tuxfootball")
TRAIN_CAP, TEST_CAP = 40, 10  # files a class
SPEECH_CAP, MUSIC_CAP = 150, 60  # train files: these two classes are plentiful already
EXCERPT_S = 10  # longer files are cut to one seeded excerpt of this length
NOT_DECODABLE = (".raw", ".voc")  # headerless or Creative Voice files: left out
# named .ogg but WAV files with a malformed 'fmt ' chunk (libsndfile refuses them): left out
NOT_READABLE = ("usr/share/lmms/samples/effects/scratch01.ogg", "usr/share/lmms/samples/effects/wind_chimes01.ogg",
                "usr/share/lmms/samples/instruments/harpsichord01.ogg")
# Not taken: grandorgue-demo (its pipe-organ samples are WavPack inside WAV names; libsndfile cannot read them) and
# the surveyed packages of speech and music only, big downloads for classes the corpus has plenty of
# (ktuberling-data, klettres-data, kajongg, warzone2100-data, trigger-rally-data, fillets-ng-data, colobot, xmoto,
# marsshooter), plus openarena-data (pulls ~1 GB of maps) and the program packages (kanagram, python3-pyo,
# performous, pangzero, supercollider-common, puredata-doc).


def table() -> list[dict]:
    with gzip.open(TABLE, "rt", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def duplicates() -> dict[str, str]:
    with open(DUPLICATES, encoding="utf-8") as f:
        return dict(line.rstrip("\n").split("\t") for line in f if line.strip())


def usable(row: dict, test_classes=(), copies: dict | None = None) -> bool:
    return (row["package"] in LICENCES and not row["label"].startswith("HELDOUT:") and "dup-of" not in row["note"]
            and row["path"] not in (duplicates() if copies is None else copies)
            and LABELS.get(row["label"]) is not None and LABELS[row["label"]][0] not in test_classes
            and not row["path"].lower().endswith(NOT_DECODABLE) and row["path"] not in NOT_READABLE)


def _read(path: str) -> bytes:
    import zipfile

    archive, _, member = path.partition("!")
    if member:
        with zipfile.ZipFile("/" + archive) as z:
            return z.read(member)
    return Path("/" + archive).read_bytes()


def find_duplicates(used_elsewhere: list[Path]) -> dict[str, str]:
    """{path: earlier path with the same bytes} over the table's rows of LICENCES packages (HELDOUT rows
    included, so a copy of a held-out file is never trained on), after `used_elsewhere` (files the corpus already
    takes from other packages). Needs the packages installed."""
    import hashlib

    seen, out = {}, {}
    for p in used_elsewhere:
        seen.setdefault(hashlib.sha256(p.read_bytes()).hexdigest(), str(p).lstrip("/"))
    for row in table():
        if row["package"] not in LICENCES:
            continue
        digest = hashlib.sha256(_read(row["path"])).hexdigest()
        if digest in seen:
            out[row["path"]] = seen[digest]
        else:
            seen[digest] = row["path"]
    return out


def _stable_order(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: zlib.crc32(f"{r['package']}/{r['path']}".encode()))


def select(split: str, test_classes=()) -> list[dict]:
    """The rows of one split, capped per class, in table order."""
    copies = duplicates()
    rows = [r for r in table() if usable(r, test_classes, copies) and (r["package"] in TEST_PACKAGES) == (split == "test")]
    by_class: dict[str, list[dict]] = {}
    for r in _stable_order(rows):
        by_class.setdefault(LABELS[r["label"]][0], []).append(r)
    caps = {"speech": SPEECH_CAP, "music": MUSIC_CAP} if split == "train" else {}
    keep = {id(r) for c, rs in by_class.items() for r in rs[: caps.get(c, TRAIN_CAP if split == "train" else TEST_CAP)]}
    return [r for r in rows if id(r) in keep]


def missing_packages(rows: list[dict]) -> list[str]:
    """Packages of these rows whose files are not on this machine."""
    first = {}
    for r in rows:
        first.setdefault(r["package"], r)
    return sorted(p for p, r in first.items() if not Path("/" + r["path"].split("!")[0]).exists())


def decode(row: dict, seed) -> tuple[np.ndarray, str]:
    """The recording (16 kHz mono), at most EXCERPT_S seconds (a seeded excerpt of longer files); archive members
    (`ARCHIVE!MEMBER`) are read from the zip archive."""
    import tempfile
    import zipfile

    archive, _, member = row["path"].partition("!")
    path = Path("/" + archive)
    if not path.exists():
        raise FileNotFoundError(f"Debian package {row['package']} is not installed ({path} missing): apt-get install {row['package']}")
    if member:
        with zipfile.ZipFile(path) as z, tempfile.TemporaryDirectory(prefix="wlreal_") as tmp:
            local = Path(tmp) / Path(member).name  # decode_audio reads files
            local.write_bytes(z.read(member))
            x = decode_audio(str(local))
    else:
        x = decode_audio(str(path))
    if len(x) > EXCERPT_S * SR:
        start = int(np.random.default_rng(seed).integers(0, len(x) - EXCERPT_S * SR))
        x = x[start : start + EXCERPT_S * SR]
    return x, row["path"]
