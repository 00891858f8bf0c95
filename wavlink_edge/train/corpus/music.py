"""Music: short generated MIDI pieces rendered by fluidsynth with General MIDI soundfonts.

A piece is fixed by (family, tempo, mode, ensemble, variant); the variant picks the soundfont, the key
and the melody seed, so every cached render is reused by many clips with different crops.
"""
from __future__ import annotations

import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np

from .audio import run_to_wav

# family -> (GM programs for the lead, accompanying programs for an ensemble); drums use channel 10
FAMILIES = {
    "piano": ([0, 1], [32, 48]), "organ": ([19, 16], [32, 0]), "guitar": ([24, 25], [33, 24]),
    "strings": ([48, 40], [42, 49]), "brass": ([61, 56], [58, 0]), "flute": ([73, 75], [46, 48]),
    "mallets": ([12, 11], [32, 0]), "drums": ([], [33]),
}
TEMPOS = {"slow": (62, 78), "fast": (132, 160)}
MODES = {"major": [0, 2, 4, 5, 7, 9, 11], "minor": [0, 2, 3, 5, 7, 8, 10]}
PROGRESSION = {"major": [0, 4, 5, 3], "minor": [0, 5, 2, 6]}  # I-V-vi-IV / i-VI-III-VII as scale degrees
SOUNDFONTS = {  # path -> (Debian package, licence)
    "/usr/share/sounds/sf2/FluidR3_GM.sf2": ("fluid-soundfont-gm", "MIT"),
    "/usr/share/sounds/sf2/TimGM6mb.sf2": ("timgm6mb-soundfont", "GPL-2"),
}
N_VARIANTS = 3
PIECE_SECONDS = 31.0
TPQ = 480


def soundfonts() -> list[str]:
    return [p for p in SOUNDFONTS if Path(p).exists()]


def available() -> bool:
    return shutil.which("fluidsynth") is not None and bool(soundfonts())


def _vlq(n: int) -> bytes:
    out = [n & 0x7F]
    while n > 0x7F:
        n >>= 7
        out.append((n & 0x7F) | 0x80)
    return bytes(reversed(out))


def midi_bytes(events: list[tuple[int, bytes]], bpm: int) -> bytes:
    """Type-0 MIDI file from (absolute tick, message) pairs; small enough not to need a MIDI library."""
    track = _vlq(0) + b"\xff\x51\x03" + struct.pack(">I", 60_000_000 // bpm)[1:]
    now = 0
    for tick, msg in sorted(events, key=lambda e: (e[0], e[1][0] & 0xF0 != 0x80)):
        track += _vlq(tick - now) + msg
        now = tick
    track += _vlq(0) + b"\xff\x2f\x00"
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, TPQ) + b"MTrk" + struct.pack(">I", len(track)) + track


def _note(events, ch, start, dur, pitch, vel):
    events.append((start, bytes([0x90 | ch, pitch, vel])))
    events.append((start + dur, bytes([0x80 | ch, pitch, 0])))


def compose(family: str, tempo: str, mode: str, ensemble: bool, variant: int) -> tuple[bytes, int]:
    rng = np.random.default_rng([11, list(FAMILIES).index(family), list(TEMPOS).index(tempo),
                                 list(MODES).index(mode), int(ensemble), variant])
    bpm = int(rng.integers(*TEMPOS[tempo]))
    n_bars = int(np.ceil(PIECE_SECONDS * bpm / 60 / 4))
    root = 60 + int(rng.integers(-5, 6))
    scale = MODES[mode]
    lead, accomp = FAMILIES[family]
    events: list[tuple[int, bytes]] = []
    bar = 4 * TPQ

    def pitch(degree: int, octave: int = 0) -> int:
        return root + 12 * (octave + degree // 7) + scale[degree % 7]

    if lead:
        events.append((0, bytes([0xC0, lead[variant % len(lead)]])))
        step = TPQ // 2 if tempo == "slow" else TPQ // 4 * (2 if rng.random() < 0.5 else 1)
        degree = 7
        for t in range(0, n_bars * bar, step):
            if rng.random() < 0.15:  # rests give the melody phrasing
                continue
            degree = int(np.clip(degree + rng.choice([-2, -1, -1, 0, 1, 1, 2, 3]), 2, 13))
            _note(events, 0, t, int(step * 0.9), pitch(degree), int(rng.integers(70, 110)))
    if ensemble:
        bass, pad = accomp[0], accomp[-1]
        events += [(0, bytes([0xC1, bass])), (0, bytes([0xC2, pad]))]
        for b in range(n_bars):
            chord = PROGRESSION[mode][b % 4]
            _note(events, 1, b * bar, bar // 2, pitch(chord, -2), 90)
            _note(events, 1, b * bar + bar // 2, bar // 2, pitch(chord, -2), 80)
            if ensemble and lead:
                for d in (0, 2, 4):
                    _note(events, 2, b * bar, bar, pitch(chord + d, -1), 55)
    if family == "drums" or (ensemble and rng.random() < 0.6):
        for b in range(n_bars):
            for beat in range(8):
                t = b * bar + beat * TPQ // 2
                _note(events, 9, t, TPQ // 4, 42, 60)  # closed hi-hat on every eighth
                if beat in (0, 4) or (beat == 5 and rng.random() < 0.4):
                    _note(events, 9, t, TPQ // 4, 36, 110)  # kick
                if beat in (2, 6):
                    _note(events, 9, t, TPQ // 4, 38, 100)  # snare
    return midi_bytes(events, bpm), bpm


def render(family: str, tempo: str, mode: str, ensemble: bool, variant: int) -> np.ndarray:
    data, _ = compose(family, tempo, mode, ensemble, variant)
    fonts = soundfonts()
    sf2 = fonts[variant % len(fonts)]
    with tempfile.NamedTemporaryFile(suffix=".mid") as mid:
        mid.write(data)
        mid.flush()
        x = run_to_wav(["fluidsynth", "-ni", "-q", "-g", "0.6", "-r", "16000", "-F", "{out}", "-T", "wav",
                        sf2, mid.name])
    return x[: int(PIECE_SECONDS * 16000)]


def soundfont_of(variant: int) -> str:
    fonts = soundfonts()
    return Path(fonts[variant % len(fonts)]).name if fonts else ""
