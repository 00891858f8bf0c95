"""Real recordings from Debian packages: labelled, captioned, augmented (train only), split by source.

The test split holds out whole packages (gcompris-qt-data: new recordings of trained classes and classes
never trained; asterisk-moh-opsound-wav music; asterisk-core-sounds-fr-wav speech) and whole classes
(TEST_CLASSES: every recording of those classes, whichever package holds it), so zero-shot classification
on it measures recordings, sources and partly classes never seen in training. Test audio is the
recording as shipped (decoded to 16 kHz mono), never augmented.

The plan (which file, which variant, which caption) is a pure function of the seed and of the tables
below; rendering needs the packages and names the missing one.
"""
from __future__ import annotations

import csv
import gzip
import re
from pathlib import Path

import numpy as np

from wavlink_edge.runtime.audio import decode_audio
from wavlink_edge.runtime.features import SAMPLE_RATE as SR

from . import surveyed
from .generate import CAPTION_COLUMNS
from .rcc import read_rcc
from .synth import coloured_noise
from .vocabulary import LABELS

STAMPS = "/usr/share/tuxpaint/stamps"
GCOMPRIS = "/usr/share/gcompris-qt/rcc"
ASTERISK = "/usr/share/asterisk"
OPENSFX = "/usr/share/games/openttd/baseset/opensfx"
LINCITY = "/usr/share/games/lincity-ng"
SUPERTUX = "/usr/share/games/supertux2/sounds"
# package -> (directory that proves it is installed, licence per /usr/share/doc/<pkg>/copyright, what is taken)
PACKAGES = {
    "tuxpaint-stamps-default": (STAMPS, "GPL-2", "sound files beside the stamps: animals, household, instruments, "
                                "vehicles, nature (labelled below); spoken descriptions `*_desc_<lang>.ogg`"),
    "asterisk-core-sounds-en-wav": (f"{ASTERISK}/sounds/en_US_f_Allison", "CC-BY-SA-3.0 (Allison Smith)",
                                    "English telephone prompts, one female speaker"),
    "asterisk-core-sounds-en": ("/usr/share/doc/asterisk-core-sounds-en", "CC-BY-SA-3.0", "transcripts of the English prompts"),
    "asterisk-core-sounds-fr-wav": (f"{ASTERISK}/sounds/fr_CA_f_June", "CC-BY-SA-3.0 (June Wallack)",
                                    "French telephone prompts, one female speaker (test only)"),
    "asterisk-core-sounds-fr": ("/usr/share/doc/asterisk-core-sounds-fr", "CC-BY-SA-3.0", "transcripts of the French prompts"),
    "asterisk-moh-opsound-wav": (f"{ASTERISK}/moh", "CC-BY-SA-3.0 (Macroform, Manolo Camp, Reno Project)",
                                 "music-on-hold tracks, 10 s excerpts (test only)"),
    "gcompris-qt-data": (GCOMPRIS, "GPL-3+ (sounds under Files: *; core win.wav CC-BY-3.0, not used)",
                         "sounds unpacked from its Qt .rcc bundles: farm animals, memory-game recordings, "
                         "instruments, world music excerpts (test only)"),
    "openttd-opensfx": (OPENSFX, "CC-BY-SA-3.0 (collection; single sounds CC-BY-3.0, CC-BY-SA-3.0 or CC0-1.0, credited in "
                        "its readme)", "sounds unpacked from opensfx.cat: trains, engines, aircraft, applause, farm "
                        "animals, tools, wind (labelled in train/corpus/real.py)"),
    "lincity-ng-data": (LINCITY, "GPL-2+", "building sounds (trains, traffic, crowd, fire, blacksmith; labelled in train/corpus/real.py) and "
                        "its three music tracks, 10 s excerpts"),
    "supertux-data": (SUPERTUX, "GPL-3+", "game sounds named for what they are: door, rain (10 s excerpts), thunder, "
                      "waterfall, telephone, splash, explosion"),
}

