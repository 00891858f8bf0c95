"""Runtime vs the PyTorch reference, model loading (manifest, integrity, precisions, providers), windowing,
thread safety, torch-free import and bounded-memory decoding."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from wavlink_edge.runtime import ModelFilesError, WavLink, WavLinkError, similarity
from wavlink_edge.runtime import session as session_module
from wavlink_edge.runtime.audio import iter_audio_blocks
from wavlink_edge.runtime.errors import BackendUnavailableError
from wavlink_edge.runtime.features import SAMPLE_RATE, iter_windows, trim_frames
from wavlink_edge.runtime.manifest import Manifest
from wavlink_edge.runtime.model import _pick_artifact, normalize
from wavlink_edge.runtime.session import TENSORRT_EP, choose_providers

MIN_COSINE = 0.99999
TEXTS = ["a woman speaks over a slow piano melody", "a phone is ringing", "", "dog " * 3000]


@pytest.fixture(scope="module")
def runtime_pad(base_export):
    return WavLink.from_pretrained(base_export, clip_policy="pad")


@pytest.fixture(scope="module")
def runtime_trim(base_export):
    return WavLink.from_pretrained(base_export, clip_policy="trim")


@pytest.fixture(scope="module")
def runtime(tiny_export):
    """The runtime's own behaviour, on the random tiny export: no torch needed."""
    return WavLink.from_pretrained(tiny_export, clip_policy="trim")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(normalize(a) * normalize(b), axis=-1)


def _truncate(full: np.ndarray, dim: int) -> np.ndarray:
    return normalize(full[:, :dim])


@pytest.mark.parametrize("policy", ["pad", "trim"])
def test_audio_embeddings_equal_pytorch_reference_at_every_dim(base_model, sample_clips, runtime_pad, runtime_trim, policy):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model, _ = base_model
    runtime = runtime_pad if policy == "pad" else runtime_trim
    extractor = transformers.WhisperFeatureExtractor(feature_size=runtime.spec.n_mels)
    reference = []
    for path in sample_clips:
        audio, rate = sf.read(path, dtype="float32")
        mel = extractor(audio, sampling_rate=rate, return_tensors="np").input_features
        if policy == "trim":
            mel = mel[:, :, : trim_frames(audio.size)]
        with torch.no_grad():
            reference.append(model.audio(torch.from_numpy(mel)).numpy()[0])
    reference = np.stack(reference)
    for dim in runtime.matryoshka_dims:
        ours = runtime.embed_audio(sample_clips, dim=dim)
        assert ours.shape == (len(sample_clips), dim) and ours.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
        cos = _cosines(ours, _truncate(reference, dim))
        assert cos.min() >= MIN_COSINE, f"{policy} dim {dim}: cosines {cos}"


def test_text_embeddings_equal_pytorch_reference_at_every_dim(base_model, base_export, runtime_pad):
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer

    model, _ = base_model
    encodings = Tokenizer.from_file(str(base_export / "tokenizer.json")).encode_batch(TEXTS)
    ids = torch.tensor([e.ids for e in encodings])
    mask = torch.tensor([e.attention_mask for e in encodings])
    with torch.no_grad():
        reference = model.text(ids, mask).numpy()
    for dim in runtime_pad.matryoshka_dims:
        ours = runtime_pad.embed_text(TEXTS, dim=dim)
        cos = _cosines(ours, _truncate(reference, dim))
        assert cos.min() >= MIN_COSINE, f"text dim {dim}: cosines {cos}"


def test_long_audio_is_the_renormalised_mean_of_its_windows(runtime):
    # The tiny model's window is 1 s: 2.5 s of audio gives two full windows; the 0.5 s tail is dropped
    # (a trailing window under 1 s adds noise, not content).
    rng = np.random.default_rng(3)
    audio = (0.1 * rng.standard_normal(int(2.5 * SAMPLE_RATE))).astype(np.float32)
    windows = [audio[:SAMPLE_RATE], audio[SAMPLE_RATE: 2 * SAMPLE_RATE]]
    separately = runtime.embed_audio([(w, SAMPLE_RATE) for w in windows])
    (result,) = runtime.iter_embed_audio([(audio, SAMPLE_RATE)])
    assert result.windows == 2
    np.testing.assert_allclose(result.embedding, normalize(separately.mean(axis=0)), atol=1e-5)
    # Smaller dims are prefixes of the same full embedding.
    np.testing.assert_allclose(runtime.embed_audio([(audio, SAMPLE_RATE)], dim=4)[0],
                               normalize(result.embedding[:4]), atol=1e-6)


