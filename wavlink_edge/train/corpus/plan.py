"""Clip plans: what each clip contains, drawn from a seeded RNG, and the compositional split.

Every scene type has one *composition pair* (e.g. speech language x background instrument family).
A fixed diagonal of each pair grid is held out: those pairs appear only in the test split, every other
pair only in train, while every single value (each language, each family) still occurs in training.
Test recall therefore measures generalisation to unseen combinations, not memory of seen ones.
"""
from __future__ import annotations

import numpy as np

from . import events, music, speech, synth

VOICES = [(g, s) for g in speech.GENDERS for s in speech.STYLES]
TEMPO_MODES = [(t, m) for t in music.TEMPOS for m in music.MODES]
EVENT_BACKGROUNDS = ("silence", "noise", "music", "speech")
SNRS = (0, 5, 10, 20)
SPLIT_IDS = {"train": 0, "test": 1}
# Labelled event files per category with every package of events.PACKAGES installed. Plans draw positions
# within a category from these counts, so a plan never depends on what is installed; `resolve_events`
# maps positions to files and refuses (naming the packages) when the installed inventory differs.
EVENT_COUNTS = {"alert": 21, "game": 24, "voice": 18, "instrument": 23, "household": 28}

# scene -> (weight, name of pair axis A, values A, name of pair axis B, values B)
SCENES = {
    "speech": (0.15, "language", list(speech.LANGUAGES), "voice", VOICES),
    "speech_music": (0.20, "language", list(speech.LANGUAGES), "family", list(music.FAMILIES)),
    "speech_noise": (0.14, "language", list(speech.LANGUAGES), "noise", list(synth.NOISES)),
    "music": (0.15, "family", list(music.FAMILIES), "tempo_mode", TEMPO_MODES),
    "events": (0.16, "category", list(events.CATEGORIES), "background", list(EVENT_BACKGROUNDS)),
    "synth": (0.08, "kind", list(synth.KINDS), "envelope", list(synth.ENVELOPES)),
    "event_speech": (0.12, "category", list(events.CATEGORIES), "language", list(speech.LANGUAGES)),
}


def held_out(scene: str, a, b) -> bool:
    """Latin diagonal of the pair grid: about 1/max(|A|,|B|) of pairs, each row/column at most once."""
    _, _, va, _, vb = SCENES[scene]
    return (va.index(a) + vb.index(b)) % max(len(va), len(vb)) == 0


def pairs(scene: str, split: str) -> list[tuple]:
    _, _, va, _, vb = SCENES[scene]
    return [(a, b) for a in va for b in vb if held_out(scene, a, b) == (split == "test")]


def composition(clip: dict) -> tuple:
    _, ka, _, kb, _ = SCENES[clip["scene"]]
    return clip["scene"], _hashable(clip[ka]), _hashable(clip[kb])


def _hashable(v):
    return tuple(v) if isinstance(v, list) else v


def _length(rng: np.random.Generator, split: str) -> float:
    """Mostly short clips (feature extraction downstream is the bottleneck), a tail up to 30 s in train."""
    if split == "test":
        return float(rng.uniform(1.5, 9.0))
    u = rng.random()
    lo, hi = (1.5, 9.0) if u < 0.82 else (9.0, 18.0) if u < 0.94 else (18.0, 30.0)
    return float(rng.uniform(lo, hi))


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def _speaker(rng, lang: str, gender: str, style: str) -> dict:
    # festival's only voice is an English man; give it a share of those clips for a second timbre
    use_festival = lang == "en" and gender == "male" and style == "normal" and rng.random() < 0.4
    return {"language": lang, "gender": gender, "style": style,
            "engine": "festival" if use_festival else "espeak-ng",
            "sentences": [int(i) for i in rng.permutation(speech.N_SENTENCES)]}


def _music(rng, family: str, tempo: str | None = None, mode: str | None = None) -> dict:
    return {"family": family, "tempo": tempo or _pick(rng, list(music.TEMPOS)),
            "mode": mode or _pick(rng, list(music.MODES)), "ensemble": bool(rng.random() < 0.5),
            "variant": int(rng.integers(music.N_VARIANTS))}