# tuxpaint stamp sound (file stem) -> (class, caption phrase). Files whose content was not clear from
# name and stamp (dreidel letters, road signs, spider, santa hat, bathyscape, iguana, moth) are not used.
STAMP_SOUNDS = {
    "frog": ("frog", "a frog croaking"), "blackbird": ("blackbird", "a blackbird singing"),
    "crow": ("crow", "a crow cawing"), "cuckoo": ("cuckoo", "a cuckoo calling"),
    "drake": ("duck", "a duck quacking"), "duck": ("duck", "a duck quacking"),
    "gander": ("goose", "a goose honking"), "hen": ("chicken", "a hen clucking"),
    "heron_greatblue_flying": ("heron", "a heron calling in flight"), "lark": ("lark", "a lark singing"),
    "nandou": ("rhea", "a rhea calling"), "owl": ("owl", "an owl hooting"), "penguin": ("penguin", "a penguin calling"),
    "quetzal": ("quetzal", "a tropical bird calling"), "rooster": ("chicken", "a rooster crowing"),
    "seagull": ("seagull", "seagulls crying"), "tucan": ("toucan", "a toucan croaking"),
    "turkey": ("turkey", "a turkey gobbling"), "vulture": ("vulture", "a vulture screeching"),
    "bee": ("bee", "a bee buzzing"), "grasshopper": ("grasshopper", "a grasshopper chirping"),
    "hornet": ("hornet", "a hornet buzzing"), "mosquito": ("mosquito", "a mosquito whining"),
    "chimp": ("chimpanzee", "a chimpanzee screaming"), "gorilla": ("gorilla", "a gorilla grunting"),
    "dolphin": ("dolphin", "a dolphin clicking and whistling"), "orca": ("orca", "an orca whistling"),
    "sea_lion": ("sea lion", "a sea lion barking"), "whale": ("whale", "a whale singing"),
    "badger": ("badger", "a badger grunting"), "bear": ("bear", "a bear growling"),
    "bison": ("bison", "a bison grunting"), "bull": ("bull", "a bull bellowing"),
    "cow": ("cow", "a cow mooing"), "cow_white": ("cow", "a cow mooing"),
    "goat": ("goat", "a goat bleating"), "mountaingoat": ("goat", "a goat bleating"),
    "ram": ("sheep", "a sheep bleating"), "sheep": ("sheep", "a sheep bleating"), "sheep_lamb": ("sheep", "a lamb bleating"),
    "camel": ("camel", "a camel groaning"), "dromedary": ("camel", "a camel groaning"),
    "lion": ("lion", "a lion roaring"), "tiger": ("tiger", "a tiger growling"),
    "caribou": ("deer", "a deer calling"), "deer": ("deer", "a deer calling"), "doe": ("deer", "a deer calling"),
    "dog": ("dog", "a dog barking"), "fox": ("fox", "a fox yelping"), "elephant": ("elephant", "an elephant trumpeting"),
    "donkey": ("donkey", "a donkey braying"), "horse": ("horse", "a horse neighing"), "zebra": ("zebra", "a zebra barking"),
    "ferret": ("ferret", "a ferret chattering"), "giraffe": ("giraffe", "a giraffe snorting"),
    "hippopotamus": ("hippopotamus", "a hippopotamus grunting"),
    "pig": ("pig", "a pig oinking"), "pig_golden": ("pig", "a pig grunting"), "pig_golden2": ("pig", "a pig squealing"),
    "beaver": ("beaver", "a beaver gnawing wood"), "mouse": ("mouse", "a mouse squeaking"),
    "rabbit": ("rabbit", "a rabbit squeaking"), "squirrel": ("squirrel", "a squirrel chattering"),
    "koala": ("koala", "a koala bellowing"), "wombat": ("wombat", "a wombat grunting"),
    "apple_red": ("apple", "someone biting into an apple"), "camera_35mm": ("camera", "a camera shutter clicking"),
    "cymbal_crash": ("cymbal", "a cymbal crashing"), "drum_tomtom_floor": ("drum", "a drum being hit"),
    "drumkit": ("drum kit", "a drum kit playing a beat"), "cello": ("cello", "a cello playing"),
    "violin": ("violin", "a violin playing"), "bassoon": ("bassoon", "a bassoon playing"),
    "Washing-machine": ("washing machine", "a washing machine running"),
    "scissors_small_open": ("scissors", "scissors snipping"), "scissors_small_closed": ("scissors", "scissors snipping"),
    "bottle": ("bottle", "a glass bottle clinking"), "glass": ("glass", "a drinking glass clinking"),
    "kettle": ("kettle", "a kettle"), "rubberduck": ("rubber duck", "a rubber duck squeaking"),
    "toilet": ("toilet", "a toilet flushing"), "hammer": ("hammer", "a hammer striking"),
    "mallet_metal": ("mallet", "a metal mallet striking"), "saw": ("saw", "a saw cutting wood"),
    "vacuum_cleaner": ("vacuum cleaner", "a vacuum cleaner humming"), "final-roll-call": ("bugle", "a bugle call"),
    "lightningbolt": ("thunder", "thunder rumbling"), "gift": ("wrapping paper", "paper rustling"),
    "hard_candy": ("candy wrapper", "a candy wrapper crinkling"), "bat_left": ("bat", "a bat squeaking"),
    "blackcat": ("cat", "a cat meowing"), "ghost": ("ghost", "a spooky ghostly moan"),
    "fireworks": ("fireworks", "fireworks exploding"), "apollo_lander": ("radio", "a crackling radio transmission"),
    "checkeredflag": ("race car", "race cars speeding past"), "firetruck": ("fire truck", "a fire truck siren wailing"),
}
# openttd-opensfx opensfx.cat entry (index; its name in the catalogue is the description) -> (class, caption
# phrase). Toyland/comedy mixes, UI splats, beeps and the empty entries are not used.
OPENSFX_SOUNDS = {
    3: ("whistle", "a factory whistle blowing"), 4: ("train", "a steam train departing with its whistle blowing"),
    5: ("train", "a steam train whistling as it enters a tunnel"), 6: ("ship horn", "a ship's horn blowing"),
    7: ("ship horn", "a ferry's horn blowing"), 8: ("airplane", "a propeller plane engine starting"),
    9: ("jet", "a jet plane taking off"), 10: ("train", "a diesel train departing with a distant horn"),
    11: ("machinery", "heavy machinery rumbling"), 12: ("electric sparks", "electricity sparking and crackling"),
    13: ("steam", "steam hissing from a steam engine"), 14: ("level crossing", "a railway crossing bell ringing"),
    17: ("crash", "a vehicle crashing"), 18: ("explosion", "an explosion"), 19: ("crash", "a big crash"),
    20: ("cash register", "a cash register ringing"), 22: ("morse code", "morse code beeping"),
    24: ("helicopter", "a helicopter flying"), 25: ("car engine", "an old engine starting and pulling away"),
    26: ("car engine", "a truck engine starting and an air horn"), 27: ("car engine", "a bus engine starting and driving off"),
    28: ("car engine", "an old bus engine starting"), 29: ("applause", "an audience applauding and cheering"),
    33: ("jackhammer", "a jackhammer drilling"), 35: ("car horn", "a car horn honking"),
    36: ("sheep", "sheep bleating in a field"), 37: ("cow", "a cow mooing"), 38: ("horse", "a horse neighing"),
    39: ("hammer", "hammering metal in a smithy"), 40: ("saw", "a circular saw cutting wood"),
    46: ("bubbles", "bubbles rising in water"), 52: ("wind", "wind blowing"), 54: ("tree falling", "a tree crashing down"),
    55: ("tree falling", "a tree being cut down"), 56: ("chainsaw", "a chainsaw running"), 57: ("wind", "a strong wind howling"),
    59: ("jet", "a fast jet plane taking off"), 61: ("jet", "jet planes roaring past"),
    65: ("train", "a maglev train departing a station"), 66: ("bird", "tropical birds calling"),
    67: ("lion", "a lion roaring"), 68: ("monkey", "monkeys screaming"), 69: ("airplane", "a propeller plane taking off"),
    71: ("train", "a train passing by"), 72: ("bird", "tropical birds calling"),
}
# lincity-ng-data sounds/<stem>.wav -> (class, caption phrase); building ambiences whose content the name
# does not say (farm, market, residential, school, ...) are not used.
LINCITY_SOUNDS = {
    **{f"RailTrain{i}": ("train", "a train rumbling along the rails") for i in (1, 2, 3)},
    **{f"SportsCroud{i}": ("crowd", "a crowd cheering at a sports match") for i in (1, 2, 3)},
    **{f"TraficHigh{i}": ("traffic", "heavy road traffic with car engines") for i in (1, 2, 3)},
    **{f"TraficLow{i}": ("traffic", "cars driving past on a road") for i in (1, 2, 3)},
    **{f"Blacksmith{i}": ("hammer", "a blacksmith hammering on an anvil") for i in (1, 2, 3)},
    **{f"Fire{i}": ("fire", "a fire crackling") for i in (1, 2, 3)},
    "RocketTakeoff1": ("rocket", "a rocket taking off"), "RocketExplosion1": ("explosion", "a rocket exploding"),
}
# supertux-data sounds/<file> -> (class, caption phrase); cartoon effects (jumps, coins, enemies) are not used.
SUPERTUX_SOUNDS = {
    "door.wav": ("door", "a door opening and closing"), "thunder.wav": ("thunder", "thunder rumbling"),
    "waterfall.wav": ("waterfall", "a waterfall rushing"), "phone.wav": ("telephone", "a telephone ringing"),
    "splash.ogg": ("splash", "something splashing into water"), "explosion.wav": ("explosion", "an explosion"),
    **{f"rain.wav@{i}": ("rain", "rain falling") for i in range(2)},  # 25.6 s of rain: two 10 s excerpts
}
LINCITY_MUSIC = ("01 - pronobozo - lincity.ogg", "02 - Robert van Herk - City Blues.ogg",
                 "03 - Robert van Herk - Architectural Contemplations.ogg")
