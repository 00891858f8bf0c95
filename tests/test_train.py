"""Demo-head training: loss, retrieval metrics, and a tiny end-to-end run whose loss must fall."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wavlink_edge.train import train


def test_matryoshka_loss_prefers_aligned_pairs():
    torch.manual_seed(0)
    audio = torch.randn(8, 64)
    scale = torch.tensor(np.log(20.0), dtype=torch.float32)
    aligned = train.matryoshka_clip_loss(audio, audio + 0.01 * torch.randn(8, 64), scale, [64, 32, 16, 8])
    shuffled = train.matryoshka_clip_loss(audio, audio[torch.randperm(8)], scale, [64, 32, 16, 8])
    assert aligned < 0.1 < shuffled


def test_retrieval_metrics_on_known_rankings():
    rng = np.random.default_rng(0)
    audio = rng.standard_normal((6, 16))
    audio /= np.linalg.norm(audio, axis=1, keepdims=True)
    text = np.repeat(audio, train.CAPTIONS_PER_CLIP, axis=0)  # every caption equals its clip
    perfect = train.retrieval(audio, text)
    assert perfect["t2a"]["R@1"] == perfect["a2t"]["R@1"] == 1.0
    wrong = train.retrieval(audio, np.roll(text, train.CAPTIONS_PER_CLIP, axis=0))  # captions of the next clip
    assert wrong["t2a"]["R@1"] == wrong["a2t"]["R@1"] == 0.0
    assert wrong["t2a"]["R@10"] == 1.0  # only 6 clips: everything is in the top 10
    chance = train.chance(600)
    assert chance["t2a"]["R@1"] == pytest.approx(1 / 600)
    assert chance["a2t"]["R@1"] == pytest.approx(5 / 3000)


def test_tiny_pipeline_loss_falls(tmp_path):
    """Corpus (tens of clips) -> cached features -> both modes trained for a few epochs."""
    assert train.main(["--tiny", "--workdir", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    for mode in ("a", "b"):
        losses = results["curves"][mode]["train_loss"]
        assert losses[-1] < losses[0], (mode, losses)
        for policy in ("trim", "pad"):
            assert set(results["trained"][mode][policy]) == {"512", "256", "128", "64"}
    heads = tmp_path / f"heads_{results['shipped_mode']}.safetensors"
    from wavlink_edge.export.backbones import build_default_base

    model, _ = build_default_base(heads=heads)
    assert model.config.heads == "trained" and model.config.clip_policy == "trim"
