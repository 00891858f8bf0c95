"""The large shape's mechanics on a tiny model: 128 mels through the runtime's front end, 20 attention
heads through the fusion and per-token INT8, weights in external data through fp16/INT8 conversion and
hash-checked loading by path, and the >2 GB path of the graph surgery (forced by a zero threshold)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from wavlink_edge.export.backbones import minilm_dir  # noqa: E402
from wavlink_edge.export.model import AudioDims, TextSpec, WavLinkConfig, WavLinkModel, matryoshka_dims  # noqa: E402
from wavlink_edge.export.to_onnx import export_model  # noqa: E402
from wavlink_edge.quantization import graph  # noqa: E402
from wavlink_edge.runtime.session import OnnxSession  # noqa: E402

TINY_BERT = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                 max_position_embeddings=64)


@pytest.fixture(scope="module")
def large_shaped_export(tmp_path_factory):
    """A tiny large-shaped model (128 mels, 20 heads of width 4) exported with external data."""
    torch.manual_seed(0)
    config = WavLinkConfig(size="large", name="tiny-large", embed_dim=64, matryoshka_dims=matryoshka_dims(64),
                           audio=AudioDims(n_mels=128, n_ctx=1500, d_model=80, n_heads=20, n_layers=2, ffn_dim=96),
                           text=TextSpec(kind="bert", backbone=TINY_BERT, max_length=64))
    model = WavLinkModel(config).eval()
    out = tmp_path_factory.mktemp("tiny-large")
    manifest = export_model(model, minilm_dir() / "tokenizer.json", out, external_data=True)
    assert manifest["artifacts"]["audio.onnx"]["external_data"] == ["audio.onnx.data"]
    assert manifest["artifacts"]["audio.onnx.data"]["bytes"] == (out / "audio.onnx.data").stat().st_size
    return out


def test_twenty_head_fusion_is_exact_and_surgery_works_past_the_inline_limit(large_shaped_export, monkeypatch):
    model = onnx.load(str(large_shaped_export / "audio.onnx"))
    fused, n = graph.fuse_attention(model, 20)
    assert n == 2 and all(a.i == 20 for node in fused.graph.node if node.op_type == "MultiHeadAttention"
                          for a in node.attribute if a.name == "num_heads")
    mel = np.random.default_rng(0).standard_normal((2, 128, 300)).astype(np.float32)
    reference = OnnxSession(large_shaped_export / "audio.onnx").run({"input_features": mel})
    assert np.abs(OnnxSession(fused.SerializeToString()).run({"input_features": mel}) - reference).max() < 1e-5
    names = graph.layernorm_outputs(model)[:3]
    inline = graph.activation_absmax(model, names, [("x", {"input_features": mel})])
    monkeypatch.setattr(graph, "INLINE_WEIGHT_BYTES", 0)  # the >2 GB path: a temporary file with external data
    through_file = graph.activation_absmax(model, names, [("x", {"input_features": mel})])
    assert all(np.allclose(inline[k], through_file[k]) for k in names)


def test_fp16_and_int8_of_an_external_data_export_load_and_embed(large_shaped_export, tmp_path, sample_clips):
    import shutil

    from wavlink_edge.quantization.quantize import quantize_export
    from wavlink_edge.runtime import WavLink

    export = tmp_path / "export"
    shutil.copytree(large_shaped_export, export)
    quantize_export(export, ["fp16", "int8"], fast=True, force=True, int8_variants=("dynamic",),
                    log=lambda *_: None)
    embeddings = {}
    for precision in ("fp32", "fp16", "int8"):
        wl = WavLink.from_pretrained(export, precision=precision)
        assert wl.spec.n_mels == 128
        embeddings[precision] = wl.embed_audio([str(p) for p in sample_clips])
    for precision in ("fp16", "int8"):
        cos = (embeddings[precision] * embeddings["fp32"]).sum(axis=1)
        assert cos.min() > (0.999 if precision == "fp16" else 0.9), (precision, cos)