def test_batched_trim_inputs_of_mixed_lengths_keep_order_and_values(runtime):
    rng = np.random.default_rng(5)
    clips = [(0.2 * rng.standard_normal(int(s * SAMPLE_RATE))).astype(np.float32) for s in (2.0, 4.5, 2.0, 1.3, 4.5, 0.4)]
    inputs = [(c, SAMPLE_RATE) for c in clips]
    batched = runtime.embed_audio(inputs, batch_size=2)
    one_by_one = np.concatenate([runtime.embed_audio([item], batch_size=1) for item in inputs])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)


def test_file_and_resampled_inputs_agree(runtime, sample_clips, tmp_path):
    audio, rate = sf.read(sample_clips[0], dtype="float32")
    stereo_44k = tmp_path / "stereo_44k.wav"
    import soxr

    up = soxr.resample(audio, rate, 44_100)
    sf.write(stereo_44k, np.stack([up, up], axis=1), 44_100, subtype="FLOAT")
    direct, resampled, array = runtime.embed_audio([sample_clips[0], stereo_44k, (audio, rate)])
    assert np.dot(direct, array) == pytest.approx(1.0, abs=1e-6)
    assert np.dot(direct, resampled) > 0.999  # two resamplings, same content


def test_similarity_is_a_cosine_matrix(runtime, sample_clips):
    audio = runtime.embed_audio(sample_clips, dim=8)
    text = runtime.embed_text(TEXTS[:2], dim=8)
    sims = similarity(audio, text)
    assert sims.shape == (len(sample_clips), 2)
    np.testing.assert_allclose(sims, audio @ text.T, atol=1e-6)
    with pytest.raises(ValueError, match="widths differ"):
        similarity(audio, runtime.embed_text(TEXTS[:1], dim=4))


def test_empty_inputs_give_empty_matrices(runtime):
    assert runtime.embed_audio([], dim=4).shape == (0, 4)
    assert runtime.embed_text([], dim=8).shape == (0, 8)


def test_dim_must_be_a_matryoshka_dim(runtime, tiny_export):
    for bad in (100, 0, 1024, "8", True):
        with pytest.raises(ValueError, match="32, 16, 8, 4"):
            runtime.embed_text(["x"], dim=bad)
    with pytest.raises(ValueError, match="Matryoshka"):
        WavLink.from_pretrained(tiny_export, dim=12)


def test_thread_safety_gives_identical_results(runtime, sample_clips):
    expected_audio = runtime.embed_audio(sample_clips, dim=8)
    expected_text = runtime.embed_text(TEXTS, dim=8)
    results, errors = [], []

    def worker():
        try:
            for _ in range(2):
                results.append((runtime.embed_audio(sample_clips, dim=8), runtime.embed_text(TEXTS, dim=8)))
        except Exception as exc:  # surfaced below: an exception in a thread would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 8
    for audio, text in results:
        np.testing.assert_array_equal(audio, expected_audio)
        np.testing.assert_array_equal(text, expected_text)


# -- loading: manifest, integrity, precisions, providers, backends -------------------------------------


def test_missing_precision_lists_what_the_manifest_has(tiny_export):
    with pytest.raises(ModelFilesError, match="precision 'fp16'.*has fp32"):
        WavLink.from_pretrained(tiny_export, precision="fp16")
    with pytest.raises(ModelFilesError, match="'int8_static'.*has fp32"):
        WavLink.from_pretrained(tiny_export, precision="int8_static")
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        WavLink.from_pretrained(tiny_export, precision="fp8")


def test_int8_picks_dynamic_on_cpu_and_static_on_accelerators(tiny_export):
    data = json.loads((tiny_export / "manifest.json").read_text())
    for tower in ("audio", "text"):
        for variant in ("dynamic", "static"):
            data["artifacts"][f"{tower}_int8_{variant}.onnx"] = {"tower": tower, "precision": "int8",
                                                                "variant": variant, "sha256": "0" * 64}
    manifest = Manifest(tiny_export, data)
    assert _pick_artifact(manifest, "audio", "int8", accelerated=False).file == "audio_int8_dynamic.onnx"
    assert _pick_artifact(manifest, "audio", "int8", accelerated=True).file == "audio_int8_static.onnx"
    assert _pick_artifact(manifest, "text", "int8_static", accelerated=False).file == "text_int8_static.onnx"
    assert _pick_artifact(manifest, "text", "fp32", accelerated=True).file == "text.onnx"
    del data["artifacts"]["audio_int8_dynamic.onnx"]
    manifest = Manifest(tiny_export, data)
    assert _pick_artifact(manifest, "audio", "int8", accelerated=False).file == "audio_int8_static.onnx"


