"""Regenerate the bundled calibration set and the held-out fidelity set (16 kHz mono OGG + sentences).

    python quantization/make_sets.py

Calibration (quantization/calibration/) and held-out evaluation (quantization/heldout/) are disjoint by
construction: different espeak-ng languages and sentences, different source recordings, different
melodies and mixtures. The held-out set is used together with runtime/samples/*.flac, whose source
recordings (freedesktop bell/complete/phone-incoming-call) are never used for calibration.
Sources and licences are listed in each folder's README.md. Needs espeak-ng and fluidsynth.
"""
from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

if not __package__:  # run by path: run as this checkout's package module (wavlink_edge/run_by_path.py says why)
    import runpy
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "run_by_path.py"))["run"](__file__)

from wavlink_edge.runtime.audio import decode_audio
from wavlink_edge.runtime.features import SAMPLE_RATE as SR

HERE = Path(__file__).resolve().parent
FREEDESKTOP = Path("/usr/share/sounds/freedesktop/stereo")
SOUND_ICONS = Path("/usr/share/sounds/sound-icons")
SF2 = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
# Source recordings of runtime/samples (the held-out clips): never used for calibration.
RESERVED_FOR_EVAL = {"bell.oga", "complete.oga", "phone-incoming-call.oga", "phone-outgoing-calling.oga",
                     "message-new-instant.oga", "alarm-clock-elapsed.oga", "glass-water-1.wav", "piano-3.wav"}

CAL_SPEECH = [  # (espeak voice, text)
    ("en-us", "Please close the window before the storm arrives tonight."),
    ("en-gb", "The museum opens at nine and the guided tour starts at ten."),
    ("en-us+f3", "I think the train was delayed because of the snow on the tracks."),
    ("en-gb-scotland", "We walked along the river until the sun went down."),
    ("nl", "De fiets staat achter het huis naast de groene deur."),
    ("sv", "Vi åker till landet i sommar och badar i sjön varje dag."),
    ("pl", "Jutro rano pojedziemy autobusem do centrum miasta."),
    ("cs", "Na zahradě roste velká jabloň a několik keřů rybízu."),
    ("fi", "Huomenna sataa lunta ja tuulee kovasti pohjoisesta."),
    ("tr", "Akşam yemeğinden sonra sahilde uzun bir yürüyüş yaptık."),
    ("ru", "Вечером мы слушали музыку и пили горячий чай."),
    ("hi", "कल सुबह हम बाज़ार जाएंगे और ताज़ी सब्ज़ियाँ खरीदेंगे।"),
    ("ja", "きょうは とても いい てんき ですね。"),
    ("cmn", "我们明天早上去公园散步。"),
    ("en-us+m7", "Turn left at the second traffic light and park behind the bakery."),
    ("nl+f2", "Het concert begon laat maar de muziek was prachtig."),
]
HELDOUT_SPEECH = [
    ("en-us+f2", "A dog barks twice while a car drives past on a wet road."),
    ("el", "Το πρωί πίνουμε καφέ στη βεράντα και διαβάζουμε εφημερίδα."),
    ("hu", "A könyvtár csütörtökön hosszabb ideig tart nyitva."),
    ("ko", "오늘 저녁에 친구들과 영화를 보러 갑니다."),
]
CAL_TEXTS = """a man speaks calmly in a quiet room
rain falls steadily on a metal roof
a crowd cheers loudly at a football match
birds chirp in the early morning forest
a car engine starts and idles
someone types quickly on a keyboard
a church bell rings three times
waves crash against rocks on the shore
a child laughs while playing outside
an orchestra tunes before the concert
footsteps echo in a long hallway
a helicopter flies overhead
a kettle whistles on the stove
wind howls through the trees at night
a woman sings a slow song with a guitar
a door creaks open and slams shut
thunder rumbles in the distance
a train horn blows as it passes a crossing
water drips from a tap into a sink
people talk and dishes clatter in a busy restaurant
a cat meows repeatedly
an electric drill whirs briefly
applause after a speech
a saxophone plays a jazz solo over drums
a baby cries and a parent hushes it
the hum of a refrigerator
a lawn mower runs in the garden
glass shatters on a tiled floor
a clock ticks in silence
heavy traffic on a city street with honking
a violin plays a high sustained note
frogs croak near a pond at night
someone whistles a cheerful tune
a vacuum cleaner runs then stops
sirens approach and fade away
a spoon stirs coffee in a ceramic cup
a news reader speaks in French
two men argue in German
an announcement at an airport terminal
music with a strong electronic beat
synthesizer pad with slow chords
a short beep followed by a long tone
paper is crumpled and thrown away
a dog growls then barks
soft piano music in a hotel lobby
a motorbike accelerates away
rustling leaves and distant voices
an old radio plays static between stations
"""
HELDOUT_TEXTS = """a woman speaks over a slow piano melody
a phone is ringing
a short chime, like a notification sound
a dog barks while a car drives past in the rain
people speak Greek on a terrace
an alarm clock goes off and keeps beeping
a choir sings in a large cathedral
a drum roll followed by a cymbal crash
someone pours water into a glass
the sound of a busy office with printers and phones
a harpsichord plays a baroque piece
a small bell and a synthesizer chord
"""


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def speech(voice: str, text: str, speed: int = 160) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        _run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(wav), text])
        return decode_audio(wav)


