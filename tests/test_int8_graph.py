"""Graph surgery behind the audio INT8 artifact: fused attention and the SmoothQuant fold are exact in fp32
(the shipped artifact's structure and batch-exactness: tests/test_quantization.py)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
import onnx  # noqa: E402

from wavlink_edge.quantization import evaluate as ev  # noqa: E402
from wavlink_edge.quantization import graph, recipes  # noqa: E402
from wavlink_edge.runtime.session import OnnxSession  # noqa: E402


@pytest.fixture(scope="module")
def audio_graph(base_export):
    return onnx.load(str(base_export / "audio.onnx"))


@pytest.fixture(scope="module")
def mel():
    feats = ev.audio_feeds(ev.audio_files(ev.SAMPLES_DIR)[:2], 80, ("trim",))
    frames = min(f["input_features"].shape[-1] for _, f in feats)
    return np.concatenate([f["input_features"][..., :frames] for _, f in feats])


def _run(model, x):
    return OnnxSession(model.SerializeToString()).run({"input_features": x})


def test_fused_attention_and_smoothing_are_exact_in_fp32(audio_graph, mel):
    ref = _run(audio_graph, mel)
    fused, n = graph.fuse_attention(audio_graph, 8)
    assert n == recipes.n_layers(audio_graph, "audio")
    ops = recipes.count_ops(fused)
    assert ops["MultiHeadAttention"] == n and "Softmax" not in ops
    np.testing.assert_allclose(_run(fused, mel), ref, atol=1e-5, rtol=0)
    names = graph.layernorm_outputs(audio_graph)
    assert len(names) == 2 * n  # q/k/v and fc1 of every layer
    absmax = graph.activation_absmax(audio_graph, names, [("x", {"input_features": mel})])
    smoothed, k = graph.smooth_layernorms(audio_graph, absmax, 0.5)
    assert k == len(names)
    np.testing.assert_allclose(_run(smoothed, mel), ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("frames", [200, 201, 3000])
def test_front_end_convolutions_as_matmuls_are_exact_in_fp32(audio_graph, frames):
    x = (np.random.default_rng(frames).standard_normal((2, 80, frames)) * 0.5).astype(np.float32)
    im2col, n = graph.conv_front_end_as_matmuls(audio_graph)
    ops = recipes.count_ops(im2col)
    assert n == 2 and "Conv" not in ops and "Transpose" in ops  # only the input's, not conv2's output
    assert set(graph.FRONT_END_MATMULS) <= {node.name for node in im2col.graph.node}
    np.testing.assert_allclose(_run(im2col, x), _run(audio_graph, x), atol=1e-5, rtol=0)  # odd T too


def test_front_end_rewrite_refuses_a_graph_it_does_not_know(audio_graph):
    broken = onnx.ModelProto.FromString(audio_graph.SerializeToString())
    conv2 = next(n for n in broken.graph.node if n.name == "/audio/conv2/Conv")
    next(a for a in conv2.attribute if a.name == "strides").ints[:] = [1]
    with pytest.raises(ValueError, match="stride 2"):
        graph.conv_front_end_as_matmuls(broken)


def test_dynamic_sweep_sets_cover_each_layer_once(audio_graph):
    from wavlink_edge.quantization import exclusion_sweep

    probe, _ = graph.conv_front_end_as_matmuls(graph.fuse_attention(audio_graph, 8)[0])
    names = graph.per_token_candidates(probe)
    sets = exclusion_sweep.dynamic_sets(audio_graph, names)
    assert sets["every weight MatMul int8"] == [] and set(sets["front end fp32"]) == set(graph.FRONT_END_MATMULS)
    layers = recipes.n_layers(audio_graph, "audio")
    int8_alone = [set(names) - set(sets[f"only layer {k} int8"]) for k in range(layers)]
    int8_alone.append(set(names) - set(sets["only the front end int8"]))
    assert all(int8_alone) and set().union(*int8_alone) == set(names)  # every MatMul in exactly one "alone" set
    assert sum(len(s) for s in int8_alone) == len(names)
    assert all(set(keep) <= set(names) for keep in sets.values())


def test_front_end_smoothing_is_exact_in_fp32(audio_graph, mel):
    im2col, _ = graph.conv_front_end_as_matmuls(audio_graph)
    stats = graph.matmul_input_absmax(im2col, list(graph.FRONT_END_MATMULS), [("x", {"input_features": mel})])
    assert {k: v.shape for k, v in stats.items()} == {graph.FRONT_END_MATMULS[0]: (240,), graph.FRONT_END_MATMULS[1]: (1536,)}
    smoothed, k = graph.smooth_matmul_inputs(im2col, stats, 0.5)
    assert k == 2 and recipes.count_ops(smoothed)["Mul"] == recipes.count_ops(im2col)["Mul"] + 2
    np.testing.assert_allclose(_run(smoothed, mel), _run(im2col, mel), atol=1e-4, rtol=0)
