"""The generated corpus: determinism, Clotho layout, compositional split, audio sanity, committed eval split."""
import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from wavlink_edge.train.corpus import generate, load_split, real
from wavlink_edge.train.corpus import plan as corpus_plan
from wavlink_edge.train.corpus.generate import CAPTION_COLUMNS, available, missing_packages

EVAL_DIR = Path(__file__).resolve().parents[1] / "bench" / "data" / "wavlink_eval"
TINY = dict(n_train=12, n_test=6, seed=3, workers=2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    if missing_packages():
        pytest.skip(f"Debian packages not installed: {', '.join(missing_packages())}")
    a, b = tmp_path_factory.mktemp("corpus_a"), tmp_path_factory.mktemp("corpus_b")
    generate(a, **TINY)
    generate(b, **{**TINY, "workers": 1})  # worker count must not change the output
    return a, b


def _files(d: Path) -> dict:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != "stats.json"}  # stats.json holds wall-clock timings


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_same_seed_gives_identical_files(tiny):
    a, b = _files(tiny[0]), _files(tiny[1])
    assert a.keys() == b.keys() and len([k for k in a if k.endswith(".flac")]) == 18
    assert [k for k in a if a[k] != b[k]] == []


def test_captions_are_clotho_with_five_distinct_captions(tiny):
    for split, n in (("train", 12), ("test", 6)):
        with open(tiny[0] / f"captions_{split}.csv", newline="") as f:
            assert next(csv.reader(f)) == CAPTION_COLUMNS
        rows = _rows(tiny[0] / f"captions_{split}.csv")
        assert len(rows) == n
        for r in rows:
            caps = [r[c] for c in CAPTION_COLUMNS[1:]]
            assert all(c.strip() for c in caps) and len(set(caps)) >= 4, caps
        pairs = load_split(tiny[0], split)
        assert len(pairs) == n and all(Path(p).exists() and len(c) == 5 for p, c in pairs)


def test_tiny_corpus_test_compositions_never_seen_in_train(tiny):
    comps = {s: {r["composition"] for r in _rows(tiny[0] / f"metadata_{s}.csv")} for s in ("train", "test")}
    assert comps["train"] and comps["test"] and not comps["train"] & comps["test"]


def test_test_compositions_never_seen_in_train():
    """Planning only (no packages needed): disjoint at full size, and every single value is still trained on."""
    full = {s: corpus_plan.plan_split(0, s, n) for s, n in (("train", 3000), ("test", 600))}
    seen = {s: {corpus_plan.composition(c) for c in clips} for s, clips in full.items()}
    assert not seen["train"] & seen["test"]
    for scene, (_, _, va, _, vb) in corpus_plan.SCENES.items():
        trained = [c for c in seen["train"] if c[0] == scene]
        assert {c[1] for c in trained} == {corpus_plan._hashable(v) for v in va}, scene
        assert {c[2] for c in trained} == {corpus_plan._hashable(v) for v in vb}, scene


def test_audio_is_16k_mono_1_to_30_s_and_not_silent(tiny):
    for path in sorted((tiny[0] / "audio").rglob("*.flac")):
        info = sf.info(str(path))
        assert info.samplerate == 16000 and info.channels == 1
        assert 1.0 <= info.duration <= 30.0
        x, _ = sf.read(str(path), dtype="float32")
        assert np.sqrt(np.mean(x ** 2)) > 1e-3 and np.abs(x).max() <= 1.0, path.name


def test_data_card_states_generated_data_and_licences(tiny):
    card = (tiny[0] / "DATA_CARD.md").read_text()
    assert "generated data" in card and "licence" in card and "held out" in card


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng (Debian package espeak-ng) not installed")
def test_espeak_renders_every_language():
    from wavlink_edge.train.corpus import speech
    for lang in speech.LANGUAGES:
        assert len(speech.render("espeak-ng", lang, "female", "normal", 0)) > 16000 // 2, lang


@pytest.mark.skipif(not available()["music"], reason="fluidsynth or GM soundfonts (fluid-soundfont-gm) not installed")
def test_fluidsynth_renders_music():
    from wavlink_edge.train.corpus import music
    x = music.render("piano", "fast", "minor", True, 0)
    assert len(x) > 16000 * 20 and np.abs(x).max() > 0.01