def melody(notes: list[int], program: int, seconds_per_note: float = 0.4, seed: int = 0) -> np.ndarray:
    """Render a note sequence with fluidsynth (General MIDI program) via a tiny hand-written MIDI file."""
    ticks = 480
    events = bytearray([0x00, 0xC0, program])
    dur = int(ticks * seconds_per_note * 2)  # 120 bpm: 1 beat = 0.5 s = 480 ticks
    for n in notes:
        events += bytes([0x00, 0x90, n, 90]) + _varlen(dur) + bytes([0x80, n, 0])
    events += bytes([0x00, 0xFF, 0x2F, 0x00])
    track = b"MTrk" + len(events).to_bytes(4, "big") + bytes(events)
    midi = b"MThd" + (6).to_bytes(4, "big") + (0).to_bytes(2, "big") + (1).to_bytes(2, "big") + ticks.to_bytes(2, "big") + track
    with tempfile.TemporaryDirectory() as tmp:
        mid, wav = Path(tmp) / "m.mid", Path(tmp) / "m.wav"
        mid.write_bytes(midi)
        _run(["fluidsynth", "-ni", "-g", "0.8", "-r", "44100", "-F", str(wav), str(SF2), str(mid)])
        return decode_audio(wav)


def _varlen(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.insert(0, (value & 0x7F) | 0x80)
        value >>= 7
    return bytes(out)


def _norm(x: np.ndarray, peak: float = 0.7) -> np.ndarray:
    return (x / max(1e-6, np.abs(x).max()) * peak).astype(np.float32)


def _mix(a: np.ndarray, b: np.ndarray, gain_b: float = 0.5) -> np.ndarray:
    n = max(a.size, b.size)
    out = np.zeros(n, np.float32)
    out[: a.size] += a
    out[: b.size] += gain_b * b
    return _norm(out)


def _concat(*parts: np.ndarray, gap: float = 0.3) -> np.ndarray:
    silence = np.zeros(int(gap * SR), np.float32)
    return _norm(np.concatenate([p for part in parts for p in (part, silence)]))


def _write(folder: Path, name: str, audio: np.ndarray, sources: list[str], rows: list[str]) -> None:
    audio = audio[: 20 * SR]
    sf.write(folder / f"{name}.ogg", audio, SR, format="OGG", subtype="VORBIS")
    rows.append(f"| `{name}.ogg` | {audio.size / SR:.1f} s | {'; '.join(sources)} |")


def build_calibration(folder: Path) -> list[str]:
    rows: list[str] = []
    rng = np.random.default_rng(1234)
    fd = [p for p in sorted(FREEDESKTOP.glob("*.oga")) if p.name not in RESERVED_FOR_EVAL]
    icons = [p for p in sorted(SOUND_ICONS.glob("*.wav")) if p.name not in RESERVED_FOR_EVAL and not p.is_symlink()]
    speech_clips = []
    for i, (voice, text) in enumerate(CAL_SPEECH):
        s = speech(voice, text, speed=int(rng.integers(130, 190)))
        speech_clips.append((voice, s))
        _write(folder, f"speech_{i:02d}_{voice.replace('+', '_')}", _norm(s), [f"espeak-ng -v {voice}"], rows)
    melodies = [([60, 62, 64, 65, 67, 69, 71, 72], 0), ([48, 55, 52, 55, 48, 55, 52, 55], 32),
                ([72, 71, 69, 67, 65, 64, 62, 60], 40), ([60, 64, 67, 72, 67, 64, 60], 73),
                ([50, 53, 57, 62, 57, 53], 24), ([45, 45, 52, 52, 54, 54, 52], 19)]
    music = []
    for i, (notes, prog) in enumerate(melodies):
        m = melody(notes, prog)
        music.append(m)
        _write(folder, f"music_{i:02d}_gm{prog}", _norm(m), [f"fluidsynth FluidR3_GM program {prog}, own melody"], rows)
    for i, p in enumerate(fd[::3][:6]):
        _write(folder, f"event_fd_{i:02d}", _norm(decode_audio(p)), [f"freedesktop {p.name}"], rows)
    for i, p in enumerate(icons[::3][:6]):
        _write(folder, f"event_icon_{i:02d}", _norm(decode_audio(p)), [f"sound-icons {p.name}"], rows)
    # mixtures: speech over music, speech over an event, a sequence of events, speech in noise
    for i in range(4):
        (v, s), m = speech_clips[i * 3], music[i % len(music)]
        _write(folder, f"mix_speech_music_{i:02d}", _mix(s, np.tile(m, 3)[: s.size], 0.35), [f"espeak-ng {v} + fluidsynth melody"], rows)
    for i in range(2):
        ev = decode_audio(fd[1 + i * 4])
        _write(folder, f"mix_events_{i:02d}", _concat(ev, decode_audio(icons[2 + i * 5]), ev),
               [f"freedesktop {fd[1 + i * 4].name}", f"sound-icons {icons[2 + i * 5].name}"], rows)
    v, s = speech_clips[5]
    noise = rng.standard_normal(s.size).astype(np.float32) * 0.05
    _write(folder, "mix_speech_noise_00", _norm(s + noise), [f"espeak-ng {v} + white noise (seeded)"], rows)
    return rows


def build_heldout(folder: Path) -> list[str]:
    rows: list[str] = []
    for i, (voice, text) in enumerate(HELDOUT_SPEECH):
        _write(folder, f"speech_{i:02d}_{voice.replace('+', '_')}", _norm(speech(voice, text)), [f"espeak-ng -v {voice}"], rows)
    alarm = decode_audio(FREEDESKTOP / "alarm-clock-elapsed.oga")
    _write(folder, "event_alarm", _norm(alarm), ["freedesktop alarm-clock-elapsed.oga"], rows)
    glass = decode_audio(SOUND_ICONS / "glass-water-1.wav")
    piano = decode_audio(SOUND_ICONS / "piano-3.wav")
    _write(folder, "events_glass_piano", _concat(glass, piano, glass), ["sound-icons glass-water-1.wav, piano-3.wav"], rows)
    m = melody([67, 67, 74, 74, 76, 76, 74, 72, 72, 71, 71], 6)
    _write(folder, "music_harpsichord", _norm(m), ["fluidsynth FluidR3_GM program 6, own melody"], rows)
    s = speech("en-gb+m3", "Ladies and gentlemen, the next train will depart from platform four.")
    msg = decode_audio(FREEDESKTOP / "message-new-instant.oga")
    _write(folder, "mix_announcement", _concat(msg, s), ["freedesktop message-new-instant.oga", "espeak-ng en-gb+m3"], rows)
    return rows


def _readme(folder: Path, title: str, rows: list[str], texts_note: str) -> None:
    (folder / "README.md").write_text(f"""# {title}

Generated by `python quantization/make_sets.py` (16 kHz mono OGG Vorbis, ≤ 20 s each).
{texts_note}

Licences of the sources: espeak-ng output (GPL-3+ program; the synthesized audio is our own output),
fluidsynth renders of our own melodies with the FluidR3_GM soundfont (MIT, package fluid-soundfont-gm),
freedesktop sound theme (package sound-theme-freedesktop, CC-BY-SA-3.0 / CC-BY-3.0 / GPL-2+ per file),
sound-icons (package sound-icons, GPL-2+). White noise is generated with a fixed seed.

| clip | length | sources |
|---|---|---|
""" + "\n".join(rows) + "\n")


def main() -> None:
    cal, held = HERE / "calibration", HERE / "heldout"
    for folder, builder, texts, title, note in (
        (cal, build_calibration, CAL_TEXTS, "Calibration set for static INT8",
         "Sentences for the text tower: `sentences.txt`. Disjoint from `quantization/heldout/` and runtime/samples "
         "(source recordings of those are excluded here; see RESERVED_FOR_EVAL in make_sets.py). The benchmark "
         "corpus (train/corpus) also draws from the freedesktop and sound-icons packages: clips are distinct "
         "mixtures, but individual source recordings may be shared."),
        (held, build_heldout, HELDOUT_TEXTS, "Held-out fidelity set",
         "Used with runtime/samples/*.flac to measure every quantized artifact against fp32. Never used for calibration."),
    ):
        folder.mkdir(exist_ok=True)
        for old in folder.glob("*.ogg"):
            old.unlink()
        rows = builder(folder)
        (folder / "sentences.txt").write_text(texts)
        _readme(folder, title, rows, note)
        size = sum(p.stat().st_size for p in folder.glob("*.ogg"))
        print(f"{folder}: {len(rows)} clips, {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