MUSIC_EXCERPTS = 3  # 10 s excerpts per track
# Whole classes never seen in training (their every recording is test-only), plus the held-out packages' classes.
TEST_CLASSES = ("frog", "bee", "toilet", "fireworks")
TEST_PACKAGES = ("gcompris-qt-data", "asterisk-moh-opsound-wav", "asterisk-core-sounds-fr-wav")
# gcompris bundle -> {file stem: (class, caption phrase)}; classes absent from STAMP_SOUNDS are never trained.
GCOMPRIS_SOUNDS = {
    "explore_farm_animals": {"dog": ("dog", "a dog barking"), "cat": ("cat", "a cat meowing"), "cow": ("cow", "a cow mooing"),
                             "horse": ("horse", "a horse neighing"), "pig": ("pig", "a pig oinking"),
                             "sheep": ("sheep", "a sheep bleating"), "duck": ("duck", "a duck quacking"),
                             "chickens": ("chicken", "chickens clucking"), "owl": ("owl", "an owl hooting")},
    "memory-sound": {"LRBark_1_LA_cut": ("dog", "a dog barking"), "LRBark_3_LA_cut": ("dog", "a dog barking"),
                     "LRFrogsInPondDuringStormLACut": ("frog", "frogs croaking in a pond during a storm"),
                     "LRRain_in_garden_01_LA_cut": ("rain", "rain falling in a garden"),
                     "LRApplauses_1_LA_cut": ("applause", "people applauding"),
                     "LRHeart_beat_01_LA": ("heartbeat", "a heart beating"),
                     "LRTrain_slowing_down_01_LA_cut": ("train", "a train slowing down"),
                     "LRDoor_Open_2_LA": ("door", "a door creaking open"),
                     "LRBuddhist_gong_05_LA": ("gong", "a gong ringing"),
                     "LRStartAndStopCarEngine1LACut": ("car engine", "a car engine starting and stopping"),
                     "guitar_melody": ("guitar", "a guitar melody")},
    "instruments": {"violin": ("violin", "a violin playing"), "cello": ("cello", "a cello playing"),
                    "trumpet": ("trumpet", "a trumpet playing"), "piano": ("piano", "a piano playing"),
                    "guitar": ("guitar", "a guitar playing"), "drum_kit": ("drum kit", "a drum kit playing a beat"),
                    "flute_traversiere": ("flute", "a flute playing"), "harp": ("harp", "a harp playing")},
    "explore_world_music": {k: ("music", "a piece of music") for k in ("africa", "japan")},
}
MASS_NOUNS = {"music", "speech", "fireworks", "thunder", "wrapping paper", "rain", "applause", "traffic", "machinery",
              "electric sparks", "steam", "morse code", "wind", "bubbles", "fire"}