def plan_clip(rng: np.random.Generator, split: str) -> dict:
    scenes = list(SCENES)
    w = np.array([SCENES[s][0] for s in scenes])
    scene = scenes[int(rng.choice(len(scenes), p=w / w.sum()))]
    a, b = _pick(rng, pairs(scene, split))
    clip = {"scene": scene, "length_s": round(_length(rng, split), 2)}
    if scene == "speech":
        clip |= {"language": a, "voice": list(b), "speech": _speaker(rng, a, *b)}
        clip["room_noise"] = bool(rng.random() < 0.3)
    elif scene == "speech_music":
        clip |= {"language": a, "family": b,
                 "speech": _speaker(rng, a, _pick(rng, speech.GENDERS), _pick(rng, ("normal", "normal", "fast", "slow"))),
                 "music": _music(rng, b), "music_level": _pick(rng, ("quiet", "prominent"))}
    elif scene == "speech_noise":
        clip |= {"language": a, "noise": b, "snr_db": int(_pick(rng, SNRS)),
                 "speech": _speaker(rng, a, _pick(rng, speech.GENDERS), _pick(rng, ("normal", "normal", "shouting", "fast")))}
    elif scene == "music":
        clip |= {"family": a, "tempo_mode": list(b), "music": _music(rng, a, *b)}
    elif scene == "events":
        n = int(rng.choice([1, 1, 2, 3]))
        idx = rng.choice(EVENT_COUNTS[a], size=n, replace=False)
        clip |= {"category": a, "background": b, "events": [int(i) for i in idx],
                 "positions": sorted(float(p) for p in rng.uniform(0.05, 0.8, size=n)),
                 "loudness": _pick(rng, ("loud", "quiet"))}
        if b == "noise":
            clip |= {"noise": _pick(rng, list(synth.NOISES))}
        elif b == "music":
            clip |= {"music": _music(rng, _pick(rng, list(music.FAMILIES)))}
        elif b == "speech":
            clip |= {"speech": _speaker(rng, _pick(rng, list(speech.LANGUAGES)), _pick(rng, speech.GENDERS), "normal")}
    elif scene == "synth":
        clip |= {"kind": a, "envelope": b}
    elif scene == "event_speech":
        clip |= {"category": a, "language": b, "events": [int(rng.integers(EVENT_COUNTS[a]))],
                 "speech": _speaker(rng, b, _pick(rng, speech.GENDERS), _pick(rng, ("normal", "normal", "whispering", "shouting")))}
        clip["length_s"] = max(clip["length_s"], 3.5)  # room for the event and then a sentence
    return clip


def resolve_events(clips: list[dict]) -> list[dict]:
    """Positions within a category -> indices into events.inventory(); needs the event packages."""
    installed = {c: len(v) for c, v in events.by_category().items()}
    if installed != EVENT_COUNTS:
        from pathlib import Path

        missing = [pkg for d, (pkg, _) in events.PACKAGES.items() if not Path(d).is_dir()]
        raise FileNotFoundError("recorded event sounds differ from the plan's inventory "
                                f"(installed {installed}, expected {EVENT_COUNTS}); Debian packages missing: "
                                f"{', '.join(missing) or 'none (a different version?)'}")
    cats = events.by_category()
    return [{**c, "events": [cats[c["category"]][i] for i in c["events"]]} if "events" in c else c for c in clips]


def plan_split(seed: int, split: str, n: int) -> list[dict]:
    """Each split has its own RNG stream, so the test split does not depend on --n-train; nothing depends
    on which packages are installed (event files are positions until `resolve_events`)."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split]])
    clips = []
    for i in range(n):
        clip = plan_clip(rng, split)
        clip["clip_id"] = f"{split}_{i:05d}"
        clip["seed"] = [seed, SPLIT_IDS[split], i]
        clips.append(clip)
    return clips
