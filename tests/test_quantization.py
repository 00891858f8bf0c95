"""fp16 / int8 artifacts: manifest entries, the fidelity gate, --force marking, batch independence.

Quantizes a copy of the real base export once per session (fast path: runtime/samples as held-out
clips, a few calibration clips) — about a minute or two on 2 cores.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
from wavlink_edge.quantization import evaluate as ev  # noqa: E402
from wavlink_edge.quantization import quantize as q  # noqa: E402
from wavlink_edge.quantization import recipes  # noqa: E402

EXPECTED = {
    "audio_fp16.onnx": ("audio", "fp16", None), "text_fp16.onnx": ("text", "fp16", None),
    "audio_int8_dynamic.onnx": ("audio", "int8", "dynamic"), "audio_int8_dynamic_avx2.onnx": ("audio", "int8", "dynamic"),
    "text_int8_dynamic.onnx": ("text", "int8", "dynamic"),
    "audio_int8_static.onnx": ("audio", "int8", "static"), "text_int8_static.onnx": ("text", "int8", "static"),
}


def _copy_export(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="session")
def quantized(base_export, tmp_path_factory):
    """(export dir, refused artifact names): one fast quantize_export run of both towers and precisions."""
    out = _copy_export(base_export, tmp_path_factory.mktemp("quant") / "export")
    before = json.loads((out / "manifest.json").read_text())
    try:
        q.quantize_export(out, ["fp16", "int8"], fast=True, log=lambda *_: None)
        refused = []
    except q.QuantizationError as exc:
        refused = [name for name in EXPECTED if name in str(exc)]
        assert refused, f"unexpected error {exc}"
    return out, refused, before


def test_every_artifact_written_or_refused(quantized):
    out, refused, _ = quantized
    manifest = json.loads((out / "manifest.json").read_text())
    for name in EXPECTED:
        if name in refused:
            assert not (out / name).exists() and name not in manifest["artifacts"]
        else:
            assert (out / name).is_file() and name in manifest["artifacts"], name
    # the fp16 and the VNNI dynamic artifacts are expected to pass on any model; the others may be refused
    assert not {"audio_fp16.onnx", "text_fp16.onnx", "audio_int8_dynamic.onnx", "text_int8_dynamic.onnx"} & set(refused)
    assert not list(out.glob(".tmp-*")), "temporary files left behind"


def test_manifest_entries(quantized):
    out, _, before = quantized
    manifest = json.loads((out / "manifest.json").read_text())
    dims = [str(d) for d in manifest["model"]["matryoshka_dims"]]
    for name, entry in manifest["artifacts"].items():
        if name not in EXPECTED:
            continue
        tower, precision, variant = EXPECTED[name]
        assert (entry["tower"], entry["precision"], entry.get("variant")) == (tower, precision, variant)
        data = (out / name).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
        assert entry["source"]["sha256"] == before["artifacts"][f"{tower}.onnx"]["sha256"]
        fid = entry["fidelity"]
        assert fid["gate"] == q.gate(fid, precision, tower)[0] and fid["passed"] is True and fid["forced"] is False
        for d in dims:
            assert -1.0 <= fid[d]["cosine_min"] <= fid[d]["cosine_mean"] <= 1.0 + 1e-6
            assert fid[d]["cosine_mean"] >= fid["gate"]
        assert fid["heldout"]["n"] > 0 and entry["recipe"]["method"]
        assert entry["batch_independent"] is True
    # fp32 entries untouched
    for name in ("audio.onnx", "text.onnx", "tokenizer.json", "config.json"):
        assert manifest["artifacts"][name] == before["artifacts"][name]


def test_quantized_artifacts_are_smaller(quantized):
    out, refused, _ = quantized
    for tower in ("audio", "text"):
        fp32 = (out / f"{tower}.onnx").stat().st_size
        assert (out / f"{tower}_fp16.onnx").stat().st_size < 0.6 * fp32
        # int8 weights; the ladder may keep fc2 and the first/last layer fp32 (trained demo audio: 0.69)
        assert (out / f"{tower}_int8_dynamic.onnx").stat().st_size < 0.75 * fp32


def test_fp16_keeps_io_fp32_and_layernorm_fp32(quantized):
    import onnx

    out, _, _ = quantized
    for tower in ("audio", "text"):
        m = onnx.load(str(out / f"{tower}_fp16.onnx"))
        assert all(i.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16 for i in list(m.graph.input) + list(m.graph.output))
        fp16_inits = [i for i in m.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
        assert len(fp16_inits) > 10
        # every LayerNormalization runs on fp32 inputs: its scale initializer stayed fp32
        inits = {i.name: i.data_type for i in m.graph.initializer}
        for n in m.graph.node:
            if n.op_type == "LayerNormalization" and n.input[1] in inits:
                assert inits[n.input[1]] == onnx.TensorProto.FLOAT, n.name


def _audio_batch():
    paths = ev.audio_files(ev.SAMPLES_DIR)
    feats = [f["input_features"] for _, f in ev.audio_feeds(paths, 80, ("pad",))]
    return np.concatenate(feats)


@pytest.mark.parametrize("name", ["audio_int8_dynamic.onnx", "audio_fp16.onnx", "audio_int8_static.onnx"])
def test_audio_embedding_independent_of_batch_mates(quantized, name):
    out, refused, _ = quantized
    # A refused artifact fails here rather than skipping: a broken recipe must not leave CI green.
    assert name not in refused, f"{name} was refused by its fidelity gate, so its batch independence is untested"
    sess = ev.session(out / name)
    batch = _audio_batch()
    batch = np.concatenate([batch[1:], batch[:1]])  # 3 different clips, first one moved to the end
    together = sess.run({"input_features": batch})
    for i in range(batch.shape[0]):
        alone = sess.run({"input_features": batch[i:i + 1]})[0]
        # int8 dynamic: per-token activation scales, no statistic crosses rows; fp16/static have no
        # batch-dependent scales; 1e-6 leaves room for kernel blocking differences across batch sizes
        np.testing.assert_allclose(together[i], alone, atol=1e-6, rtol=0)


def test_naive_dynamic_int8_would_depend_on_batch_mates(base_export, tmp_path):
    """The bug the per-row Scan fixes, shown on the unwrapped graph (so the test above can fail)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    flat = tmp_path / "flat.onnx"
    q.quiet_ort_logging()
    quantize_dynamic(str(base_export / "text.onnx"), str(flat), op_types_to_quantize=["MatMul"],
                     per_channel=True, reduce_range=True, weight_type=QuantType.QInt8)
    sents = ["a dog barks", "a long sentence about a very noisy street market with many people shouting", ""]
    feeds = ev.text_batch(sents, base_export / "tokenizer.json")
    together = ev.session(flat).run(feeds)
    alone = np.concatenate([ev.session(flat).run(f) for _, f in ev.text_feeds(sents, base_export / "tokenizer.json")])
    assert np.abs(together - alone).max() > 1e-4