def test_committed_eval_split_fits_limits_and_matches_csv():
    if not (EVAL_DIR / "captions_test.csv").exists():
        pytest.fail(f"eval split missing at {EVAL_DIR}")
    rows = _rows(EVAL_DIR / "captions_test.csv")
    meta = _rows(EVAL_DIR / "metadata_test.csv")
    audio = sorted((EVAL_DIR / "audio" / "test").glob("*.ogg"))
    total = sum(p.stat().st_size for p in EVAL_DIR.rglob("*") if p.is_file())
    assert total <= 15 * 1024 * 1024 and len(rows) >= 500
    assert [r["file_name"] for r in rows] == [p.name for p in audio] == [m["file_name"] for m in meta]
    assert all(all(r[c].strip() for c in CAPTION_COLUMNS[1:]) for r in rows)
    for p in audio[:: max(1, len(audio) // 20)]:  # decode a sample: Opus via libsndfile, 16 kHz mono
        x, sr = sf.read(str(p), dtype="float32")
        assert sr == 16000 and x.ndim == 1 and 1.0 <= len(x) / sr <= 30.0 and np.abs(x).max() > 1e-3


def test_plan_does_not_depend_on_installed_packages(monkeypatch):
    """A bare machine plans the same corpus (it used to raise KeyError 'voice' without the event packages)."""
    from wavlink_edge.train.corpus import events

    full = [corpus_plan.plan_split(0, s, 300) for s in ("train", "test")]
    monkeypatch.setattr(events, "inventory", lambda: ())
    assert [corpus_plan.plan_split(0, s, 300) for s in ("train", "test")] == full
    with pytest.raises(FileNotFoundError, match="Debian packages missing"):
        corpus_plan.resolve_events(full[0])


def test_rendering_names_the_missing_package(monkeypatch, tmp_path):
    from wavlink_edge.train.corpus import speech

    monkeypatch.setattr(speech, "available_engines", lambda: {"espeak-ng": False, "festival": True})
    with pytest.raises(FileNotFoundError, match="apt-get install espeak-ng"):
        generate(tmp_path, n_train=20, n_test=4)
    monkeypatch.setitem(real.PACKAGES, "asterisk-moh-opsound-wav", ("/nonexistent/moh", "", ""))
    with pytest.raises(FileNotFoundError, match="asterisk-moh-opsound-wav"):
        real.render_clip(next(c for c in real.plan(0)["test"] if c["package"] == "asterisk-moh-opsound-wav"), 0)


def test_real_split_holds_out_packages_and_classes():
    plans = real.plan(0)
    assert plans == real.plan(0)
    train_pkgs = {c["package"] for c in plans["train"]}
    train_classes = {c["label"] for c in plans["train"]}
    test_classes = {c["label"] for c in plans["test"]}
    test_packages = set(real.TEST_PACKAGES) | set(real.surveyed.TEST_PACKAGES)
    assert not train_pkgs & test_packages and test_packages == {c["package"] for c in plans["test"]} - {"tuxpaint-stamps-default"}
    assert set(real.TEST_CLASSES) <= test_classes and not train_classes & set(real.TEST_CLASSES)
    assert len(test_classes) >= 10
    assert all(c["augment"] == "original" for c in plans["test"])
    earlier = [c for c in plans["test"] if not c["source"].startswith("deb:")]  # the surveyed rows: test_train_surveyed
    counts = {lab: sum(c["label"] == lab for c in earlier) for lab in test_classes}
    assert max(counts.values()) <= real.PER_CLASS_TEST_CAP
    assert real.class_prompt("dog") == "the sound of a dog" and real.class_prompt("music") == "the sound of music"


def test_real_recordings_render_with_five_captions(tmp_path):
    if real.missing_packages():
        pytest.skip(f"Debian packages not installed: {', '.join(real.missing_packages())}")
    counts = real.generate(tmp_path, limit=4)
    assert counts["train"]["clips"] == counts["test"]["clips"] == 4
    for split in ("real_train", "real_test"):
        for path, caps in load_split(tmp_path, split):
            x, sr = sf.read(path, dtype="float32")
            assert sr == 16000 and 1.0 <= len(x) / sr <= 30.0 and np.abs(x).max() > 1e-3
            assert len(set(caps)) == 5 and all(c.strip() for c in caps)