PER_CLASS_TEST_CAP = 4  # the big held-out packages would otherwise dominate a per-clip accuracy
LANGS = {"": "English", "fr": "French", "ru": "Russian", "ro": "Romanian", "ca": "Catalan", "bg": "Bulgarian",
         "es": "Spanish", "be": "Belarusian", "el": "Greek", "da": "Danish", "lt": "Lithuanian", "nl": "Dutch"}
AUGMENTS = ("original", "gain", "noise", "speed", "mix", "offset")  # every train sound event gets each once
N_EN_SPEECH, N_DESC_SPEECH = 200, 160
SURVEYED_AUGMENTS = 2  # augmented copies of each surveyed train sound event, besides the recording itself


def article(label: str) -> str:
    return label if label in MASS_NOUNS else ("an " if label[0] in "aeiou" else "a ") + label


def class_prompt(label: str) -> str:
    """Zero-shot prompt for a class name (ESC-50 style)."""
    return f"the sound of {article(label)}"


# Prompt ensemble for zero-shot classification (CLIP/CLAP practice): a class's text vector is the mean of
# these prompts' normalised embeddings; the first is class_prompt.
PROMPT_TEMPLATES = ("the sound of {A}", "{A}", "a recording of {A}", "{A} can be heard", "you can hear {A}",
                    "a short clip of {A}", "the sound of {A} nearby")


def class_prompts(label: str) -> list[str]:
    return [t.format(A=article(label)) for t in PROMPT_TEMPLATES]


def missing_packages() -> list[str]:
    surveyed_rows = surveyed.select("train", TEST_CLASSES) + surveyed.select("test", TEST_CLASSES)
    return [pkg for pkg, (d, _, _) in PACKAGES.items() if not Path(d).is_dir()] + surveyed.missing_packages(surveyed_rows)


def _need(pkg: str) -> Path:
    d = Path(PACKAGES[pkg][0])
    if not d.is_dir():
        raise FileNotFoundError(f"Debian package {pkg} is not installed ({d} missing): apt-get install {pkg}")
    return d


def _transcripts(pkg: str, lang: str) -> dict[str, str]:
    with gzip.open(_need(pkg) / f"core-sounds-{lang}.txt.gz", "rt", encoding="utf-8", errors="replace") as f:
        rows = (line.split(":", 1) for line in f if ":" in line and not line.startswith(";"))
        return {k.strip(): " ".join(v.split()) for k, v in rows if v.strip() and not v.strip().startswith("[")}


# Relative paths under the packages are listed from the file tables, not from the disk, so the plan
# is the same on a machine without the packages (they are only needed to render).
def _stamp_files() -> list[str]:
    return sorted(STAMP_SOUNDS)


def _add_mix_partners(clips: list[dict], rng: np.random.Generator) -> None:
    """Each "mix" clip gets its partner: a train stamp sound of another class, drawn in clip order."""
    partners = sorted(s for s, (lab, _) in STAMP_SOUNDS.items() if lab not in TEST_CLASSES)
    for c in clips:
        if c["augment"] == "mix":
            choices = [s for s in partners if STAMP_SOUNDS[s][0] != c["label"]]
            c["partner"] = choices[int(rng.integers(len(choices)))]


def plan(seed: int = 0) -> dict[str, list[dict]]:
    """Clip plans per split: {'train': [...], 'test': [...]}; pure function of the seed and the tables."""
    train, test = [], []
    for stem in _stamp_files():
        label, phrase = STAMP_SOUNDS[stem]
        item = {"package": "tuxpaint-stamps-default", "source": stem, "label": label, "phrase": phrase}
        if label in TEST_CLASSES:
            test.append({**item, "augment": "original"})
        else:
            train += [{**item, "augment": a} for a in AUGMENTS]
    _add_mix_partners(train, np.random.default_rng([seed, 77]))
    train += [{"package": "asterisk-core-sounds-en-wav", "source": f"en:{i}", "label": "speech", "augment": "original"}
              for i in range(N_EN_SPEECH)]
    train += [{"package": "tuxpaint-stamps-default", "source": f"desc:{i}", "label": "speech", "augment": "original"}
              for i in range(N_DESC_SPEECH)]
    # more packages' sound events (appended so the earlier clips keep their ids and seeds)
    extra = [{"package": "openttd-opensfx", "source": f"sfx:{i}", "label": lab, "phrase": ph}
             for i, (lab, ph) in sorted(OPENSFX_SOUNDS.items())]
    extra += [{"package": "lincity-ng-data", "source": f"lincity:{stem}", "label": lab, "phrase": ph}
              for stem, (lab, ph) in sorted(LINCITY_SOUNDS.items())]
    extra = [{**item, "augment": a} for item in extra if item["label"] not in TEST_CLASSES for a in AUGMENTS]
    _add_mix_partners(extra, np.random.default_rng([seed, 82]))
    train += extra
    train += [{"package": "lincity-ng-data", "source": f"music:{t}:{j}", "label": "music", "augment": "original"}
              for t in range(len(LINCITY_MUSIC)) for j in range(MUSIC_EXCERPTS)]
    supertux = [{"package": "supertux-data", "source": f"supertux:{name}", "label": lab, "phrase": ph, "augment": a}
                for name, (lab, ph) in sorted(SUPERTUX_SOUNDS.items()) if lab not in TEST_CLASSES for a in AUGMENTS]
    _add_mix_partners(supertux, np.random.default_rng([seed, 84]))
    train += supertux
    train += _surveyed_plan("train", np.random.default_rng([seed, 85]))
    test += [{"package": "gcompris-qt-data", "source": f"{bundle}:{stem}", "label": label, "phrase": phrase,
              "augment": "original"} for bundle, sounds in GCOMPRIS_SOUNDS.items() for stem, (label, phrase) in sounds.items()]
    test += [{"package": "asterisk-moh-opsound-wav", "source": f"moh:{i}", "label": "music", "augment": "original"}
             for i in range(2)]
    test += [{"package": "asterisk-core-sounds-fr-wav", "source": f"fr:{i}", "label": "speech", "augment": "original"}
             for i in range(PER_CLASS_TEST_CAP)]
    taken: dict[str, int] = {}
    test = [c for c in test if taken.setdefault(c["label"], 0) < PER_CLASS_TEST_CAP and not taken.update({c["label"]: taken[c["label"]] + 1})]
    test += _surveyed_plan("test", None)  # capped per class by surveyed.TEST_CAP
    out = {}
    for split, clips in (("train", train), ("test", test)):
        for i, c in enumerate(clips):
            c["clip_id"] = f"real{split}_{i:05d}"
            c["seed"] = [seed, 77, 0 if split == "train" else 1, i]
        out[split] = clips
    return out


