"""quantize.py hardening: a refused re-quantization keeps the artifact that passed, nothing half-written
survives an interruption, and bad arguments or calibration audio fail early with one line."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
from wavlink_edge.quantization import graph  # noqa: E402
from wavlink_edge.quantization import quantize as q  # noqa: E402


def _silent(*_):
    pass


@pytest.fixture()
def export(base_export, tmp_path):
    return shutil.copytree(base_export, tmp_path / "export")


def _entry(out, name):
    return json.loads((out / "manifest.json").read_text())["artifacts"].get(name)


def test_refused_requantization_keeps_the_previous_passing_artifact(export, monkeypatch):
    q.quantize_export(export, ["fp16"], towers=("text",), fast=True, log=_silent)
    before, data = _entry(export, "text_fp16.onnx"), (export / "text_fp16.onnx").read_bytes()
    assert before["fidelity"]["passed"]
    monkeypatch.setitem(q.GATES, "fp16", 1.01)  # unreachable: the new candidate is refused
    with pytest.raises(q.QuantizationError, match="text_fp16.onnx"):
        q.quantize_export(export, ["fp16"], towers=("text",), fast=True, log=_silent)
    assert (export / "text_fp16.onnx").read_bytes() == data
    assert _entry(export, "text_fp16.onnx") == before
    assert not list(export.glob(".tmp-*"))


def test_interrupted_quantization_leaves_no_temporary_files(export, monkeypatch):
    def interrupted(src, dst):
        dst.write_bytes(b"half written")
        raise KeyboardInterrupt

    monkeypatch.setattr(q, "make_fp16", interrupted)
    with pytest.raises(KeyboardInterrupt):
        q.quantize_export(export, ["fp16"], towers=("text",), fast=True, log=_silent)
    assert not list(export.glob(".tmp-*"))
    assert _entry(export, "text_fp16.onnx") is None


def test_empty_precision_is_an_error(export, capsys):
    with pytest.raises(q.QuantizationError, match="no precision"):
        q.quantize_export(export, [], log=_silent)
    with pytest.raises(SystemExit) as exc:
        q.main([str(export), "--precision", ""])
    assert exc.value.code == 2 and "precision" in capsys.readouterr().err


def test_bad_calibration_dir_is_reported_before_any_work(export, tmp_path, monkeypatch):
    def no_work(*_a, **_k):
        raise AssertionError("work started before the calibration dir was checked")

    monkeypatch.setattr(q, "_artifact_fp16", no_work)
    monkeypatch.setattr(q, "_artifact_int8_dynamic", no_work)
    with pytest.raises(q.QuantizationError, match="not a directory"):
        q.quantize_export(export, ["fp16", "int8"], calibration_dir=tmp_path / "nope", log=_silent)
    (tmp_path / "empty").mkdir()
    with pytest.raises(q.QuantizationError, match="no audio files"):
        q.quantize_export(export, ["fp16", "int8"], calibration_dir=tmp_path / "empty", log=_silent)


def test_garbage_calibration_audio_is_one_line(export, tmp_path, capsys):
    bad = tmp_path / "calib"
    bad.mkdir()
    (bad / "noise.wav").write_bytes(np.random.default_rng(0).integers(0, 255, 4000, dtype=np.uint8).tobytes())
    code = q.main([str(export), "--precision", "int8", "--tower", "audio", "--calibration-dir", str(bad)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "noise.wav" in err and "Traceback" not in err


def test_per_token_int8_is_independent_of_batch_mates_on_a_tiny_graph(tmp_path):
    """Rows of very different magnitude: a per-tensor scale would crush the small row, per-token does not."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from wavlink_edge.runtime.session import OnnxSession

    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 32)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "t", 32])
    model = helper.make_model(helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g", [x], [y],
                                                initializer=[numpy_helper.from_array(w, "w")]),
                              opset_imports=[helper.make_opsetid("", 17)])
    quantized, n = graph.per_token_int8(model)
    assert n == 1
    onnx.save(quantized, tmp_path / "q.onnx")
    sess = OnnxSession(tmp_path / "q.onnx")
    data = rng.standard_normal((3, 5, 64)).astype(np.float32) * np.array([1e-3, 1.0, 1e3], np.float32)[:, None, None]
    together = sess.run({"x": data})
    for i in range(3):
        alone = sess.run({"x": data[i:i + 1]})[0]
        np.testing.assert_array_equal(together[i], alone)
        ref = data[i] @ w
        assert np.abs(alone - ref).max() <= 0.02 * np.abs(ref).max()


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_calibration_collects_every_input_in_bounded_steps(tiny_export, tmp_path, monkeypatch, method):
    """Histogram calibration used to hold every input's tensors at once (OOM on the 41 bundled clips);
    it now runs ORT's strided collection. Both paths must still see every input."""
    seen = []
    original = q._Reader.get_next

    def counting(self):
        feed = original(self)
        if feed is not None:
            seen.append(float(feed["input_features"].max()))
        return feed

    monkeypatch.setattr(q._Reader, "get_next", counting)
    rng = np.random.default_rng(0)
    feeds = [(f"x{i}", {"input_features": (rng.standard_normal((1, 80, 100)) * (i + 1)).astype(np.float32)})
             for i in range(5)]
    cache = tmp_path / "cache.json"
    q.calibrate(tiny_export / "audio.onnx", feeds, method, cache)
    assert sorted(seen) == sorted(float(f["input_features"].max()) for _, f in feeds)
    assert cache.is_file() and cache.stat().st_size > 0
