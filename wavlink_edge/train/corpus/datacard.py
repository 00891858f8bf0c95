"""DATA_CARD.md: sources with their Debian packages and licences, counts, lengths and the split rule."""
from __future__ import annotations

from . import events, music, plan

SOURCES = [  # (what, Debian package, licence)
    ("speech synthesis, 6 languages, male/female/whisper variants", "espeak-ng", "GPL-3+"),
    ("speech synthesis, English male diphone voice kal_diphone", "festival, festvox-kallpc16k",
     "permissive Edinburgh/CMU licence (use, modify, redistribute with notice)"),
    ("MIDI rendering", "fluidsynth", "LGPL-2.1+"),
    *[(f"General MIDI soundfont {p.rsplit('/', 1)[1]}", pkg, lic) for p, (pkg, lic) in music.SOUNDFONTS.items()],
    *[(f"recorded sounds in {d}", pkg, lic) for d, (pkg, lic) in events.PACKAGES.items()],
    ("noise colours, tones, sweeps, clicks", "(numpy, generated here)", "n/a"),
]


def render(stats: dict, audio_format: str, eval_export: bool = False) -> str:
    lines = [
        "# WavLink generated audio–caption corpus" + (" — committed evaluation split" if eval_export else ""),
        "",
        "**This is generated data.** Every clip is synthesised or mixed by `wavlink_edge.train.corpus` from",
        "speech synthesisers, MIDI rendered with soundfonts, short recorded sound files shipped in Debian",
        "packages and synthetic signals; every caption is written from the generating parameters by templates.",
        "It is not a natural recording corpus and recall on it says nothing about AudioCaps or Clotho.",
        "",
        f"- Seed: {stats['seed']}; audio: {audio_format}; captions: Clotho layout, 5 paraphrases per clip.",
        f"- Regenerate: `python -m wavlink_edge.train.corpus generate --out DIR --seed {stats['seed']}`"
        + (" then `python -m wavlink_edge.train.corpus export-eval --from DIR --out bench/data/wavlink_eval`" if eval_export else ""),
        f"- Tools available at generation time: {stats['available']}",
        "",
        "## Sources and licences",
        "",
        "| source | Debian package | licence |",
        "|---|---|---|",
        *[f"| {w} | {p} | {lic} |" for w, p, lic in SOURCES],
        "",
        "Per-file licences of the recorded sounds are in each package's `debian/copyright`; `metadata_<split>.csv`",
        "names the file used by every clip (`event_files`). Game sounds come from freedroid-data and pingus-data",
        "(GPL-2+); tuxpaint-data sounds are GPL-2+. Redistributing clips that contain them follows those licences.",
        "",
        "## Counts and lengths",
        "",
        "| split | clips | hours | mean s | p5 | p50 | p95 | max | scenes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for split, s in stats["splits"].items():
        p = s["length_percentiles_s"]
        lines.append(f"| {split} | {s['clips']} | {s['hours']} | {s['length_mean_s']} | {p['5']} | {p['50']} | {p['95']} | "
                     f"{p['100']} | " + ", ".join(f"{k} {v}" for k, v in s["scenes"].items()) + " |")
    if "eval_audio_bytes" in stats:
        lines.append(f"\nCompressed audio in this folder: {stats['eval_audio_bytes'] / 1e6:.2f} MB.")
    lines += ["", "## Split by composition", "",
              "Each scene type has one pair of attributes. A fixed Latin diagonal of that pair grid",
              "(pair (i, j) with (i + j) mod max(|A|, |B|) = 0) is held out: those pairs occur **only** in `test`,",
              "all other pairs only in `train`, and every single attribute value still occurs in training. Other",
              "attributes (speaker style, SNR, tempo of a background, event position, length) vary freely in both.",
              "", "| scene | pair | held-out (test-only) pairs |", "|---|---|---|"]
    for scene, (_, ka, _, kb, _) in plan.SCENES.items():
        held = "; ".join(f"{a} × {'/'.join(b) if isinstance(b, tuple) else b}" for a, b in plan.pairs(scene, "test"))
        lines.append(f"| {scene} | {ka} × {kb} | {held} |")
    lines += ["", "Known limits: solo drum pieces have no key, so their major/minor held-out pair is not audible;",
              "captions never transcribe the spoken words; TTS voices are synthetic, not human.", ""]
    return "\n".join(lines)