def _surveyed_plan(split: str, rng: np.random.Generator | None) -> list[dict]:
    """The surveyed packages' clips (surveyed.select): a train sound event is used as recorded and with
    SURVEYED_AUGMENTS more of AUGMENTS, drawn per file (the packages hold thousands of files, and every copy costs
    feature time); speech, music and test files are used once, as recorded."""
    clips = []
    for row in surveyed.select(split, TEST_CLASSES):
        label = LABELS[row["label"]][0]
        item = {"package": row["package"], "source": f"deb:{row['path']}", "label": label, "phrase": row["label"]}
        if split == "test" or label in ("speech", "music"):
            clips.append({**item, "augment": "original"})
        else:
            extra = rng.permutation(len(AUGMENTS) - 1)[:SURVEYED_AUGMENTS] + 1
            clips += [{**item, "augment": AUGMENTS[a]} for a in [0, *sorted(extra)]]
    if rng is not None:
        _add_mix_partners(clips, rng)
    return clips


# ---------------------------------------------------------------------------------------------------
# Rendering (needs the packages)


def _decode(path) -> np.ndarray:

    return decode_audio(str(path))


def _stamp_path(stem: str) -> Path:
    hits = sorted(_need("tuxpaint-stamps-default").rglob(f"{stem}.ogg"))
    if not hits:
        raise FileNotFoundError(f"tuxpaint-stamps-default has no {stem}.ogg")
    return hits[0]


def _pick_sorted(files: list[Path], i: int, seed: int, salt: int) -> Path:
    order = np.random.default_rng([seed, salt]).permutation(len(files))
    return files[int(order[i % len(files)])]


def _speech_en(i: int, seed: int) -> tuple[np.ndarray, str, str]:
    text = _transcripts("asterisk-core-sounds-en", "en")
    d = _need("asterisk-core-sounds-en-wav")
    files = [p for p in sorted(d.glob("*.wav")) if p.stem in text and len(text[p.stem]) > 12]
    p = _pick_sorted(files, i, seed, 78)
    return _decode(p), p.name, text[p.stem]


def _speech_fr(i: int, seed: int) -> tuple[np.ndarray, str, str]:
    text = _transcripts("asterisk-core-sounds-fr", "fr")
    d = _need("asterisk-core-sounds-fr-wav")
    files = [p for p in sorted(d.glob("*.wav")) if p.stem in text and len(text[p.stem]) > 20]
    p = _pick_sorted(files, i, seed, 79)
    return _decode(p), p.name, text[p.stem]


def _desc(i: int, seed: int) -> tuple[np.ndarray, str, str]:
    train_stems = {s for s, (lab, _) in STAMP_SOUNDS.items() if lab not in TEST_CLASSES}
    files = [p for p in sorted(_need("tuxpaint-stamps-default").rglob("*_desc*.ogg"))
             if p.name.split("_desc")[0] in train_stems and _lang(p) in LANGS]
    p = _pick_sorted(files, i, seed, 80)
    return _decode(p), p.name, LANGS[_lang(p)]


def _lang(p: Path) -> str:
    m = re.search(r"_desc(?:_([a-z]{2}))?\.ogg$", p.name)
    return (m.group(1) or "") if m else "?"


def _moh(i: int, seed: int) -> tuple[np.ndarray, str]:
    tracks = sorted(_need("asterisk-moh-opsound-wav").glob("*.wav"))
    p = tracks[i % len(tracks)]
    x = _decode(p)
    start = int(np.random.default_rng([seed, 81, i]).integers(0, max(1, len(x) - 10 * SR)))
    return x[start : start + 10 * SR], p.name