def test_provider_choice_and_tensorrt_cache_options(monkeypatch, tmp_path, tiny_export):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: [TENSORRT_EP, "CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(session_module, "provider_blocker", lambda name: None)  # as if their libraries loaded
    chosen = choose_providers(None, "fp16", cache_dir=tmp_path / "trt")
    assert [p[0] if isinstance(p, tuple) else p for p in chosen] == [TENSORRT_EP, "CUDAExecutionProvider",
                                                                    "CPUExecutionProvider"]
    options = chosen[0][1]
    assert options["trt_engine_cache_enable"] and options["trt_timing_cache_enable"] and options["trt_fp16_enable"]
    assert options["trt_engine_cache_path"] == str(tmp_path / "trt") and (tmp_path / "trt").is_dir()
    int8_options = choose_providers([TENSORRT_EP], "int8", cache_dir=tmp_path / "trt")[0][1]
    assert int8_options["trt_fp16_enable"] is False and int8_options["trt_int8_enable"] is True
    assert "trt_int8_enable" not in options
    monkeypatch.undo()
    with pytest.raises(WavLinkError, match="not in this onnxruntime build"):
        WavLink.from_pretrained(tiny_export, providers=["NoSuchExecutionProvider"])
    model = WavLink.from_pretrained(tiny_export, providers=["CPUExecutionProvider"])
    assert model.audio_session.providers == ["CPUExecutionProvider"]


def test_tensorrt_backend_finds_engines_by_onnx_hash_and_explains_failures(tiny_export, tmp_path):
    # backend="tensorrt" opens only the manifest, the tokenizer and engines in <export>/trt_cache.
    export = tmp_path / "export"
    (export / "trt_cache").mkdir(parents=True)
    for name in ("manifest.json", "tokenizer.json"):
        (export / name).symlink_to(tiny_export / name)
    with pytest.raises(WavLinkError, match=r"no TensorRT engine for audio\.onnx.*export/to_tensorrt\.py"):
        WavLink.from_pretrained(export, backend="tensorrt")
    manifest = Manifest.load(export)
    engine = export / "trt_cache" / "audio_fp32_trt10.3.0_sm87_0123456789abcdef.engine"
    engine.write_bytes(b"not really an engine")
    sidecar = Path(str(engine) + ".json")
    sidecar.write_text(json.dumps({"key": {"onnx_sha256": "f" * 64}}))  # built from another ONNX: ignored
    with pytest.raises(WavLinkError, match="no TensorRT engine for audio.onnx"):
        WavLink.from_pretrained(export, backend="tensorrt")
    sidecar.write_text(json.dumps({"key": {"onnx_sha256": manifest.files["audio.onnx"]["sha256"]}}))
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(BackendUnavailableError, match="TensorRT Python bindings"):
            WavLink.from_pretrained(export, backend="tensorrt")
    with pytest.raises(ValueError, match="Q/DQ"):
        WavLink.from_pretrained(export, backend="tensorrt", precision="int8_dynamic")
    with pytest.raises(ValueError, match="unknown backend"):
        WavLink.from_pretrained(export, backend="tvm")


# -- torch-free, bounded memory ----------------------------------------------------------------------


def test_runtime_imports_and_embeds_without_torch(tiny_export, sample_clips):
    script = textwrap.dedent(f"""
        import importlib.abc, sys

        class BlockTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")

        sys.meta_path.insert(0, BlockTorch())
        from wavlink_edge.runtime import WavLink
        model = WavLink.from_pretrained({str(tiny_export)!r}, clip_policy="trim")
        emb = model.embed_audio([{str(sample_clips[0])!r}], dim=4)
        assert emb.shape == (1, 4), emb.shape
        model.embed_text(["a phone is ringing"], dim=4)
        leaked = sorted(m for m in sys.modules if m.split(".")[0] == "torch"
                        or m.startswith(("wavlink_edge.export", "wavlink_edge.quantization",
                                                          "wavlink_edge.train", "wavlink_edge.bench")))
        assert not leaked, leaked
        print("torch-free ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "torch-free ok" in done.stdout


def test_long_file_is_decoded_in_bounded_memory(tmp_path):
    # 10 minutes at 8 kHz: 38 MB once decoded to 16 kHz float32; the stream must never hold it all.
    path = tmp_path / "ten_minutes.flac"
    rate, seconds = 8_000, 600
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=rate, channels=2, subtype="PCM_16") as out:
        for _ in range(seconds // 60):
            out.write((0.1 * rng.standard_normal((60 * rate, 2))).astype(np.float32))
    decoded_bytes = seconds * SAMPLE_RATE * 4
    tracemalloc.start()
    try:
        total, windows = 0, 0
        for window in iter_windows(iter_audio_blocks(path)):
            total += window.size
            windows += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert windows == 20 and abs(total - seconds * SAMPLE_RATE) < 100
    assert peak < decoded_bytes / 4, f"peak {peak / 1e6:.1f} MB for {decoded_bytes / 1e6:.0f} MB of audio"


def test_batcher_groups_by_frames_bounds_waiting_and_caps_batch_frames():
    from wavlink_edge.runtime.batching import WindowBatcher

    batcher = WindowBatcher(batch_size=3, max_batch_frames=700)
    frames_per_item = [100, 200, 100, 300, 200, 100, 400, 100, 100]
    batches, max_waiting = [], 0
    for index, frames in enumerate(frames_per_item):
        for _ in range(2):  # two windows per item
            batches += batcher.add(index, np.full((2, frames), float(index), np.float32))
            max_waiting = max(max_waiting, batcher.waiting)
        if index == 4:
            batcher.drop(index)
    batches += batcher.flush()
    assert max_waiting <= 3
    for batch in batches:  # one frame count per batch (np.stack would fail otherwise), within both caps
        assert batch.features.shape[0] <= 3 and batch.features.shape[0] * batch.features.shape[-1] <= 700 \
            or batch.features.shape[0] == 1
        assert [int(row[0, 0]) for row in batch.features] == batch.items  # rows keep their item
    counts = np.bincount([item for batch in batches for item in batch.items], minlength=len(frames_per_item))
    # item 4 was dropped after its windows were queued: whatever was not yet encoded is gone
    assert all(counts[i] == 2 for i in range(len(frames_per_item)) if i != 4) and counts[4] <= 2
    assert WindowBatcher(8, 6000).rows_for(3000) == 2 and WindowBatcher(8, 3000).rows_for(500) == 6
    assert WindowBatcher(8, 100).rows_for(3000) == 1  # a window longer than the cap still runs, alone


def test_a_lone_path_or_array_pair_is_one_item(runtime, sample_clips):
    audio, rate = sf.read(sample_clips[0], dtype="float32")
    from_path = runtime.embed_audio(str(sample_clips[0]), dim=4)
    from_pair = runtime.embed_audio((audio, rate), dim=4)
    assert from_path.shape == from_pair.shape == (1, 4)
    np.testing.assert_allclose(from_path, from_pair, atol=1e-6)
    two_paths = runtime.embed_audio((sample_clips[0], sample_clips[1]), dim=4)
    assert two_paths.shape == (2, 4)


def test_artifact_written_below_the_gate_is_flagged(tmp_path):
    """A manifest entry marked forced by quantization/ surfaces as below_fidelity_gate."""
    import json

    from wavlink_edge.runtime.manifest import Manifest, sha256_file

    (tmp_path / "audio_x.onnx").write_bytes(b"onnx")
    entry = {"tower": "audio", "precision": "int8", "variant": "static", "sha256": sha256_file(tmp_path / "audio_x.onnx"),
             "fidelity": {"forced": True, "passed": False}}
    manifest = {"format": "wavlink-edge-export", "format_version": 1,
                "model": {"name": "m", "size": "base", "heads": "trained", "embed_dim": 8, "matryoshka_dims": [8, 4],
                          "n_mels": 80, "sample_rate": 16000, "max_frames": 3000, "text_max_length": 8,
                          "pad_token_id": 0, "clip_policy": "trim"},
                "artifacts": {"audio_x.onnx": entry}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    loaded = Manifest.load(tmp_path)
    assert [a.below_fidelity_gate for a in loaded.artifacts] == [True]


def test_int8_variant_follows_the_provider_that_really_started(tiny_export, tmp_path, monkeypatch, caplog):
    """onnxruntime-gpu on a host without a usable GPU: CUDA is "available" but the session runs on the CPU,
    so precision="int8" must load the dynamic (CPU) variant, not the static Q/DQ one made for GPUs."""
    import shutil

    import onnxruntime as ort

    from wavlink_edge.runtime.manifest import Manifest

    export = shutil.copytree(tiny_export, tmp_path / "export")
    manifest = Manifest.load(export)
    for tower in ("audio", "text"):
        for variant in ("dynamic", "static"):  # stand-ins: copies of the fp32 graphs under the int8 names
            name = f"{tower}_int8_{variant}.onnx"
            shutil.copy(export / f"{tower}.onnx", export / name)
            manifest.record(name, tower=tower, precision="int8", variant=variant)
    manifest.save()
    real = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real])
    # its libraries load (the check passes) but ORT cannot start it: the CPU fallback after the fact
    monkeypatch.setattr(session_module, "provider_blocker", lambda name: None)
    with caplog.at_level("WARNING", logger="wavlink_edge.runtime"):
        model = WavLink.from_pretrained(export, precision="int8")
    assert model.audio_session.name == "audio_int8_dynamic.onnx"
    assert model.text_session.name == "text_int8_dynamic.onnx"
    assert "did not start" in caplog.text
