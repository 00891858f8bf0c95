"""Turn a clip plan into audio: place sources on a timeline and mix them at planned relative levels.

Source renders (TTS utterances, MIDI pieces) come from a pool keyed by their parameters, rendered once
and shared by all clips; everything random here is drawn from the clip's own seeded RNG.
"""
from __future__ import annotations

import numpy as np

from . import events, music, speech, synth
from .audio import SR, fade, fit_length, rms_db, set_rms_db


def speech_keys(sp: dict, length_s: float) -> list[tuple]:
    """The sentences a clip can use: enough to fill its length (utterances last >= ~1.5 s), no more,
    so short clips do not make the pool render sentences they never play."""
    k = min(len(sp["sentences"]), int(length_s / 1.2) + 1)
    return [("speech", sp["engine"], sp["language"], sp["gender"], sp["style"], i) for i in sp["sentences"][:k]]


def music_key(m: dict) -> tuple:
    return ("music", m["family"], m["tempo"], m["mode"], m["ensemble"], m["variant"])


def source_keys(clip: dict) -> list[tuple]:
    keys = speech_keys(clip["speech"], clip["length_s"]) if "speech" in clip else []
    return keys + ([music_key(clip["music"])] if "music" in clip else [])


def render_source(key: tuple) -> np.ndarray:
    kind, *args = key
    return speech.render(*args) if kind == "speech" else music.render(*args)


def _speech_track(sp: dict, pool: dict, n: int, start: int, rng) -> np.ndarray:
    """Consecutive sentences by one speaker with short pauses, cut (with a fade) at the clip end."""
    out = np.zeros(n, dtype=np.float32)
    t = start
    for key in speech_keys(sp, n / SR) * 8:
        if t >= n - SR // 4:
            break
        u = pool[key]
        seg = u[: n - t]
        out[t: t + len(seg)] = set_rms_db(seg, -20) if len(seg) == len(u) else fade(set_rms_db(u, -20)[: len(seg)], 80)
        t += len(u) + int(rng.uniform(0.25, 0.7) * SR)
    return out


def _active_rms_db(x: np.ndarray) -> float:
    """Level of the non-silent part, so pauses between sentences do not inflate the relative level."""
    return rms_db(x[np.abs(x) > 1e-4]) if np.any(np.abs(x) > 1e-4) else -120.0


def _scale_to(x: np.ndarray, ref_db: float, rel_db: float) -> np.ndarray:
    return x * np.float32(10 ** ((ref_db + rel_db - _active_rms_db(x)) / 20))


def _position_word(centre: float) -> str:
    return "beginning" if centre < 1 / 3 else "end" if centre > 2 / 3 else "middle"


def render_clip(clip: dict, pool: dict) -> tuple[np.ndarray, dict]:
    """Return (audio, extra metadata decided while mixing, e.g. where each event landed)."""
    rng = np.random.default_rng(clip["seed"] + [1])
    n = int(round(clip["length_s"] * SR))
    scene, extra = clip["scene"], {}
    voice = lambda start: _speech_track(clip["speech"], pool, n, start, rng)  # noqa: E731
    bg_music = lambda: fit_length(pool[music_key(clip["music"])], n, rng)  # noqa: E731

    if scene == "speech":
        x = voice(int(rng.uniform(0.05, 0.5) * SR))
        if clip["room_noise"]:
            x = x + _scale_to(synth.coloured_noise("pink noise", n, rng), _active_rms_db(x), -float(rng.uniform(22, 30)))
    elif scene == "speech_music":
        x = voice(int(rng.uniform(0.3, 1.0) * SR))
        rel = -rng.uniform(12, 20) if clip["music_level"] == "quiet" else -rng.uniform(3, 8)
        x = x + _scale_to(bg_music(), _active_rms_db(x), float(rel))
    elif scene == "speech_noise":
        x = voice(int(rng.uniform(0.2, 0.8) * SR))
        x = x + _scale_to(synth.coloured_noise(clip["noise"], n, rng), _active_rms_db(x), -clip["snr_db"])
    elif scene == "music":
        x = bg_music()
    elif scene == "synth":
        x = synth.render(clip["kind"], clip["envelope"], n, rng)
    elif scene == "event_speech":
        ev = events.load(clip["events"][0])[: n // 2]
        t0 = int(rng.uniform(0.05, 0.4) * SR)
        x = voice(t0 + len(ev) + int(rng.uniform(0.2, 0.6) * SR))
        x[t0: t0 + len(ev)] += _scale_to(ev, -20, float(rng.uniform(-2, 6)))
    else:  # events over a background
        bg = clip["background"]
        x = {"silence": lambda: np.zeros(n, np.float32),
             "noise": lambda: synth.coloured_noise(clip["noise"], n, rng),
             "music": bg_music, "speech": lambda: voice(int(rng.uniform(0, 1.0) * SR))}[bg]()
        if bg != "silence":
            x = _scale_to(x, -28, 0)
        loud = clip["loudness"] == "loud"
        rel = rng.uniform(6, 12) if loud else rng.uniform(-6, 0)
        ref = -28 if bg != "silence" else -14 if loud else -30
        where = []
        for idx, pos in zip(clip["events"], clip["positions"]):
            ev = events.load(idx)[: n]
            t = min(int(pos * n), n - len(ev))
            x[t: t + len(ev)] += _scale_to(ev, ref, float(rel))
            where.append(_position_word((t + len(ev) / 2) / n))
        extra["event_positions"] = where
        return _limit(x), extra
    x = set_rms_db(x, float(rng.uniform(-26, -18)))
    return _limit(x), extra


def _limit(x: np.ndarray) -> np.ndarray:
    """Scale down (never clip) so the peak stays below full scale for the 16-bit FLAC."""
    peak = float(np.abs(x).max()) if len(x) else 0.0
    return (x * (0.97 / peak) if peak > 0.97 else x).astype(np.float32)