def _gcompris(bundle: str, stem: str) -> tuple[np.ndarray, str]:
    import tempfile

    files = read_rcc(_need("gcompris-qt-data") / f"{bundle}.rcc")
    hits = sorted(k for k in files if Path(k).stem == stem and Path(k).suffix in (".ogg", ".wav"))
    if not hits:
        raise FileNotFoundError(f"gcompris-qt-data {bundle}.rcc has no sound {stem}")
    with tempfile.TemporaryDirectory(prefix="wlreal_") as tmp:  # decode_audio reads files; the bundle is one file
        path = Path(tmp) / Path(hits[0]).name
        path.write_bytes(files[hits[0]])
        return _decode(path), f"{bundle}.rcc:{hits[0]}"


def _opensfx(index: int) -> tuple[np.ndarray, str]:
    """One entry of OpenTTD's sound catalogue: a table of (offset, size) uint32 pairs, then per entry a
    length-prefixed name and a RIFF WAV file."""
    import io
    import struct

    import soundfile as sf

    data = (_need("openttd-opensfx") / "opensfx.cat").read_bytes()
    offset, size = struct.unpack_from("<II", data, 8 * index)
    offset &= 0x7FFFFFFF
    name_len = data[offset]
    name = data[offset + 1 : offset + 1 + name_len].rstrip(b"\0").decode("latin-1")
    wav = data[offset + 1 + name_len : offset + size]
    if wav[:4] != b"RIFF":
        raise ValueError(f"opensfx.cat entry {index} is not a WAV file")
    x, sr = sf.read(io.BytesIO(wav), dtype="float32", always_2d=True)
    title = name.split(".")[0].strip('"')[:60]
    return decode_audio((x.mean(axis=1), sr)), f"opensfx.cat:{index}:{title}"


def _lincity(stem: str) -> tuple[np.ndarray, str]:
    path = _need("lincity-ng-data") / "sounds" / f"{stem}.wav"
    return _decode(path), path.name


def _supertux(name: str) -> tuple[np.ndarray, str]:
    file, _, part = name.partition("@")
    x = _decode(_need("supertux-data") / file)
    if part:
        x = x[int(part) * 10 * SR : (int(part) + 1) * 10 * SR]
    return x, file