def test_text_int8_dynamic_independent_of_padding_and_mates(quantized):
    out, _, _ = quantized
    tok = out / "tokenizer.json"
    sents = ["a dog barks", "a long sentence about a very noisy street market with many people shouting", "",
             "crowd noise " * 80]
    sess = ev.session(out / "text_int8_dynamic.onnx")
    together = sess.run(ev.text_batch(sents, tok))
    alone = np.concatenate([sess.run(f) for _, f in ev.text_feeds(sents, tok)])
    np.testing.assert_allclose(together, alone, atol=1e-6, rtol=0)


def test_gate_refuses_then_force_marks(base_export, tmp_path, monkeypatch):
    out = _copy_export(base_export, tmp_path / "export")
    monkeypatch.setitem(q.GATES, "fp16", 1.01)  # unreachable: cosine <= 1
    with pytest.raises(q.QuantizationError, match="text_fp16.onnx"):
        q.quantize_export(out, ["fp16"], towers=("text",), fast=True, log=lambda *_: None)
    assert not (out / "text_fp16.onnx").exists()
    assert "text_fp16.onnx" not in json.loads((out / "manifest.json").read_text())["artifacts"]
    q.quantize_export(out, ["fp16"], towers=("text",), fast=True, force=True, log=lambda *_: None)
    entry = json.loads((out / "manifest.json").read_text())["artifacts"]["text_fp16.onnx"]
    assert entry["fidelity"]["forced"] is True and entry["fidelity"]["passed"] is False
    assert (out / "text_fp16.onnx").is_file()


def test_rejects_bad_arguments(base_export, tmp_path):
    with pytest.raises(q.QuantizationError, match="precision"):
        q.quantize_export(base_export, ["int4"])
    with pytest.raises(q.QuantizationError, match="calibration method"):
        q.quantize_export(base_export, ["int8"], calibration_method="mse")
    with pytest.raises(q.QuantizationError, match="not an export directory"):
        q.quantize_export(tmp_path, ["fp16"])
    out = _copy_export(base_export, tmp_path / "export")
    (out / "text.onnx").write_bytes(b"tampered")
    with pytest.raises(q.QuantizationError, match="sha256"):
        q.quantize_export(out, ["fp16"], towers=("text",))


