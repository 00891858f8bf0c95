"""Issue 29 on CPU: honest provider choice (a fake provider list), the decode/feature pool feeding one encoder,
the waveform-in log-mel graph against runtime/features.py, IO binding's fallback, and the fused fp16 audio
graph's mixed-batch exactness. GPU-only checks skip with the reason."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from wavlink_edge.runtime import WavLink, cli
from wavlink_edge.runtime import session as session_module
from wavlink_edge.runtime.session import CPU_EP, CUDA_EP, TENSORRT_EP, OnnxSession, choose_providers

NO_TENSORRT = "libnvinfer.so.10 could not be loaded (TensorRT is not installed or not on the library path)"


@pytest.fixture
def fake_gpu_build(monkeypatch):
    """An onnxruntime-gpu build without TensorRT's libraries: all three providers listed, TensorRT blocked."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [TENSORRT_EP, CUDA_EP, CPU_EP])
    blockers = {TENSORRT_EP: NO_TENSORRT}
    monkeypatch.setattr(session_module, "provider_blocker", lambda name: blockers.get(name))
    monkeypatch.setattr(session_module, "_WARNED", set())
    return blockers


def _names(providers):
    return [p[0] if isinstance(p, tuple) else p for p in providers]


def test_tensorrt_without_its_libraries_is_left_out_in_one_line(fake_gpu_build, tmp_path, caplog, capfd):
    with caplog.at_level(logging.WARNING, logger="wavlink_edge.runtime"):
        chosen = choose_providers(None, "fp16", tmp_path / "trt")
    assert _names(chosen) == [CUDA_EP, CPU_EP]  # ORT is never asked for TensorRT
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"{TENSORRT_EP} cannot start here: {NO_TENSORRT}; using {CUDA_EP}"]
    out, err = capfd.readouterr()
    assert "EP Error" not in out + err and "****" not in out + err
    # asked for explicitly and alone: an error naming the library, not a silent CPU run
    with pytest.raises(session_module.BackendUnavailableError, match="libnvinfer.so.10"):
        choose_providers([TENSORRT_EP], "fp16", tmp_path / "trt")
    # with its libraries, TensorRT comes first with its cache options
    fake_gpu_build.clear()
    chosen = choose_providers(None, "fp16", tmp_path / "trt")
    assert _names(chosen) == [TENSORRT_EP, CUDA_EP, CPU_EP] and chosen[0][1]["trt_fp16_enable"]


