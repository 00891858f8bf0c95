"""A versions corpus for lyrics matching, generated here: cliques of clips that share their words.

Lyrics: two lines per "song", each line built from the parallel word lists of `corpus/speech.py`
(subject, verb, object, place), so songs share many words with each other (hard negatives). Versions
of a song differ in voice and accent (espeak-ng English voices and variants; espeak-ng German, French,
Spanish, Italian, Dutch voices reading the English words; festival's kal_diphone), speed, a pitch
contour (SSML prosody per phrase: a crude melody) and background music (fluidsynth pieces from
`corpus/music.py`, none or at 15/10/5/0 dB below the voice). Whole songs are held out for test.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ..corpus import music
from ..corpus.audio import SR, fade, fit_length, rms_db, run_to_wav, trim_silence
from ..corpus.speech import WORDS

VOICES = (  # (engine, espeak voice) -- accents: espeak-ng non-English voices reading the English words
    [("espeak-ng", f"en-us+{v}") for v in ("m1", "m3", "m7", "f1", "f3", "f5")]
    + [("espeak-ng", f"{lang}+{v}") for lang in ("en-gb", "en-gb-scotland", "en-029") for v in ("m2", "f2")]
    + [("espeak-ng", f"{lang}+{v}") for lang in ("de", "fr", "es", "it", "nl") for v in ("m4", "f4")]
    + [("festival", "kal_diphone")]
)
MUSIC_LEVELS_DB = (None, -15.0, -10.0, -5.0, 0.0)  # music level relative to the voice; None = a cappella
MUSIC_PIECES = [(family, tempo, mode, True, variant) for variant, (family, tempo, mode) in enumerate(
    [("piano", "slow", "major"), ("guitar", "fast", "minor"), ("strings", "slow", "minor"), ("organ", "fast", "major"),
     ("brass", "fast", "major"), ("flute", "slow", "major"), ("mallets", "fast", "minor"), ("drums", "fast", "major")])]
LICENCES = {
    "espeak-ng": "espeak-ng (Debian espeak-ng, GPL-3+)",
    "festival": "festival + festvox-kallpc16k (Debian, X11-style / free)",
    "fluidsynth": "fluidsynth (Debian, LGPL-2.1+) with fluid-soundfont-gm (MIT) / timgm6mb-soundfont (GPL-2)",
}


@dataclass
class Version:
    clip: str
    song: int
    split: str
    lyrics: str
    engine: str
    voice: str
    speed: int
    contour: list
    music: list | None
    music_db: float | None


def song_lines(song: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng([seed, 23, song])
    subj, verb, obj, place = WORDS["en"]
    lines = []
    for _ in range(2):
        parts = [p[int(rng.integers(len(p)))] for p in (subj, verb, obj, place)]
        lines.append(" ".join(parts))
    return lines


def _ssml(lines: list[str], contour: list[int], rate: int) -> str:
    phrases = [w for line in lines for w in _phrases(line)]
    body = " ".join(f'<prosody pitch="{contour[i % len(contour)]:+d}%">{p}</prosody>' for i, p in enumerate(phrases))
    return f'<speak><prosody rate="{rate}%">{body}</prosody></speak>'


def _phrases(line: str, size: int = 2) -> list[str]:
    words = line.split()
    return [" ".join(words[i : i + size]) for i in range(0, len(words), size)]


def render_voice(v: Version) -> np.ndarray:
    text = ". ".join(v.lyrics.split(" / ")) + "."
    if v.engine == "festival":
        return trim_silence(run_to_wav(["text2wave", "-o", "{out}"], stdin=text))
    return trim_silence(run_to_wav(["espeak-ng", "-m", "-v", v.voice, "-w", "{out}",
                                    _ssml(v.lyrics.split(" / "), v.contour, v.speed)]))


def plan(n_songs: int, versions: int, n_test: int, seed: int = 0) -> list[Version]:
    rng = np.random.default_rng([seed, 2023])
    test = set(rng.permutation(n_songs)[:n_test].tolist())
    out = []
    for song in range(n_songs):
        lyrics = " / ".join(song_lines(song, seed))
        voices = rng.permutation(len(VOICES))[:versions]
        for k, vi in enumerate(voices):
            engine, voice = VOICES[vi]
            level = MUSIC_LEVELS_DB[int(rng.integers(len(MUSIC_LEVELS_DB)))]
            piece = list(MUSIC_PIECES[int(rng.integers(len(MUSIC_PIECES)))]) if level is not None else None
            contour = [int(c) for c in rng.integers(-30, 60, size=int(rng.integers(2, 6)))]
            out.append(Version(f"song{song:03d}_v{k}", song, "test" if song in test else "train", lyrics, engine, voice,
                               int(rng.integers(70, 150)), contour, piece, level))
    return out


def render(v: Version, pieces: dict, seed: int = 0) -> np.ndarray:
    voice = render_voice(v)
    if v.music is None:
        return fade(voice)
    rng = np.random.default_rng([seed, v.song, int(v.clip[-1])])
    bed = fit_length(pieces[tuple(v.music)], len(voice) + SR, rng)
    lead = int(0.5 * SR)
    mix = bed * 10 ** ((rms_db(voice) + v.music_db - rms_db(bed)) / 20)
    mix[lead : lead + len(voice)] += voice
    return fade(mix / max(1.0, float(np.abs(mix).max()) / 0.98)).astype(np.float32)


def render_missing(out_dir: Path, versions_: list[Version], seed: int = 0) -> None:
    """Write `<clip>.flac` of each version not written yet (each music piece rendered once)."""
    pieces = {}
    for v in versions_:
        path = out_dir / f"{v.clip}.flac"
        if path.is_file():
            continue
        if v.music is not None and tuple(v.music) not in pieces:
            pieces[tuple(v.music)] = music.render(*v.music)
        sf.write(path, render(v, pieces, seed), SR)


def generate(out_dir: str | Path, n_songs: int = 60, versions: int = 5, n_test: int = 20, seed: int = 0) -> list[Version]:
    """Write `<clip>.flac` for every version and `versions.json`; already written clips are kept."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    versions_ = plan(n_songs, versions, n_test, seed)
    render_missing(out_dir, versions_, seed)
    (out_dir / "versions.json").write_text(json.dumps([asdict(v) for v in versions_], indent=1))
    return versions_


def load(out_dir: str | Path) -> list[Version]:
    return [Version(**row) for row in json.loads((Path(out_dir) / "versions.json").read_text())]
