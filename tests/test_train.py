"""Demo-head training: loss, metrics, training == exported computation, heads loading, a tiny end-to-end run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wavlink_edge.export.model import AudioDims, TextSpec, WavLinkConfig, WavLinkModel, matryoshka_dims
from wavlink_edge.train import data, heads, levers, loop, metrics, train

TINY_BERT = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 max_position_embeddings=64)


def _tiny_model(token_layer: int = 2) -> WavLinkModel:
    torch.manual_seed(0)
    cfg = WavLinkConfig(size="base", embed_dim=64, matryoshka_dims=matryoshka_dims(64),
                        audio=AudioDims(n_mels=80, n_ctx=50, d_model=32, n_heads=2, n_layers=3, ffn_dim=64),
                        text=TextSpec(kind="bert", backbone=TINY_BERT, max_length=64), global_token_layer=token_layer)
    return WavLinkModel(cfg).eval()


def test_matryoshka_loss_prefers_aligned_pairs():
    torch.manual_seed(0)
    audio = torch.randn(8, 64)
    scale = torch.tensor(np.log(20.0), dtype=torch.float32)
    aligned = heads.matryoshka_clip_loss(audio, audio + 0.01 * torch.randn(8, 64), scale, [64, 32, 16, 8])
    shuffled = heads.matryoshka_clip_loss(audio, audio[torch.randperm(8)], scale, [64, 32, 16, 8])
    assert aligned < 0.1 < shuffled


def test_same_label_pairs_leave_each_others_softmax():
    """Two clips of one class captioned alike: as negatives they cap the loss far above zero; masked, it falls."""
    torch.manual_seed(0)
    audio = torch.randn(6, 32)
    text = audio.clone()
    text[1], audio[1] = text[0], audio[0]  # rows 0 and 1: same label, same caption vector
    scale = torch.tensor(np.log(100.0), dtype=torch.float32)
    fit = data.FitSet(None, None, ["dog", "dog", "cat"], ["a", "b", "a"])
    fit.clips = type("Clips", (), {"__len__": lambda self: 6})()  # 3 generated rows, then the 3 real ones
    pairs = loop.not_negative_pairs(fit, np.array([3, 4, 0, 5, 1, 2]))
    assert pairs.tolist()[0][:2] == [False, True] and pairs.sum() == 2 and not pairs.diagonal().any()
    not_negative = torch.zeros(6, 6, dtype=torch.bool)
    not_negative[0, 1] = not_negative[1, 0] = True
    plain = heads.matryoshka_clip_loss(audio, text, scale, [32, 16])
    masked = heads.matryoshka_clip_loss(audio, text, scale, [32, 16], not_negative)
    assert torch.isfinite(masked) and masked < 0.05 < plain


def test_package_balance_evens_out_packages():
    fit = data.FitSet(None, None, ["x"] * 100, ["big"] * 90 + ["small"] * 10)
    fit.clips = type("Clips", (), {"__len__": lambda self: 104})()  # 4 generated rows first
    rng = np.random.default_rng(0)
    as_before = loop.real_pool(fit, loop.Recipe(real_repeats=2), rng)
    assert sorted(as_before.tolist()) == sorted(list(range(4, 104)) * 2)
    balanced = loop.real_pool(fit, loop.Recipe(real_repeats=2, package_balance=1.0), rng)
    assert len(balanced) == 200 and balanced.min() >= 4
    assert 70 < (balanced >= 94).sum() < 130  # the 10-clip package: ~half the draws (vs 20 before)


def test_levers_choice_prefers_the_score_then_the_earlier_lever():
    results = {"as before": {"best_score": 0.5}, "a": {"best_score": 0.7}, "b": {"best_score": 0.7}}
    assert levers.chosen(results) == "a"
    assert set(levers.LEVERS["as before"]) == set() and all(hasattr(loop.Recipe, k) for c in levers.LEVERS.values() for k in c)


def test_retrieval_metrics_on_known_rankings():
    rng = np.random.default_rng(0)
    audio = rng.standard_normal((6, 16))
    audio /= np.linalg.norm(audio, axis=1, keepdims=True)
    text = np.repeat(audio, data.CAPTIONS_PER_CLIP, axis=0)  # every caption equals its clip
    perfect = metrics.recall(audio, text, data.CAPTIONS_PER_CLIP)
    assert perfect["t2a"]["R@1"] == perfect["a2t"]["R@1"] == 1.0
    wrong = metrics.recall(audio, np.roll(text, data.CAPTIONS_PER_CLIP, axis=0), data.CAPTIONS_PER_CLIP)  # captions of the next clip
    assert wrong["t2a"]["R@1"] == wrong["a2t"]["R@1"] == 0.0
    assert wrong["t2a"]["R@10"] == 1.0  # only 6 clips: everything is in the top 10
    chance = metrics.chance(600, data.CAPTIONS_PER_CLIP)
    assert chance["t2a"]["R@1"] == pytest.approx(1 / 600)
    assert chance["a2t"]["R@1"] == pytest.approx(5 / 3000)
    assert metrics.chance(4, data.CAPTIONS_PER_CLIP)["t2a"]["R@10"] == 1.0


def test_zero_shot_counts_clips_and_classes():
    prompts = np.eye(3, 8)
    audio = np.eye(3, 8)[[0, 0, 0, 1, 2]]  # three "a" clips right, "b" right, "c" right
    audio[4] = prompts[1]  # the "c" clip is taken for "b"
    zs = metrics.zero_shot(audio, prompts, ["a", "a", "a", "b", "c"], ["a", "b", "c"])
    assert zs["top1"] == pytest.approx(4 / 5) and zs["balanced_top1"] == pytest.approx(2 / 3)
    assert zs["per_class"] == {"a": 1.0, "b": 1.0, "c": 0.0}


def test_training_forward_equals_exported_forward():
    """Cached frames + the trained token through the last layer == AudioTower.forward (what ONNX exports)."""
    model = _tiny_model(token_layer=2)
    with torch.no_grad():
        model.audio.global_token.normal_()
        mels = [torch.randn(1, 80, n) for n in (40, 64)]
        frames = [model.audio.frames_before_token(m)[0].numpy() for m in mels]
        clips = data.ClipStates(np.concatenate(frames), np.array([0, len(frames[0]), len(frames[0]) + len(frames[1])]),
                                 model.audio.layers[-1])
        ours = torch.nn.functional.normalize(heads.audio_vectors(model, clips, np.arange(2)), dim=-1)
        ref = torch.cat([model.audio(m) for m in mels])
    assert torch.nn.functional.cosine_similarity(ours, ref).min() > 0.999  # fp16 key/value cache


def test_token_layer_zero_is_the_original_stack():
    """The default config (token before layer 0) computes exactly what it did before the field existed."""
    model = _tiny_model(token_layer=0)
    mel = torch.randn(1, 80, 30)
    with torch.no_grad():
        x = model.audio.with_global_token(model.audio.embed_frames(mel))
        for layer in model.audio.layers[:-1]:
            x = layer(x)
        assert torch.equal(model.audio.penultimate_states(mel), x)
    with pytest.raises(ValueError, match="global_token_layer"):
        WavLinkConfig(global_token_layer=6)


def _save(tensors: dict, path, **meta):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta or None)
    return path


@pytest.mark.parametrize("content", ["empty", "logit_scale"])
def test_load_heads_refuses_files_without_the_heads(tmp_path, content):
    from wavlink_edge.export.backbones import load_heads

    model = _tiny_model()
    tensors = {} if content == "empty" else {"logit_scale": torch.tensor(2.0)}
    with pytest.raises(ValueError, match="lacks audio.global_token"):
        load_heads(model, _save(tensors, tmp_path / "h.safetensors"))
    assert model.config.heads == "untrained"


def test_load_heads_labels_trained_and_sets_the_token_layer(tmp_path):
    from wavlink_edge.export.backbones import load_heads

    model = _tiny_model(token_layer=0)
    state = model.state_dict()
    names = ["audio.global_token", "audio.projector.weight", "audio.projector.bias", "text.projector.weight",
             "text.projector.bias"]
    load_heads(model, _save({n: state[n] for n in names}, tmp_path / "h.safetensors", global_token_layer="2"))
    assert model.config.heads == "trained" and model.config.global_token_layer == model.audio.token_layer == 2


def test_assemble_refuses_empty_heads_with_one_line(tmp_path, tiny_hf_backbones, capsys):
    from wavlink_edge.export.assemble import main

    capsys.readouterr()  # drop the writers' progress bars
    for tensors in ({}, {"logit_scale": torch.tensor(2.0)}):
        heads = _save(tensors, tmp_path / "heads.safetensors")
        rc = main(["--size", "base", "--whisper", str(tiny_hf_backbones[0]), "--text", str(tiny_hf_backbones[1]),
                   "--heads", str(heads), "--out", str(tmp_path / "ckpt")])
        out = capsys.readouterr()
        assert rc == 2 and "trained heads" not in out.out and not (tmp_path / "ckpt").exists()
        assert out.err.count("\n") == 1 and "lacks audio.global_token" in out.err


def test_tiny_pipeline_loss_falls(tmp_path):
    """Corpus (tens of clips, generated + real) -> cached features -> a few epochs -> both splits evaluated."""
    from wavlink_edge.train.corpus import real
    from wavlink_edge.train.corpus.generate import missing_packages

    missing = missing_packages() + real.missing_packages()
    if missing:
        pytest.skip(f"Debian packages not installed: {', '.join(missing)}")
    assert train.main(["--quick", "--levers", "--workdir", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["levers"]) == set(levers.LEVERS)  # each lever trained, the best one's recipe kept
    best = levers.chosen(results["levers"])
    assert all(results["recipe"][k] == v for k, v in levers.LEVERS[best].items())
    assert results["selection"]["epochs"] == results["levers"][best]["best_epoch"]
    losses = results["selection"]["curves"]["train_loss"]  # the epoch-selection run trains every epoch
    assert losses[-1] < losses[0], losses
    assert 1 <= results["recipe"]["epochs"] == len(results["curves"]["epoch"]) <= results["selection"]["max_epochs"]
    assert "real_val_zero_shot" in results["selection"]["curves"] and "real_val_zero_shot" not in results["curves"]
    for split in ("real", "generated"):
        for policy in data.POLICIES:
            assert set(results["eval"]["trained"][split][policy]["retrieval"]) == {"512", "256", "128", "64"}
    assert set(results["eval"]["trained"]["real"]["trim"]["zero_shot"]["64"]["per_class"]) == set(results["real_classes"])
    from wavlink_edge.export.backbones import build_default_base

    model, _ = build_default_base(heads=tmp_path / "heads.safetensors")
    assert model.config.heads == "trained" and model.config.global_token_layer == 5
    assert model.config.clip_policy == results["shipped_policy"]
    # the card renders from the run's results, with intervals, per-stage memory and the committed heads beside
    assert set(results["peak_rss_gb"]) == {"corpus", "audio_features", "text_features", "train", "evaluation"}
    assert "top1_ci" in results["eval"]["trained"]["real"]["trim"]["zero_shot"]["512"]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "wavlink-base-demo.safetensors").write_bytes((tmp_path / "heads.safetensors").read_bytes())
    assert train.main(["--render-card", "--workdir", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    card = (tmp_path / "out" / "MODEL_CARD.md").read_text()
    assert f"the best, **{best}**, ships" in card
    assert "## Headline figures" in card and "committed before this run" in card and "[" in card.split("## Recipe")[0]


def test_validation_rows_hold_out_whole_files_and_their_mixes(tmp_path):
    import csv

    from wavlink_edge.train.corpus import real

    rows = [dict(file_name=f"r{i}.flac", package="pkg", source_file=f"{name}.ogg", label=name, augment=aug,
                 partner=partner, length_s=1.0)
            for i, (name, aug, partner) in enumerate(
                [(f"sound{k}", aug, f"sound{(k + 1) % 10}" if aug == "mix" else "")
                 for k in range(10) for aug in ("original", "gain", "mix")]
                + [("speech", "original", ""), ("music", "original", "")])]
    with open(tmp_path / "metadata_real_train.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    held, scored = real.validation_rows(tmp_path, fraction=0.2)
    held_files = {rows[i]["source_file"] for i in np.flatnonzero(scored)}
    assert len(held_files) == 2 and all(rows[i]["augment"] == "original" for i in np.flatnonzero(scored))
    for r, h in zip(rows, held):
        mixes_held = r["augment"] == "mix" and f"{r['partner']}.ogg" in held_files
        assert h == (r["source_file"] in held_files or mixes_held), r  # every copy, and the mixes that use it
    assert not held[-2:].any()  # speech and music stay in training
    assert np.array_equal(real.validation_rows(tmp_path, fraction=0.2)[0], held)  # stable


def test_choose_epochs_takes_the_smoothed_best_and_the_later_tie():
    curves = {"epoch": [1, 2, 3, 4, 5, 6], "val_t2a_r1": [0.1, 0.2, 0.3, 0.3, 0.3, 0.3],
              "val_a2t_r1": [0.1, 0.2, 0.3, 0.3, 0.3, 0.3], "real_val_zero_shot": [0.0, 0.1, 0.9, 0.1, 0.3, 0.3]}
    # raw best is epoch 3 (a one-epoch spike); smoothed: 3 -> 0.667, 4 -> 0.733, 5 -> 0.533
    assert loop.choose_epochs(curves) == 4
    flat = dict(curves, real_val_zero_shot=[0.2] * 6, val_t2a_r1=[0.3] * 6, val_a2t_r1=[0.3] * 6)
    assert loop.choose_epochs(flat) == 6