def test_info_names_the_provider_that_would_really_start(fake_gpu_build, tiny_export, capsys):
    assert cli.main(["info", str(tiny_export)]) == 0
    out = capsys.readouterr().out
    assert f"--precision fp32: audio.onnx + text.onnx on {CUDA_EP}" in out
    assert f"{TENSORRT_EP} cannot start here: {NO_TENSORRT}" in out
    assert "forced" not in out and "vs pytorch: cosine min" in out
    assert cli.main(["info", str(tiny_export), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["providers_starting"] == [CUDA_EP, CPU_EP] and info["providers_blocked"] == {TENSORRT_EP: NO_TENSORRT}


def test_info_prints_recorded_fidelity_and_aligns_columns(tiny_export, tmp_path, capsys):
    export = tmp_path / "export"
    shutil.copytree(tiny_export, export)
    manifest = json.loads((export / "manifest.json").read_text())
    fidelity = {"32": {"cosine_mean": 0.999991, "cosine_min": 0.99981}, "16": {"cosine_mean": 0.99997, "cosine_min": 0.9997},
                "gate": 0.999, "passed": True, "forced": False,
                "mixed_batch": {"fused_fp32_cpu": {"max_abs": 9.8e-7, "cosine_min": 1.0}}}
    # a long lyrics-like name must not push its row's columns out of line
    shutil.copy(export / "audio.onnx", export / "lyrics_decoder_with_past_fp16.onnx")
    manifest["artifacts"]["lyrics_decoder_with_past_fp16.onnx"] = {
        **manifest["artifacts"]["audio.onnx"], "tower": "lyrics_decoder", "precision": "fp16", "fidelity": fidelity}
    (export / "manifest.json").write_text(json.dumps(manifest))
    assert cli.main(["info", str(export)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if " MB " in line]
    assert len(rows) == 3
    assert len({row.index(" MB") for row in rows}) == 1  # sizes end in one column
    lyrics = next(row for row in rows if "lyrics_decoder_with_past" in row)
    assert "vs fp32: cosine mean 0.99997, min 0.99970 (worst dim)" in lyrics and "max-abs 9.8e-07" in lyrics
    assert "forced" not in lyrics.lower()


def test_elf_reader_finds_the_nvidia_library_a_provider_links(tmp_path, monkeypatch):
    # a real shared library with one linked name swapped (same length) for cuDNN's: the check must name it
    real = next(Path(ort.__file__).parent.joinpath("capi").glob("onnxruntime_pybind11_state*.so"))
    assert "libc.so.6" in session_module.elf_needed(real)
    fake = tmp_path / "libonnxruntime_providers_cuda.so"
    data = real.read_bytes()
    assert b"libgcc_s.so.1\0" in data
    fake.write_bytes(data.replace(b"libgcc_s.so.1\0", b"libcudnn.so.9\0"))
    assert "libcudnn.so.9" in session_module.elf_needed(fake)
    monkeypatch.setattr(session_module, "provider_library", lambda provider: fake)
    session_module.provider_blocker.cache_clear()
    try:
        reason = session_module.provider_blocker(CUDA_EP)
    finally:
        session_module.provider_blocker.cache_clear()
    assert reason == "libcudnn.so.9 could not be loaded (CUDA is not installed or not on the library path)"
    assert session_module.provider_blocker(CPU_EP) is None


def test_onnxruntime_fallback_banner_becomes_one_line(tiny_export, monkeypatch, caplog, capfd):
    """ORT's Python layer prints an 'EP Error' banner to stdout when a provider fails and it retries: the
    user sees one line naming the library, and stdout (perhaps JSON lines) stays clean."""
    real = ort.InferenceSession

    def banner_then_cpu(model, options=None, providers=None, **kwargs):
        print("*************** EP Error ***************")
        print("EP Error [ONNXRuntimeError] : 1 : FAIL : TensorRT EP could not be loaded: libnvinfer.so.10: cannot "
              "open shared object file: No such file or directory when using ['TensorrtExecutionProvider']")
        print("****************************************")
        return real(model, options, providers=[CPU_EP])

    monkeypatch.setattr(ort, "InferenceSession", banner_then_cpu)
    monkeypatch.setattr(session_module, "_WARNED", set())
    with caplog.at_level(logging.WARNING, logger="wavlink_edge.runtime"):
        sess = OnnxSession(tiny_export / "audio.onnx", providers=[TENSORRT_EP, CPU_EP])
    assert sess.providers == [CPU_EP]
    assert [r.getMessage() for r in caplog.records] == [
        f"{TENSORRT_EP} could not be started here (libnvinfer.so.10 could not be loaded); running on {CPU_EP}"]
    out, err = capfd.readouterr()
    assert "EP Error" not in out + err and "****" not in out + err


def test_default_load_on_a_cpu_build_starts_cpu(tiny_export):
    model = WavLink.from_pretrained(tiny_export)
    assert model.audio_session.providers[0] == CPU_EP


# ---------------------------------------------------------------- the decode/feature pool (runtime/frontend.py)

def test_pool_keeps_input_order_and_each_items_error():
    import random
    import time

    from wavlink_edge.runtime.frontend import ordered_windows

    def windows_of(item, index):
        rng = random.Random(item)
        for w in range(item % 3 + 1):
            time.sleep(rng.random() * 0.01)  # later items often finish first
            if item % 5 == 4 and w == item % 3:
                raise ValueError(f"item {item} is broken")
            yield np.full(2, item * 10 + w)

    def collect(workers):
        out = []
        for index, item, windows in ordered_windows(iter(range(23)), windows_of, workers):
            got = []
            try:
                for window in windows:
                    got.append(int(window[0]))
            except ValueError as exc:
                got.append(str(exc))
            out.append((index, item, got))
        return out

    serial = collect(0)
    assert [index for index, _, _ in serial] == list(range(23))
    assert serial[4][2] == [40, "item 4 is broken"] and serial[5][2] == [50, 51, 52] and serial[9][2] == ["item 9 is broken"]
    assert collect(3) == serial and collect(1) == serial


def test_pool_stops_its_threads_when_the_caller_stops_early():
    import threading

    from wavlink_edge.runtime.frontend import ordered_windows

    def endless(item, index):
        while True:
            yield np.zeros(1)

    before = threading.active_count()
    stream = ordered_windows(range(100), endless, 2)
    index, item, windows = next(stream)
    next(windows)
    stream.close()  # an interrupted job: workers blocked on full queues must end
    assert threading.active_count() == before


def test_embeddings_and_errors_are_the_same_with_and_without_the_pool(tiny_export, sample_clips, tmp_path):
    broken = tmp_path / "broken.flac"
    broken.write_bytes(b"not audio at all")
    items = [sample_clips[0], str(broken), sample_clips[1], (np.zeros(100, np.float32), -5), sample_clips[0]]
    model = WavLink.from_pretrained(tiny_export)
    serial = list(model.iter_embed_audio(items, batch_size=2, decode_workers=0))
    pooled = list(model.iter_embed_audio(items, batch_size=2, decode_workers=3))
    assert [r.index for r in pooled] == list(range(len(items)))
    assert [r.error for r in pooled] == [r.error for r in serial]
    assert serial[1].error and "broken.flac" in serial[1].error and serial[3].error
    for a, b in zip(serial, pooled):
        if a.ok:
            assert np.array_equal(a.embedding, b.embedding)
    with pytest.raises(ValueError, match="decode workers"):
        list(model.iter_embed_audio(items, decode_workers=-1))


# ---------------------------------------------------------------- the waveform-in log-mel graph

EVAL_CLIPS = Path(__file__).resolve().parent.parent / "bench" / "data" / "wavlink_eval" / "audio" / "test"


@pytest.fixture(scope="module")
def frontend_session():
    pytest.importorskip("onnx")
    from wavlink_edge.export.frontend_graph import build_frontend

    return OnnxSession(build_frontend(80).SerializeToString(), name="audio_frontend.onnx")


def _real_clips(sample_clips, n_eval=12):
    from wavlink_edge.runtime.audio import decode_audio

    paths = list(sample_clips) + sorted(EVAL_CLIPS.glob("*.ogg"))[:n_eval]
    return [(p.name, decode_audio(p)) for p in paths]


def test_waveform_graph_equals_the_numpy_log_mel_on_real_recordings(frontend_session, sample_clips):
    from wavlink_edge.runtime.features import clip_features, clip_frames, waveform_batch

    clips = _real_clips(sample_clips)
    assert len(clips) >= 10
    worst = 0.0
    for policy in ("pad", "trim"):
        references, frames, audios = [], [], []
        for name, audio in clips:
            keep = clip_frames(audio.size, policy)
            reference = clip_features(audio, 80, policy)
            got = frontend_session.run({"waveform": waveform_batch([audio], [keep]),
                                        "frame_lengths": np.array([keep], np.int64)})[0]
            assert got.shape == reference.shape, name
            worst = max(worst, float(np.abs(got - reference).max()))
            references.append(reference)
            frames.append(keep)
            audios.append(audio)
        # all clips in one zero-padded batch: each row is still its own clip's log-mel (per-row floor)
        batch = frontend_session.run({"waveform": waveform_batch(audios, frames),
                                      "frame_lengths": np.array(frames, np.int64)})
        for row, keep, reference in zip(batch, frames, references):
            worst = max(worst, float(np.abs(row[:, :keep] - reference).max()))
    assert worst <= 1e-4


def test_waveform_width_reads_only_zeros_past_each_clip():
    from wavlink_edge.runtime.features import CHUNK_SAMPLES, HOP_LENGTH, N_FFT, waveform_width

    for n in (16000, 16001, 80000, 479_000, 479_700, CHUNK_SAMPLES):
        width = waveform_width(n, 3000 if n > 470_000 else 100)
        assert width % HOP_LENGTH == 0 and width <= CHUNK_SAMPLES
        assert width == CHUNK_SAMPLES or width >= n + N_FFT


def test_runtime_feeds_the_waveform_graph_and_gets_the_same_embeddings(frontend_session, tiny_export, tmp_path,
                                                                       sample_clips):
    pytest.importorskip("onnx")
    from wavlink_edge.export.frontend_graph import build_frontend
    from wavlink_edge.runtime.errors import ModelFilesError
    from wavlink_edge.runtime.manifest import Manifest

    export = tmp_path / "export"
    shutil.copytree(tiny_export, export)
    with pytest.raises(ModelFilesError, match="audio_frontend.onnx"):
        WavLink.from_pretrained(export, features="onnx")
    (export / "audio_frontend.onnx").write_bytes(build_frontend(80).SerializeToString())
    manifest = Manifest.load(export)
    manifest.record("audio_frontend.onnx", role="audio_frontend")
    manifest.save()
    items = [p for p in sample_clips] + [(np.random.default_rng(0).standard_normal(40000).astype(np.float32), 16000)]
    numpy_model = WavLink.from_pretrained(export)
    onnx_model = WavLink.from_pretrained(export, features="onnx")
    assert onnx_model.frontend_session is not None and numpy_model.frontend_session is None
    for policy in ("pad", "trim"):
        numpy_model.clip_policy = onnx_model.clip_policy = policy
        a = numpy_model.embed_audio(items, batch_size=3)
        b = onnx_model.embed_audio(items, batch_size=3)
        assert np.abs(a - b).max() < 1e-4, policy
    with pytest.raises(ValueError, match="features"):
        WavLink.from_pretrained(export, features="torch")


# ---------------------------------------------------------------- IO binding

def test_io_binding_is_off_on_cpu_and_its_path_gives_the_same_result(tiny_export):
    from wavlink_edge.runtime.batching import padded_batch

    session = OnnxSession(tiny_export / "audio.onnx")
    assert session.io_binding_device is None  # CPU provider: plain run()
    rng = np.random.default_rng(0)
    features, lengths = padded_batch([rng.standard_normal((80, n)).astype(np.float32) for n in (100, 60, 40)])
    feeds = {"input_features": features, "frame_lengths": lengths}
    plain = session.run(feeds)
    bound = session.run_bound(feeds)  # the binding code path, bound on the CPU device
    assert np.array_equal(plain, bound)
    single = session.run({"input_features": features[:1]})
    session.io_binding_device = "cpu"  # as on CUDA: run() goes through the binding, frame_lengths still completed
    assert np.array_equal(session.run({"input_features": features[:1]}), single)


@pytest.mark.skipif(CUDA_EP not in ort.get_available_providers() or session_module.provider_blocker(CUDA_EP) is not None,
                    reason="needs onnxruntime-gpu with CUDA's libraries and a GPU")
def test_io_binding_on_cuda_equals_plain_run(tiny_export):
    session = OnnxSession(tiny_export / "audio.onnx", providers=[CUDA_EP, CPU_EP])
    if session.providers[0] != CUDA_EP:
        pytest.skip("the CUDA provider did not start (no GPU)")
    assert session.io_binding_device == "cuda"
    features = np.random.default_rng(0).standard_normal((2, 80, 100)).astype(np.float32)
    plain = OnnxSession(tiny_export / "audio.onnx", providers=[CUDA_EP, CPU_EP], io_binding=False).run(
        {"input_features": features})
    assert np.abs(session.run({"input_features": features}) - plain).max() < 1e-5


# ---------------------------------------------------------------- the fused fp16 audio graph (real base weights)

def test_fused_fp16_audio_graph_is_batch_exact_on_the_cpu_provider(base_export, tmp_path, sample_clips):
    onnx = pytest.importorskip("onnx")
    from wavlink_edge.quantization import evaluate as ev
    from wavlink_edge.quantization import quantize as q

    # the export writes the waveform-in graph beside the towers, validated and listed
    manifest = json.loads((base_export / "manifest.json").read_text())
    frontend = manifest["artifacts"]["audio_frontend.onnx"]
    assert frontend["role"] == "audio_frontend" and frontend["fidelity"]["max_abs"] <= 1e-4
    assert frontend["fidelity"]["mixed_batch_max_abs"] <= 1e-4

    fp16 = tmp_path / "audio_fp16.onnx"
    recipe = q.make_fp16(base_export / "audio.onnx", fp16)
    assert recipe["attention"]["fused_blocks"] == 6 and "[batch]" in recipe["attention"]["mask"]
    graph = onnx.load(str(fp16))
    producers = {o: n for n in graph.graph.node for o in n.output}
    mha = [n for n in graph.graph.node if n.op_type == "MultiHeadAttention"]
    assert len(mha) == 6 and not [n for n in graph.graph.node if n.op_type == "Softmax"]
    assert all(producers[n.input[4]].op_type == "ReduceSum" for n in mha)  # per-row key lengths, not [B, T]

    feeds = ev.audio_feeds(sample_clips, 80)  # pad and trim: 3000 frames and several shorter lengths
    fused32 = tmp_path / "audio_fused_fp32.onnx"
    onnx.save(q.fused_audio_graph(onnx.load(str(base_export / "audio.onnx")), base_export)[0], str(fused32))
    exact = ev.mixed_batch_exactness(fused32, feeds)
    assert exact["rows"] == len(feeds) and exact["distinct_lengths"] > 2 and exact["max_abs"] <= 1e-5
    half = ev.mixed_batch_exactness(fp16, feeds)
    assert half["cosine_min"] >= 0.9999
    # the fused graph computes what the exported one does
    reference = ev.embed(ev.session(base_export / "audio.onnx"), feeds)
    assert np.abs(ev.embed(ev.session(fused32), feeds) - reference).max() <= 1e-5


def test_gpu_benchmark_says_it_needs_cuda_on_a_cpu_host(capsys):
    pytest.importorskip("onnx")
    from wavlink_edge.bench import gpu

    if gpu.cuda_unavailable() is None:
        pytest.skip("CUDA is here: bench/gpu.py would measure")
    assert gpu.main(["--model", "nowhere"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("bench/gpu.py needs CUDA: ") and "Nothing measured." in out and len(out.splitlines()) == 1
