"""Mixed-length exact batches: windows of different lengths share a padded batch, and the audio graph's
frame_lengths input masks the padding so every embedding equals the window run alone.

Runs on tests/data/tiny_export (made with frame_lengths) and tests/data/tiny_export_v1 (the same random
model exported before frame_lengths existed: batches by equal length, as before). Quantized graphs and
a fresh export need the [export] extra and skip without it.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from wavlink_edge.runtime import WavLink
from wavlink_edge.runtime.batching import FRAME_LENGTHS, MAX_PADDING, POOL_BATCHES, WindowBatcher, padded_batch
from wavlink_edge.runtime.errors import ModelFilesError
from wavlink_edge.runtime.session import OnnxSession

OLD_EXPORT = Path(__file__).resolve().parent / "data" / "tiny_export_v1"
LENGTHS = (100, 36, 64, 2, 50, 100, 12, 88, 40, 62)  # mel frames, even (what the trim policy makes)


def _windows(lengths=LENGTHS, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((80, n)).astype(np.float32) for n in lengths]


def _alone(session, windows):
    return np.concatenate([session.run({"input_features": w[None]}) for w in windows])


class _Recording:
    """An audio session that records the feeds of every run."""

    def __init__(self, session):
        self.session, self.feeds = session, []

    def run(self, feeds):
        self.feeds.append(feeds)
        return self.session.run(feeds)

    def __getattr__(self, name):
        return getattr(self.session, name)


# ---------------------------------------------------------------- the batcher

def _drain(batcher, lengths, drop=None):
    batches, max_waiting = [], 0
    for item, n in enumerate(lengths):
        batches += batcher.add(item, np.full((2, n), float(item), np.float32))
        max_waiting = max(max_waiting, batcher.waiting)
        if item == drop:
            batcher.drop(item)
    return batches + batcher.flush(), max_waiting


def test_mixed_batches_bucket_by_length_within_both_caps_and_bounded_padding():
    lengths = [int(n) for n in np.random.default_rng(1).integers(50, 1501, 300) * 2]  # 1-30 s trim windows
    batcher = WindowBatcher(batch_size=8, max_batch_frames=3000, mixed_lengths=True)
    batches, max_waiting = _drain(batcher, lengths)
    assert max_waiting <= POOL_BATCHES * 8 + 1
    assert sorted(i for b in batches for i in b.items) == list(range(len(lengths)))  # every window once
    for b in batches:
        rows, longest = b.features.shape[0], b.features.shape[-1]
        assert b.lengths.tolist() == [lengths[i] for i in b.items] and longest == max(b.lengths)
        assert rows == 1 or (rows <= 8 and rows * longest <= 3000 and rows * longest <= (1 + MAX_PADDING) * b.lengths.sum())
        for row, item, n in zip(b.features, b.items, b.lengths):  # each row is its window, zero-padded
            assert (row[:, :n] == item).all() and (row[:, n:] == 0).all()
    assert max(b.features.shape[0] for b in batches) > 1 and any(len(set(b.lengths)) > 1 for b in batches)
    # versus equal lengths only (nearly one run per window): fewer runs, though windows over 15 s run alone
    equal, _ = _drain(WindowBatcher(batch_size=8, max_batch_frames=3000), lengths)
    assert len(batches) < 0.8 * len(equal) and len(equal) > 0.95 * len(lengths)


def test_mixed_batches_of_short_windows_fill_up_and_the_oldest_goes_first():
    batcher = WindowBatcher(batch_size=4, max_batch_frames=3000, mixed_lengths=True)
    lengths = [100, 1000, 120, 110, 104, 1100, 130, 106, 102, 118, 1050, 124, 100, 100, 100, 100, 100]
    ready = []
    for item, n in enumerate(lengths):
        ready += batcher.add(item, np.zeros((2, n), np.float32))
    first = ready[0]  # the pool overflowed at the 17th window: the oldest (item 0) leaves with 3 near lengths
    assert 0 in first.items and len(first.items) == 4 and max(first.lengths) <= 1.25 * min(first.lengths)
    rest = batcher.flush()
    long_batch = next(b for b in rest if 1 in b.items)
    assert sorted(long_batch.lengths.tolist()) == [1000, 1050]  # 3 x 1100 would pass max_batch_frames


def test_odd_lengths_batch_only_with_their_own_length_and_drop_forgets_an_item():
    batcher = WindowBatcher(batch_size=4, max_batch_frames=3000, mixed_lengths=True)
    batches, _ = _drain(batcher, [101, 100, 101, 102, 99, 101, 104], drop=3)
    for b in batches:
        odd = [n for n in b.lengths if n % 2]
        assert not odd or set(b.lengths.tolist()) == {odd[0]}
    items = sorted(i for b in batches for i in b.items)
    assert items == [0, 1, 2, 4, 5, 6]  # item 3 was dropped while waiting


def test_equal_length_mode_is_unchanged_and_carries_no_lengths():
    batches, _ = _drain(WindowBatcher(batch_size=3, max_batch_frames=700), [100, 200, 100, 100])
    assert all(b.lengths is None and len({b.features.shape[-1]}) == 1 for b in batches)
    assert sorted(len(b.items) for b in batches) == [1, 3]


# ---------------------------------------------------------------- the graph and the runtime

def test_padded_batch_with_frame_lengths_equals_each_window_alone(tiny_export):
    session = OnnxSession(tiny_export / "audio.onnx")
    assert FRAME_LENGTHS in session.input_names
    windows = _windows()
    features, lengths = padded_batch(windows)
    features[features == 0] = 7.0  # whatever lies in the padding must not matter
    got = session.run({"input_features": features, FRAME_LENGTHS: lengths})
    assert np.abs(got - _alone(session, windows)).max() <= 1e-5
    # without frame_lengths the graph takes every frame as real: the old meaning of an equal-length batch
    same = np.stack([windows[0]] * 2)
    np.testing.assert_array_equal(session.run({"input_features": same}),
                                  session.run({"input_features": same, FRAME_LENGTHS: np.array([100, 100])}))


def test_runtime_batches_mixed_lengths_and_matches_batch_1(tiny_export):
    model = WavLink.from_pretrained(tiny_export)
    assert model.spec.frame_lengths
    items = [[w] for w in _windows()] + [_windows((100, 48), seed=3)]  # the last item: two windows
    one = model.embed_windows(items, batch_size=1)
    model.audio_session = recording = _Recording(model.audio_session)
    batched = model.embed_windows(items, batch_size=8)
    assert np.abs(np.stack(batched) - np.stack(one)).max() <= 1e-5
    mixed = [f for f in recording.feeds if len(set(f.get(FRAME_LENGTHS, np.zeros(1)).tolist())) > 1]
    assert mixed and len(recording.feeds) < sum(map(len, items))


def test_an_export_without_frame_lengths_still_batches_by_equal_length(tiny_export):
    old = WavLink.from_pretrained(OLD_EXPORT)
    assert not old.spec.frame_lengths and FRAME_LENGTHS not in old.audio_session.input_names
    items = [[w] for w in _windows()]
    old.audio_session = recording = _Recording(old.audio_session)
    batched = old.embed_windows(items, batch_size=8)
    assert all(FRAME_LENGTHS not in f and f["input_features"].shape[-1] in LENGTHS for f in recording.feeds)
    assert any(f["input_features"].shape[0] == 2 for f in recording.feeds)  # the two 100-frame windows
    np.testing.assert_allclose(np.stack(batched), np.stack(old.embed_windows(items, batch_size=1)), atol=1e-6)
    # same weights as the new export: same embeddings
    new = WavLink.from_pretrained(tiny_export).embed_windows(items, batch_size=8)
    assert np.abs(np.stack(batched) - np.stack(new)).max() <= 1e-5


def _copy_with_model_field(src: Path, dst: Path, **fields) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".verified.json"))
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["model"].update(fields)
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dst


@pytest.mark.parametrize("source, value, message", [
    ("old", True, "model.frame_lengths is true but audio.onnx does not take a frame_lengths input"),
    ("new", False, "model.frame_lengths is false but audio.onnx takes a frame_lengths input"),
    ("new", "yes", "model.frame_lengths must be true or false, got 'yes'"),
])
def test_a_manifest_that_misstates_frame_lengths_is_refused_by_field(tiny_export, tmp_path, source, value, message):
    export = _copy_with_model_field(OLD_EXPORT if source == "old" else tiny_export, tmp_path / "e", frame_lengths=value)
    with pytest.raises(ModelFilesError, match=message):
        WavLink.from_pretrained(export)


# ---------------------------------------------------------------- quantized graphs, TensorRT profiles, export

def test_fp16_and_int8_graphs_keep_the_mask_and_stay_batch_independent(tiny_export, tmp_path):
    pytest.importorskip("onnx")
    import onnx

    from wavlink_edge.quantization import quantize as q

    fp16 = q.make_fp16(tiny_export / "audio.onnx", tmp_path / "fp16.onnx") and tmp_path / "fp16.onnx"
    int8, attention, _, n_int8, _ = q.audio_int8_graph(onnx.load(str(tiny_export / "audio.onnx")), 2, exclude=())
    mha = [n for n in int8.graph.node if n.op_type == "MultiHeadAttention"]
    assert attention == len(mha) == 2 and all(len(n.input) == 5 and n.input[4] for n in mha)  # key_padding_mask
    assert not [n for n in int8.graph.node if n.op_type in ("Conv", "Softmax")] and n_int8 > 0  # im2col, fused
    onnx.save(int8, tmp_path / "int8.onnx")
    windows = _windows()
    features, lengths = padded_batch(windows)
    for path in (fp16, tmp_path / "int8.onnx"):
        session = OnnxSession(path)
        got = session.run({"input_features": features, FRAME_LENGTHS: lengths})
        # per-token int8 scales are per row, so padded rows never reach a real one's: exactly equal here
        assert np.isfinite(got).all() and np.abs(got - _alone(session, windows)).max() <= 1e-6, path.name


def test_tensorrt_profiles_cover_frame_lengths_when_the_graph_takes_it():
    from wavlink_edge.export import trt_build as tb

    model = {"n_mels": 80, "max_frames": 3000, "text_max_length": 256, "matryoshka_dims": [512]}
    new = tb.derive_profile({"model": {**model, "frame_lengths": True}}, "audio", batch=(1, 4, 8))
    assert new.shapes[FRAME_LENGTHS] == ((1,), (4,), (8,))
    assert new.covers({"input_features": (3, 80, 640), FRAME_LENGTHS: (3,)})
    assert not new.covers({"input_features": (9, 80, 640), FRAME_LENGTHS: (9,)})
    assert FRAME_LENGTHS not in tb.derive_profile({"model": model}, "audio").shapes


@pytest.mark.parametrize("position, token_layer", [("first", 1), ("last", 0)])
def test_export_validates_mixed_batches_and_the_runtime_embeds_mixed_durations_exactly(
        tmp_path, write_clip, position, token_layer):
    """Through the real exporter (6 s windows) and the whole audio path: files of 1.2-8 s, trimmed."""
    torch = pytest.importorskip("torch")
    from wavlink_edge.export.model import AudioDims, TextSpec, WavLinkConfig, WavLinkModel, matryoshka_dims
    from wavlink_edge.export.to_onnx import export_model

    torch.manual_seed(0)
    bert = dict(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                max_position_embeddings=32)
    config = WavLinkConfig(size="base", name="mixed", embed_dim=32, matryoshka_dims=matryoshka_dims(32),
                           audio=AudioDims(n_mels=80, n_ctx=300, d_model=16, n_heads=2, n_layers=2, ffn_dim=32),
                           text=TextSpec(kind="bert", backbone=bert, max_length=16), clip_policy="trim",
                           global_token_position=position, global_token_layer=token_layer)
    tokenizer = Path(__file__).resolve().parent / "data" / "tiny_export" / "tokenizer.json"
    manifest = export_model(WavLinkModel(config).eval(), tokenizer, tmp_path / "export")
    assert manifest["model"]["frame_lengths"] is True
    assert manifest["validation"]["audio"]["mixed_batch_max_abs"] <= 1e-5
    clips = [write_clip(tmp_path / f"{i}.wav", i, s) for i, s in enumerate((1.2, 2.5, 3.7, 5.9, 8.0, 1.6, 2.2))]
    model = WavLink.from_pretrained(tmp_path / "export")
    one = model.embed_audio(clips, batch_size=1)
    model.audio_session = recording = _Recording(model.audio_session)
    batched = model.embed_audio(clips, batch_size=8)
    assert np.abs(batched - one).max() <= 1e-5
    assert any(len(set(f[FRAME_LENGTHS].tolist())) > 1 for f in recording.feeds if FRAME_LENGTHS in f)