def test_calibration_set_is_bundled_small_and_disjoint():
    clips = ev.audio_files(ev.CALIBRATION_DIR)
    assert len(clips) >= 24
    assert sum(p.stat().st_size for p in clips) <= 2_000_000
    held = {p.name for p in ev.audio_files(ev.HELDOUT_DIR)}
    assert not held & {p.name for p in clips}
    cal_text = set(ev.read_sentences(ev.CALIBRATION_DIR / "sentences.txt"))
    assert len(cal_text) >= 24 and not cal_text & set(ev.heldout_sentences())
    readme = (ev.CALIBRATION_DIR / "README.md").read_text()
    assert all(p.name in readme for p in clips), "every calibration clip has its source in the README"


def test_per_row_scan_matches_rows(tmp_path):
    """per_row_scan on a tiny graph whose output depends on the batch max (like dynamic quantization)."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 3])
    graph = helper.make_graph([helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
                               helper.make_node("Div", ["x", "m"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    wrapped = recipes.per_row_scan(model)
    onnx.checker.check_model(wrapped)
    onnx.save(wrapped, tmp_path / "w.onnx")
    data = np.array([[1, 2, 4], [1, 1, 8]], np.float32)
    got = ev.session(tmp_path / "w.onnx").run({"x": data})
    np.testing.assert_allclose(got, data / data.max(axis=1, keepdims=True))


def test_static_sets_select_real_nodes(base_export):
    import onnx

    for tower in ("audio", "text"):
        model = onnx.load(str(base_export / f"{tower}.onnx"), load_external_data=False)
        names = {n.name for n in model.graph.node}
        w = recipes.weight_matmuls(model)
        assert len(w) >= 36 and set(w) <= names
        assert len(recipes.fc2_nodes(model, tower)) == recipes.n_layers(model, tower) == 6
        for s in recipes.STATIC_SETS:
            ops, include, exclude = recipes.static_selection(s, model, tower)
            assert set(exclude) <= names and (include is None or set(include) <= names)
        with pytest.raises(ValueError):
            recipes.static_selection("nope", model, tower)


@pytest.mark.parametrize("name, bits", [("audio_int8_dynamic.onnx", 8), ("audio_int8_dynamic_avx2.onnx", 7)])
def test_shipped_audio_dynamic_is_blockwise_and_batch_exact(quantized, name, bits):
    out, refused, _ = quantized
    if name in refused:
        pytest.skip(f"{name} was under its target on this run")
    import onnx

    from wavlink_edge.quantization import graph

    model = onnx.load(str(out / name))
    ops = recipes.count_ops(model)
    assert "Scan" not in ops and "DynamicQuantizeLinear" not in ops and "MatMulIntegerToFloat" not in ops
    entry = json.loads((out / "manifest.json").read_text())["artifacts"][name]
    # every weight MatMul int8 (38), or all but layer 0's if the ladder needed its second rung
    assert ops["MatMulNBits"] == entry["recipe"]["int8_matmuls"] >= 32 and ops["MultiHeadAttention"] == 6
    assert all(np.abs(w).max() <= 2 ** (bits - 1) - 1 for w in graph.int8_weights(model).values())
    assert entry.get("int8_cpus") == (["vnni", "arm_dotprod"] if bits == 8 else None)
    sess = ev.session(out / name)
    mel = _audio_batch()
    together = sess.run({"input_features": mel})
    for i in range(mel.shape[0]):
        np.testing.assert_array_equal(together[i], sess.run({"input_features": mel[i:i + 1]})[0])


def test_profile_splits_kernel_time_by_op_type(base_export):
    from wavlink_edge.quantization import latency

    prof = latency.profile(base_export, "audio.onnx", runs=1, threads=2)
    assert set(prof) == {"30 s pad", "5 s trim"}
    for p in prof.values():
        assert p["total_ms"] > 0 and abs(sum(p["ops"].values()) - p["total_ms"]) < 1e-6 * p["total_ms"] + 1e-9
        assert "MatMul" in p["ops"] and "Conv" in p["ops"]  # the fp32 graph as exported
    assert prof["30 s pad"]["total_ms"] > prof["5 s trim"]["total_ms"]
    assert "| 30 s pad |" in latency.profile_markdown(prof, "audio.onnx")
