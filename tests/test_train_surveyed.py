"""The surveyed Debian packages in the corpus (train/corpus/surveyed.py, vocabulary.py), the bootstrap intervals and
class-balanced accuracy (train/metrics.py), and the stage recorder of train.py."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from wavlink_edge.train import metrics
from wavlink_edge.train.corpus import real, surveyed
from wavlink_edge.train.corpus.vocabulary import LABELS, UNUSED


def test_every_survey_label_has_a_class_or_is_named_unused():
    labels = {r["label"] for r in surveyed.table() if not r["label"].startswith("HELDOUT:")}
    assert labels == set(LABELS) | set(UNUSED) and not set(LABELS) & set(UNUSED)
    for label, entry in LABELS.items():
        assert entry is not None and len(entry) >= 3, label  # a class and at least two phrasings
        assert len(set(entry[1:])) == len(entry) - 1, label


def test_heldout_and_duplicate_rows_are_never_planned():
    rows = surveyed.table()
    banned = {r["path"] for r in rows if r["label"].startswith("HELDOUT:")} | set(surveyed.duplicates())
    assert len(banned) > 100  # 11 held-out files and >100 byte-identical copies (symbolic links among them)
    plans = real.plan(0)
    planned = {c["source"][4:] for split in plans.values() for c in split if c["source"].startswith("deb:")}
    assert planned and not planned & banned
    assert not {c["label"] for c in plans["train"]} & set(real.TEST_CLASSES)


def test_test_split_is_whole_packages_large_and_broad():
    plans = real.plan(0)
    train_packages = {c["package"] for c in plans["train"]}
    test_packages = {c["package"] for c in plans["test"]}
    assert set(surveyed.TEST_PACKAGES) <= test_packages and not train_packages & set(surveyed.TEST_PACKAGES)
    assert len(plans["test"]) >= 300 and len({c["label"] for c in plans["test"]}) >= 40
    assert all(c["augment"] == "original" for c in plans["test"])
    counts: dict[str, int] = {}
    for c in plans["test"]:
        if c["source"].startswith("deb:"):
            counts[c["label"]] = counts.get(c["label"], 0) + 1
    assert max(counts.values()) <= surveyed.TEST_CAP
    # most test classes have train audio from other packages
    train_classes = {c["label"] for c in plans["train"]}
    test_classes = {c["label"] for c in plans["test"]}
    assert len(test_classes & train_classes) > 2 * len(test_classes - train_classes)


def test_surveyed_train_clips_keep_the_earlier_ids_and_get_augmented_copies():
    plans = real.plan(0)
    train = plans["train"]
    first = next(i for i, c in enumerate(train) if c["source"].startswith("deb:"))
    assert not any(c["source"].startswith("deb:") for c in train[:first])  # appended: earlier ids and seeds unchanged
    copies: dict[str, list[str]] = {}
    for c in train[first:]:
        copies.setdefault(c["source"], []).append(c["augment"])
    events = [a for s, a in copies.items() if LABELS[next(c["phrase"] for c in train if c["source"] == s)][0]
              not in ("speech", "music")][:50]
    assert all(a[0] == "original" and len(a) == 1 + real.SURVEYED_AUGMENTS for a in events)
    assert real.plan(0) == plans  # a pure function of the seed and the tables


def test_phrased_captions_use_several_phrasings():
    rng = np.random.default_rng(0)
    caps = real._phrased_captions(rng, real.EVENT_TEMPLATES, LABELS["dog"][1:], "dog", None)
    assert len(caps) == 5 and len({c.lower() for c in caps}) == 5
    assert sum(any(p in c.lower() for c in caps) for p in LABELS["dog"][1:]) >= 2 or "barking" in " ".join(caps).lower()


def _installed(rows):
    missing = surveyed.missing_packages(rows)
    if missing:
        pytest.skip(f"Debian packages not installed: {', '.join(missing)} (apt-get install {' '.join(missing)})")


def test_planned_files_are_not_byte_identical_copies():
    rows = surveyed.select("train", real.TEST_CLASSES) + surveyed.select("test", real.TEST_CLASSES)
    _installed(rows)
    digests = {}
    for r in rows:
        if "!" in r["path"]:
            continue  # archive members: the survey compared them by content already
        digest = hashlib.sha256(Path("/" + r["path"]).read_bytes()).hexdigest()
        assert digest not in digests, (r["path"], digests.get(digest))
        digests[digest] = r["path"]


def test_every_planned_file_opens():
    """libsndfile reads every planned file's header (names can lie: lmms ships WAV files named .ogg)."""
    import io

    import soundfile as sf

    rows = surveyed.select("train", real.TEST_CLASSES) + surveyed.select("test", real.TEST_CLASSES)
    _installed(rows)
    bad = []
    for r in rows:
        try:
            info = sf.info(io.BytesIO(surveyed._read(r["path"])) if "!" in r["path"] else "/" + r["path"])
            assert info.frames > 0
        except (RuntimeError, AssertionError) as exc:
            bad.append(f"{r['path']}: {exc}")
    assert not bad, bad


