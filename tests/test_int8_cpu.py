"""Audio INT8 on every CPU: the AVX2-safe weights stay in their range (checked against a numpy emulation of
AVX2's saturating vpmaddubsw), the runtime's choice of an INT8 artifact by CPU features (faked flags), the
block-wise graph is batch-exact, and the audio gate refuses an artifact under its target."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from wavlink_edge.runtime import cpu_features
from wavlink_edge.runtime.batching import FRAME_LENGTHS, padded_batch
from wavlink_edge.runtime.manifest import Manifest
from wavlink_edge.runtime.session import OnnxSession

INTEL_SPR = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_vnni amx_tile amx_int8\n"
ALDER_LAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 avx_vnni\n"
AMD_ZEN2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma bmi2\n"
GRAVITON2 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimdrdm asimddp\n"
CORTEX_A53 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32\n"


@pytest.mark.parametrize("cpuinfo, kind", [(INTEL_SPR, "vnni"), (ALDER_LAKE, "vnni"), (AMD_ZEN2, "avx2"),
                                           (GRAVITON2, "arm_dotprod"), (CORTEX_A53, "unknown"), ("", "unknown")])
def test_cpu_kind_from_cpuinfo_flags(cpuinfo, kind):
    flags = cpu_features.cpu_flags(cpuinfo)
    assert cpu_features.int8_kind(flags) == kind
    assert cpu_features.int8_saturation_free(flags) == (kind in ("vnni", "arm_dotprod"))


def _manifest_with_two_int8(tiny_export, vnni_first=True) -> Manifest:
    data = json.loads((tiny_export / "manifest.json").read_text())
    fp32 = data["artifacts"]["audio.onnx"]
    vnni = {**fp32, "precision": "int8", "variant": "dynamic", "int8_cpus": ["vnni", "arm_dotprod"]}
    safe = {**fp32, "precision": "int8", "variant": "dynamic"}
    pairs = [("audio_int8_dynamic_vnni.onnx", vnni), ("audio_int8_dynamic.onnx", safe)]
    for name, entry in pairs if vnni_first else pairs[::-1]:
        data["artifacts"][name] = entry
    return Manifest(tiny_export, data)


@pytest.mark.parametrize("vnni_first", [True, False])
@pytest.mark.parametrize("cpuinfo, expected", [(INTEL_SPR, "audio_int8_dynamic_vnni.onnx"),
                                               (GRAVITON2, "audio_int8_dynamic_vnni.onnx"),
                                               (AMD_ZEN2, "audio_int8_dynamic.onnx"),
                                               (CORTEX_A53, "audio_int8_dynamic.onnx"),
                                               ("", "audio_int8_dynamic.onnx")])
def test_runtime_picks_the_int8_artifact_this_cpu_runs_exactly(tiny_export, cpuinfo, expected, vnni_first):
    from wavlink_edge.runtime import model

    manifest = _manifest_with_two_int8(tiny_export, vnni_first)
    listed = manifest.find_artifact("audio", "int8", "dynamic")  # whichever the manifest lists first
    assert model.int8_for_this_cpu(manifest, listed, cpu_features.cpu_flags(cpuinfo)).file == expected


def test_an_int8_artifact_for_vnni_only_falls_back_to_fp32_on_avx2(tiny_export, caplog):
    from wavlink_edge.runtime import model

    data = json.loads((tiny_export / "manifest.json").read_text())
    data["artifacts"]["audio_int8_dynamic_vnni.onnx"] = {**data["artifacts"]["audio.onnx"], "precision": "int8",
                                                         "variant": "dynamic", "int8_cpus": ["vnni"]}
    manifest = Manifest(tiny_export, data)
    listed = manifest.find_artifact("audio", "int8", "dynamic")
    with caplog.at_level("WARNING"):
        chosen = model.int8_for_this_cpu(manifest, listed, cpu_features.cpu_flags(AMD_ZEN2))
    assert chosen.file == "audio.onnx" and "exact only on vnni" in caplog.text


# ---------------------------------------------------------------- saturation (needs onnx + onnxruntime)

def _blockwise(tiny_export, weight_bits):
    onnx = pytest.importorskip("onnx")
    from wavlink_edge.quantization import quantize as q

    model, _, n_int8, _ = q.audio_blockwise_int8_graph(onnx.load(str(tiny_export / "audio.onnx")), 2,
                                                       weight_bits=weight_bits)
    assert n_int8 > 0
    return model


def test_vpmaddubsw_emulation_saturates_8_bit_weights_and_not_7_bit():
    pytest.importorskip("onnx", reason="the quantization stage needs onnx (the [export] extra)")
    from wavlink_edge.quantization import graph

    rng = np.random.default_rng(0)
    a = rng.integers(200, 256, (4, 64))  # large u8 activations (a per-token scale makes the largest 255)
    for bits, saturates in ((8, True), (7, False)):
        qmax = 2 ** (bits - 1) - 1
        w = rng.integers(qmax - 10, qmax + 1, (64, 8)) * rng.choice([-1, 1], (1, 8))  # same sign along K
        exact = a @ w
        assert (not np.array_equal(graph.vpmaddubsw(a, w), exact)) == saturates, bits
        assert (graph.worst_u8s8_pair(w) > 32767) == saturates, bits


def test_shipped_audio_int8_weights_cannot_saturate_without_vnni(tiny_export):
    pytest.importorskip("onnx", reason="the quantization stage needs onnx (the [export] extra)")
    from wavlink_edge.quantization import graph
    from wavlink_edge.quantization import quantize as q

    model = _blockwise(tiny_export, q.AUDIO_WEIGHT_BITS)
    weights = graph.int8_weights(model)
    assert weights and all(np.abs(w).max() <= 63 for w in weights.values())
    # signed weights x u8 activations, and stored bytes (1..127) x s8 activations: both within int16
    assert max(graph.worst_u8s8_pair(w) for w in weights.values()) <= 32767
    assert max(int(w.max()) + 64 for w in weights.values()) * 127 * 2 <= 32767
    # the same graph with full 8-bit weights would not be safe: the check can fail
    full = graph.int8_weights(_blockwise(tiny_export, 8))
    assert max(graph.worst_u8s8_pair(w) for w in full.values()) > 32767


def test_shipped_audio_static_forms_no_integer_product(tiny_export, tmp_path):
    """weights_only: int8 weights behind DequantizeLinear, no QuantizeLinear on an activation, so no int8 x int8
    product exists for any CPU to saturate (the statement docs/quantization.md makes for AVX2)."""
    pytest.importorskip("onnx")
    import onnx
    from onnx import numpy_helper

    from wavlink_edge.quantization import graph
    from wavlink_edge.quantization import quantize as q

    model, n = graph.weight_only_qdq(onnx.load(str(tiny_export / "audio.onnx")), q.STATIC_WEIGHT_ONLY_BITS)
    assert n > 0
    ops = {node.op_type for node in model.graph.node}
    assert "QuantizeLinear" not in ops and not ops & {"MatMulInteger", "QLinearMatMul", "MatMulIntegerToFloat"}
    inits = {i.name: i for i in model.graph.initializer}
    ints = [numpy_helper.to_array(inits[node.input[0]]) for node in model.graph.node if node.op_type == "DequantizeLinear"]
    assert len(ints) == n and all(w.dtype == np.int8 for w in ints)
    onnx.save(model, tmp_path / "static.onnx")
    mel = np.random.default_rng(1).standard_normal((1, 80, 100)).astype(np.float32)
    ref = OnnxSession(tiny_export / "audio.onnx").run({"input_features": mel})
    got = OnnxSession(tmp_path / "static.onnx").run({"input_features": mel})
    assert float((ref * got).sum() / np.linalg.norm(ref) / np.linalg.norm(got)) > 0.99


def test_blockwise_int8_mixed_batch_equals_each_clip_alone(tiny_export, tmp_path):
    onnx = pytest.importorskip("onnx")
    onnx.save(_blockwise(tiny_export, 7), tmp_path / "int8.onnx")
    session = OnnxSession(tmp_path / "int8.onnx")
    rng = np.random.default_rng(0)
    windows = [rng.standard_normal((80, n)).astype(np.float32) for n in (100, 36, 2, 64, 12)]
    features, lengths = padded_batch(windows)
    together = session.run({"input_features": features, FRAME_LENGTHS: lengths})
    for i, window in enumerate(windows):
        np.testing.assert_array_equal(together[i], session.run({"input_features": window[None]})[0])


# ---------------------------------------------------------------- the gate

def test_audio_gate_needs_the_target_for_each_clip_policy():
    pytest.importorskip("onnx", reason="the quantization stage needs onnx (the [export] extra)")
    from wavlink_edge.quantization import quantize as q

    ok = {"512": {"cosine_mean": 0.999, "cosine_min": 0.99}, "64": {"cosine_mean": 0.998, "cosine_min": 0.99}}
    short = {"512": {"cosine_mean": 0.996, "cosine_min": 0.97}, "64": {"cosine_mean": 0.996, "cosine_min": 0.975}}
    assert q.gate({**ok, "by_policy": {"pad": ok, "trim": ok}}, "int8", "audio")[1]
    # every input together passes, but the trimmed clips alone miss the 0.98 min: refused
    assert not q.gate({**ok, "by_policy": {"pad": ok, "trim": short}}, "int8", "audio")[1]
    assert q.gate(short, "int8", "text")[1]  # text keeps the mean-only 0.99 gate


def test_gate_refuses_a_below_target_audio_int8_and_force_marks_it(base_export, tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    from wavlink_edge.quantization import quantize as q

    out = shutil.copytree(base_export, tmp_path / "export")
    monkeypatch.setattr(q, "AUDIO_DYNAMIC_TARGET", (0.995, 1.01))  # a min cosine over 1 cannot be reached
    monkeypatch.setattr(q, "AUDIO_DYNAMIC_LADDER", ("blockwise_int8",))
    monkeypatch.setattr(q, "AUDIO_DYNAMIC_BUILDS", (("audio_int8_dynamic.onnx", 8, ("vnni", "arm_dotprod"), True),))
    args = dict(towers=("audio",), int8_variants=("dynamic",), fast=True, log=lambda *_: None)
    with pytest.raises(q.QuantizationError, match="audio_int8_dynamic.onnx"):
        q.quantize_export(out, ["int8"], **args)
    assert not (out / "audio_int8_dynamic.onnx").exists()
    assert "audio_int8_dynamic.onnx" not in json.loads((out / "manifest.json").read_text())["artifacts"]
    q.quantize_export(out, ["int8"], force=True, **args)
    entry = json.loads((out / "manifest.json").read_text())["artifacts"]["audio_int8_dynamic.onnx"]
    assert entry["fidelity"]["forced"] is True and entry["fidelity"]["passed"] is False
    assert Manifest.load(out).find_artifact("audio", "int8", "dynamic").below_fidelity_gate