def _lincity_music(track: int, j: int, seed: int) -> tuple[np.ndarray, str]:
    path = _need("lincity-ng-data") / "music" / "default" / LINCITY_MUSIC[track]
    x = _decode(path)
    span = max(1, (len(x) - 10 * SR) // MUSIC_EXCERPTS)
    start = j * span + int(np.random.default_rng([seed, 83, track, j]).integers(0, span))
    return x[start : start + 10 * SR], path.name


def _peak(x: np.ndarray, level: float = 0.5) -> np.ndarray:
    return (x * (level / max(1e-6, float(np.abs(x).max())))).astype(np.float32)


def _augment(x: np.ndarray, kind: str, rng: np.random.Generator, partner: np.ndarray | None) -> tuple[np.ndarray, str]:
    """Returns the audio and a caption suffix/qualifier key."""

    if kind == "gain":
        return _peak(x, float(rng.uniform(0.05, 0.9))), ""
    if kind == "noise":
        colour = ("white noise", "pink noise", "brown noise")[int(rng.integers(3))]
        n = coloured_noise(colour, len(x), rng)
        snr = float(rng.uniform(5, 20))
        n = n * np.sqrt(np.mean(x ** 2) / (np.mean(n ** 2) + 1e-12) / 10 ** (snr / 10))
        return _peak(x + n), "noise"
    if kind == "speed":  # claim another rate and resample back: pitch and tempo change together
        factor = float(rng.choice([0.85, 0.92, 1.08, 1.15]))
        return _peak(decode_audio((x, int(SR * factor)))), ""
    if kind == "mix":
        p = np.zeros_like(x) if partner is None else partner
        n = max(len(x), len(p))
        y = np.pad(x, (0, n - len(x))) + 0.5 * np.pad(p, (0, n - len(p)))
        return _peak(y), "mix"
    if kind == "offset":  # the event inside a longer, quiet room-tone clip
        total = int(SR * rng.uniform(3, 6)) + len(x)
        start = int(rng.integers(0, total - len(x) + 1))
        y = coloured_noise("pink noise", total, rng) * 0.002
        y[start : start + len(x)] += x
        return _peak(y), ""
    return _peak(x), ""


EVENT_TEMPLATES = ["{P}", "{P} can be heard", "the sound of {A}", "a recording of {P}", "you can hear {P}",
                   "{P}, recorded up close", "there is {P}", "a short clip of {P}"]
SPEECH_EN = ['a woman says "{T}"', "a woman speaking English on the telephone", "a recorded voice prompt: {T}",
             "a female voice announces: {T}", "a woman's voice speaking clearly", "the sound of speech"]
SPEECH_DESC = ["a person speaking {L}", "someone talks in {L}", "a voice saying a few words in {L}", "speech in {L}",
               "a short spoken description in {L}", "the sound of speech"]
SPEECH_FR = ['a woman says "{T}" in French', "a woman speaking French", "a French telephone voice prompt",
             "a female voice speaking in French", "the sound of speech"]
MUSIC = ["instrumental music playing", "a music track with a steady beat", "background music", "a piece of music",
         "the sound of music", "music played over a telephone line"]


def _captions(rng: np.random.Generator, templates: list[str], **fields) -> list[str]:
    picks = rng.permutation(len(templates))[:5]
    caps = [templates[i].format(**fields) for i in picks]
    while len(caps) < 5:  # short template lists: repeat with a qualifier rather than an exact duplicate
        caps.append(templates[picks[len(caps) % len(picks)]].format(**fields) + " again")
    return [c[0].upper() + c[1:] for c in caps]


MUSIC_TRACK = ["instrumental music playing", "a piece of music", "the sound of music", "background music from a game",
               "a calm instrumental tune", "music with several instruments"]


def _phrased_captions(rng: np.random.Generator, templates: list[str], phrases: tuple[str, ...], label: str,
                      partner: str | None) -> list[str]:
    """Five captions, each from a template and one of the label's phrasings (vocabulary.LABELS)."""
    picks = rng.permutation(len(templates))[:5]
    caps = []
    for i, t in enumerate(picks):
        phrase = phrases[int(rng.integers(len(phrases)))] if i else phrases[0]
        phrase = f"{phrase} and {partner}" if partner else phrase
        caps.append(templates[t].format(P=phrase, A=phrase if partner else article(label)))
    return [c[0].upper() + c[1:] for c in caps]


def _render_surveyed(clip: dict, rng: np.random.Generator) -> tuple[np.ndarray, list[str], dict]:
    package, path = clip["package"], clip["source"][4:]
    x, name = surveyed.decode({"package": package, "path": path}, clip["seed"])
    partner = _decode(_stamp_path(clip["partner"])) if clip.get("partner") else None
    x, qual = _augment(x, clip["augment"], rng, partner)
    templates = EVENT_TEMPLATES + (["{P} over a background hiss", "{P} with noise behind it"] if qual == "noise" else [])
    partner_phrase = STAMP_SOUNDS[clip["partner"]][1] if clip.get("partner") else None
    return x, _phrased_captions(rng, templates, LABELS[clip["phrase"]][1:], clip["label"], partner_phrase), {"file": name}


def render_clip(clip: dict, seed: int) -> tuple[np.ndarray, list[str], dict]:
    rng = np.random.default_rng(clip["seed"])
    src = clip["source"]
    if src.startswith("deb:"):
        return _render_surveyed(clip, rng)
    if src.startswith("music:"):
        _, track, j = src.split(":")
        x, name = _lincity_music(int(track), int(j), seed)
        return _peak(x), _captions(rng, MUSIC_TRACK), {"file": name}
    if src.startswith(("sfx:", "lincity:", "supertux:")) or (clip["package"] == "tuxpaint-stamps-default" and not src.startswith("desc:")):
        if src.startswith("sfx:"):
            x, fname = _opensfx(int(src[4:]))
        elif src.startswith("lincity:"):
            x, fname = _lincity(src[8:])
        elif src.startswith("supertux:"):
            x, fname = _supertux(src[9:])
        else:
            path = _stamp_path(src)
            x, fname = _decode(path), path.name
        partner, phrase = None, clip["phrase"]
        if clip.get("partner"):
            partner = _decode(_stamp_path(clip["partner"]))
            phrase = f"{clip['phrase']} and {STAMP_SOUNDS[clip['partner']][1]}"
        x, qual = _augment(x, clip["augment"], rng, partner)
        templates = EVENT_TEMPLATES + (["{P} over a background hiss", "{P} with noise behind it"] if qual == "noise" else [])
        caps = _captions(rng, templates, P=phrase, A=article(clip["label"]) if qual != "mix" else phrase)
        return x, caps, {"file": fname}
    if clip["package"] == "gcompris-qt-data":
        bundle, stem = src.split(":")
        x, name = _gcompris(bundle, stem)
        if clip["label"] == "music":
            start = int(rng.integers(0, max(1, len(x) - 10 * SR)))
            x = x[start : start + 10 * SR]
        return _peak(x[: 10 * SR]), _captions(rng, EVENT_TEMPLATES if clip["label"] != "music" else MUSIC,
                                              P=clip["phrase"], A=article(clip["label"])), {"file": name}
    if src.startswith("en:"):
        x, name, text = _speech_en(int(src[3:]), seed)
        return _peak(x), _captions(rng, SPEECH_EN, T=text), {"file": name}
    if src.startswith("desc:"):
        x, name, lang = _desc(int(src[5:]), seed)
        return _peak(x), _captions(rng, SPEECH_DESC, L=lang), {"file": name}
    if src.startswith("fr:"):
        x, name, text = _speech_fr(int(src[3:]), seed)
        return _peak(x), _captions(rng, SPEECH_FR, T=text), {"file": name}
    x, name = _moh(int(src[4:]), seed)
    return _peak(x), _captions(rng, MUSIC), {"file": name}


def generate(out_dir, seed: int = 0, splits=("train", "test"), limit: int | None = None) -> dict:
    """Write DIR/audio/real_<split>/*.flac, captions_real_<split>.csv, metadata_real_<split>.csv."""
    import soundfile as sf

    out = Path(out_dir)
    plans = plan(seed)
    counts = {}
    for split in splits:
        clips = plans[split] if limit is None else plans[split][::max(1, len(plans[split]) // limit)][:limit]
        (out / "audio" / f"real_{split}").mkdir(parents=True, exist_ok=True)
        caps_rows, meta_rows = [], []
        for c in clips:
            x, caps, extra = render_clip(c, seed)
            x = x[: 30 * SR] if len(x) >= SR else np.pad(x, (0, SR - len(x)))  # the encoder's 1-30 s window
            name = f"{c['clip_id']}.flac"
            sf.write(str(out / "audio" / f"real_{split}" / name), x, SR, format="FLAC", subtype="PCM_16")
            caps_rows.append([name] + caps)
            meta_rows.append({"file_name": name, "package": c["package"], "source_file": extra["file"], "label": c["label"],
                              "augment": c["augment"], "partner": c.get("partner", ""), "length_s": round(len(x) / SR, 2)})
        with open(out / f"captions_real_{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CAPTION_COLUMNS)
            w.writerows(caps_rows)
        with open(out / f"metadata_real_{split}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(meta_rows[0]))
            w.writeheader()
            w.writerows(meta_rows)
        counts[split] = {"clips": len(meta_rows), "seconds": round(sum(r["length_s"] for r in meta_rows), 1),
                         "classes": sorted({r["label"] for r in meta_rows}),
                         "packages": sorted({r["package"] for r in meta_rows})}
    return counts


def metadata(out_dir, split: str = "test") -> list[dict]:
    with open(Path(out_dir) / f"metadata_real_{split}.csv", newline="") as f:
        return list(csv.DictReader(f))


def labels(out_dir, split: str = "test") -> list[str]:
    return [r["label"] for r in metadata(out_dir, split)]


VALIDATION_FRACTION = 0.2  # of the train packages' sound-event files


def validation_rows(out_dir, fraction: float = VALIDATION_FRACTION, packages=None) -> tuple[np.ndarray, np.ndarray]:
    """(held-out mask, scored mask) over metadata_real_train.csv rows: a validation split from the train packages,
    to choose the recipe and the epoch count without looking at the test split.

    Whole sound-event files are held out with every augmented copy, and so are the train clips that mix one of
    them in (partners are named by file stem); speech and music are one class each and stay in training. Files
    are picked by a hash of package and name, so the split does not move with the seed or the corpus size. Only
    the original copies are scored. `packages`: hold out files of these packages only (when they have any)."""
    import zlib

    rows = metadata(out_dir, "train")
    candidates = {(r["package"], r["source_file"]) for r in rows if r["label"] not in ("speech", "music") and r["augment"] == "original"}
    if packages is not None and any(p in packages for p, _ in candidates):
        candidates = {c for c in candidates if c[0] in packages}
    sources = sorted(candidates, key=lambda s: zlib.crc32(f"{s[0]}/{s[1]}".encode()))
    held = set(sources[: max(2, round(fraction * len(sources)))])
    held_stems = {Path(name).stem for _, name in held}
    out = np.array([(r["package"], r["source_file"]) in held or (r["augment"] == "mix" and r["partner"] in held_stems)
                    for r in rows], dtype=bool)
    scored = np.array([(r["package"], r["source_file"]) in held and r["augment"] == "original" for r in rows], dtype=bool)
    return out, scored


def data_card(counts: dict) -> str:
    """Markdown: the sources table (package, licence, what was taken) and the split rule."""
    lines = ["## Real recordings (Debian packages)", "",
             "| Debian package | licence (debian/copyright) | what was taken |", "|---|---|---|",
             *[f"| {p} | {lic} | {what} |" for p, (_, lic, what) in PACKAGES.items()], "",
             f"Held out for test: whole packages {', '.join(TEST_PACKAGES)} and whole classes {', '.join(TEST_CLASSES)} "
             "(plus the gcompris classes that no train file has) "
             f"(at most {PER_CLASS_TEST_CAP} clips a class; test audio is not augmented). Train sound events are used "
             f"{len(AUGMENTS)} times each: {', '.join(AUGMENTS)} (gain, coloured noise at 5-20 dB SNR, speed x0.85-1.15 by "
             "resampling, mixed with another train event at -6 dB, placed inside 3-6 s of quiet room tone). Captions come "
             "from the file name or, for openttd-opensfx, the catalogue entry's description (hand-labelled tables in "
             "train/corpus/real.py), the asterisk transcripts and the language code of the spoken descriptions, through "
             "templates; the lincity-ng music excerpts are used once each, not augmented.", "",
             *surveyed_card(), "| split | clips | seconds | classes | packages |", "|---|---|---|---|---|"]
    for split, c in counts.items():
        lines.append(f"| real {split} | {c['clips']} | {c['seconds']} | {len(c['classes'])} | {', '.join(c['packages'])} |")
    return "\n".join(lines) + "\n"


def surveyed_card() -> list[str]:
    """Markdown lines: the surveyed packages with their licences, train or test, and the files taken."""
    taken = {split: surveyed.select(split, TEST_CLASSES) for split in ("train", "test")}
    lines = ["### The surveyed packages (train/corpus/surveyed.py, debian_sounds.tsv.gz)", "",
             f"Every file's survey label maps to one class and several phrasings (train/corpus/vocabulary.py, "
             f"{len({v[0] for v in LABELS.values() if v})} classes); `HELDOUT:` rows and byte-identical copies (`dup-of`) are "
             f"never used; at most {surveyed.TRAIN_CAP} train files a class ({surveyed.SPEECH_CAP} speech, {surveyed.MUSIC_CAP} "
             f"music) and {surveyed.TEST_CAP} test files a class, picked by a hash of the path; files over "
             f"{surveyed.EXCERPT_S} s give one seeded {surveyed.EXCERPT_S} s excerpt. Train sound events: the recording and "
             f"{SURVEYED_AUGMENTS} augmented copies drawn per file from {', '.join(AUGMENTS[1:])}; test files as recorded.", "",
             "| Debian package | licence (debian/copyright) | split | files |", "|---|---|---|---|"]
    for split, rows in taken.items():
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["package"]] = counts.get(r["package"], 0) + 1
        lines += [f"| {p} | {surveyed.LICENCES[p]} | {split} | {n} |" for p, n in sorted(counts.items())]
    return lines + [""]