@pytest.mark.parametrize("kind", ["archive member", "long file"])
def test_surveyed_files_decode_and_long_ones_are_excerpted(kind):
    rows = [r for r in surveyed.select("train", real.TEST_CLASSES) + surveyed.select("test", real.TEST_CLASSES)
            if ("!" in r["path"]) == (kind == "archive member") and (float(r["duration_s"]) > 12) == (kind == "long file")]
    _installed(rows[:1])
    x, name = surveyed.decode(rows[0], [0, 1])
    assert name == rows[0]["path"] and x.dtype == np.float32 and 0 < len(x) <= surveyed.EXCERPT_S * 16000
    assert np.array_equal(surveyed.decode(rows[0], [0, 1])[0], x)  # the excerpt is seeded


def test_a_missing_package_is_named():
    with pytest.raises(FileNotFoundError, match="apt-get install no-such-package"):
        surveyed.decode({"package": "no-such-package", "path": "usr/share/no-such-package/x.wav"}, 0)


def test_bootstrap_intervals_bracket_the_estimate_and_shrink_with_n():
    rng = np.random.default_rng(0)
    small, large = rng.random(40) < 0.6, rng.random(4000) < 0.6
    lo, hi = metrics.bootstrap_interval(lambda idx: small[idx].mean(), len(small))
    assert lo < small.mean() < hi and 0.2 < hi - lo < 0.4  # +-~15 points at 40 clips
    lo2, hi2 = metrics.bootstrap_interval(lambda idx: large[idx].mean(), len(large))
    assert hi2 - lo2 < (hi - lo) / 5
    assert metrics.bootstrap_interval(lambda idx: small[idx].mean(), len(small)) == [lo, hi]  # seeded


def test_zero_shot_balanced_accuracy_and_intervals():
    prompts = np.eye(3, 8)
    labels = ["a"] * 8 + ["b", "c"]
    audio = np.eye(3, 8)[[0] * 8 + [1, 1]]  # every "a" right, "b" right, "c" taken for "b"
    zs = metrics.zero_shot(audio, prompts, labels, ["a", "b", "c"], interval=True)
    assert zs["top1"] == pytest.approx(0.9) and zs["balanced_top1"] == pytest.approx(2 / 3)
    assert zs["top1_ci"][0] <= 0.9 <= zs["top1_ci"][1] and zs["balanced_top1_ci"][1] <= 1.0
    right, target = np.array([1, 1, 0, 1.0]), np.array([0, 0, 2, 2])
    assert metrics.balanced(right, target) == pytest.approx(0.75)  # classes absent from a resample are skipped


def test_recall_intervals_resample_clips_with_their_captions():
    rng = np.random.default_rng(0)
    audio = rng.standard_normal((30, 16))
    audio /= np.linalg.norm(audio, axis=1, keepdims=True)
    text = np.repeat(audio, 5, axis=0)
    r = metrics.recall(audio, text, 5, interval=True)
    assert r["t2a"]["R@1"] == r["a2t"]["R@1"] == 1.0 and r["t2a"]["R@1_ci"] == [1.0, 1.0]
    noisy = metrics.recall(audio, text + 0.5 * rng.standard_normal(text.shape), 5, interval=True)
    for d in ("t2a", "a2t"):
        lo, hi = noisy[d]["R@5_ci"]
        assert lo <= noisy[d]["R@5"] <= hi
    plain = metrics.recall(audio, text, 5)
    assert "R@1_ci" not in plain["t2a"]


def test_stages_record_time_and_peak_memory():
    pytest.importorskip("torch", reason="train.train needs torch (the [export] extra)")
    from wavlink_edge.train.train import Stages

    stages = Stages()
    with stages("work"):
        block = np.ones(30_000_000, dtype=np.uint8)  # 30 MB touched
        block.sum()
    assert set(stages.seconds) == {"work", "total"} and stages.seconds["work"] >= 0
    assert stages.peak_rss_gb["work"]["self"] > 0.03
