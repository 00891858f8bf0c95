"""Real recordings from openttd-opensfx, lincity-ng-data and supertux-data (train only) and the zero-shot prompt ensemble."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from wavlink_edge.train.corpus import real
from wavlink_edge.train.evaluate import ensemble_prompts

EXTRA = ("openttd-opensfx", "lincity-ng-data", "supertux-data")


def _skip_unless(*packages: str) -> None:
    missing = [p for p in packages if not Path(real.PACKAGES[p][0]).is_dir()]
    if missing:
        pytest.skip(f"Debian packages not installed: {', '.join(missing)} (apt-get install {' '.join(missing)})")


def test_extra_packages_are_train_only_and_keep_the_test_split_held_out():
    plans = real.plan(0)
    extra = [c for c in plans["train"] if c["package"] in EXTRA]
    assert {c["package"] for c in extra} == set(EXTRA)
    assert not {c["package"] for c in plans["test"]} & set(EXTRA)
    assert not {c["label"] for c in extra} & set(real.TEST_CLASSES)
    assert not set(EXTRA) & set(real.TEST_PACKAGES)
    # the earlier train clips keep their ids and seeds (the extra ones are appended)
    first = [c for c in plans["train"] if c["package"] not in EXTRA and not c["source"].startswith("deb:")]
    assert plans["train"][: len(first)] == first
    assert all(c["partner"] in real.STAMP_SOUNDS for c in extra if c["augment"] == "mix")
    # test classes that now get train audio from other packages than the held-out ones
    assert {"applause", "train", "car engine", "music", "door", "rain"} <= {c["label"] for c in extra}


def test_class_prompts_start_with_the_single_prompt():
    for label in ("dog", "music", "owl"):
        prompts = real.class_prompts(label)
        assert prompts[0] == real.class_prompt(label) and len(set(prompts)) == len(real.PROMPT_TEMPLATES)
    assert real.class_prompts("owl")[1] == "an owl"


def test_ensemble_prompts_average_normalised_embeddings():
    torch.manual_seed(0)
    model = type("M", (), {})()
    model.text = type("T", (), {})()
    model.text.projector = torch.nn.Linear(8, 16)
    vectors = np.random.default_rng(0).standard_normal((3 * 4, 8)).astype(np.float32)  # 3 classes x 4 prompts
    ens, single = ensemble_prompts(model, vectors, 3, 8)
    assert ens.shape == single.shape == (3, 8)
    assert np.allclose(np.linalg.norm(ens, axis=1), 1, atol=1e-5) and np.allclose(np.linalg.norm(single, axis=1), 1, atol=1e-5)
    p = model.text.projector(torch.from_numpy(vectors)).detach().numpy()[:, :8]
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    assert np.allclose(single, p[::4], atol=1e-5)
    mean = p.reshape(3, 4, 8).mean(axis=1)
    assert np.allclose(ens, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-5)


def test_opensfx_catalogue_entries_decode():
    _skip_unless("openttd-opensfx")
    for index in (29, 4):
        x, name = real._opensfx(index)
        assert x.dtype == np.float32 and len(x) > 16000 and np.abs(x).max() > 1e-3
        assert name.startswith(f"opensfx.cat:{index}:")
    assert "Applause" in real._opensfx(29)[1] and real.OPENSFX_SOUNDS[29][0] == "applause"


def test_extra_train_clips_render_with_five_captions():
    _skip_unless("tuxpaint-stamps-default", *EXTRA)
    plans = real.plan(0)
    picks = [c for c in plans["train"] if c["package"] in EXTRA and c["augment"] in ("original", "mix")][:2]
    picks += [c for c in plans["train"] if c["source"].startswith(("lincity:", "music:"))][-8:-6]
    picks += [c for c in plans["train"] if c["source"].startswith("music:")][:1]
    picks += [c for c in plans["train"] if c["source"] in ("supertux:rain.wav@1", "supertux:door.wav")][::6]
    for clip in picks:
        x, caps, extra = real.render_clip(clip, 0)
        assert x.dtype == np.float32 and len(x) >= 1600 and np.abs(x).max() > 1e-3
        assert len(caps) == 5 and len(set(caps)) == 5 and extra["file"]
    music = [c for c in plans["train"] if c["source"].startswith("music:")]
    assert len(music) == len(real.LINCITY_MUSIC) * real.MUSIC_EXCERPTS
    assert len(real.render_clip(music[0], 0)[0]) == 10 * 16000
