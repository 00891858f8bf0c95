"""TensorRT: pure logic (cache keys, profiles, version branching, trtexec lines, stale engines) runs
everywhere; the hardware tests need `tensorrt` + cuda-python + a GPU and skip cleanly otherwise."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from wavlink_edge.export import trt_build as tb
from wavlink_edge.runtime import trt_engine as te
from wavlink_edge.runtime.manifest import sha256_file

REPO = Path(__file__).resolve().parent.parent
MANIFEST = {"model": {"n_mels": 80, "max_frames": 3000, "text_max_length": 256, "matryoshka_dims": [512, 256]}}


def _key(**over):
    args = dict(trt_version="10.3.0", compute_capability=(8, 7), precision="fp16",
                profile=tb.derive_profile(MANIFEST, "audio"), onnx_sha256="ab" * 32, strongly_typed=False)
    args.update(over)
    return tb.engine_key(**args)


# ---------------------------------------------------------------- version branching

@pytest.mark.parametrize("version,precision,typed,flags,onnx_file", [
    ("10.3.0", "fp32", False, (), "audio.onnx"),
    ("10.3.0", "fp16", False, ("FP16", "OBEY_PRECISION_CONSTRAINTS"), "audio.onnx"),  # fused attention: not for TRT
    ("10.3.0", "int8", False, ("INT8",), "audio_int8_static.onnx"),
    ("10.13.2.6", "fp16", False, ("FP16", "OBEY_PRECISION_CONSTRAINTS"), "audio.onnx"),
    ("11.2.1", "int8", True, (), "audio_int8_static.onnx"),
    ("11.0.0", "fp32", True, (), "audio.onnx"),
])
def test_build_plan_by_version(version, precision, typed, flags, onnx_file):
    plan = tb.build_plan(version, precision, "audio")
    assert (plan.strongly_typed, plan.builder_flags, plan.onnx_file) == (typed, flags, onnx_file)


def test_build_plan_refusals_and_options():
    with pytest.raises(ValueError, match="not supported"):
        tb.build_plan("8.6.1", "fp16", "audio")
    with pytest.raises(ValueError, match="strongly typed"):
        tb.build_plan("11.0.0", "fp32", "audio", strongly_typed=False)
    with pytest.raises(ValueError, match="MultiHeadAttention"):  # TRT 11 would need a standard-op fp16 graph
        tb.build_plan("11.0.0", "fp16", "audio")
    assert tb.build_plan("11.0.0", "fp16", "text").onnx_file == "text_fp16.onnx"
    assert tb.build_plan("10.3.0", "fp16", "audio").fp32_layer_types == ("NORMALIZATION", "REDUCE")
    with pytest.raises(ValueError, match="precision"):
        tb.build_plan("10.3.0", "int4", "audio")
    plan = tb.build_plan("10.3.0", "int8", "text", strongly_typed=True)
    assert plan.strongly_typed and plan.builder_flags == () and plan.onnx_file == "text_int8_static.onnx"


def test_parse_version():
    assert te.parse_version("10.3.0") == (10, 3, 0)
    assert te.parse_version("11.0.0.post1") == (11, 0, 0)
    assert te.parse_version("10") == (10, 0, 0)


# ---------------------------------------------------------------- profiles

def test_audio_profile_from_manifest():
    p = tb.derive_profile(MANIFEST, "audio", batch=(1, 4, 8), frames=(101, 1000, 3000))
    lo, opt, hi = p.shapes["input_features"]
    assert lo == (1, 80, 102) and opt == (4, 80, 1000) and hi == (8, 80, 3000)  # frames made even
    assert p.covers({"input_features": (2, 80, 3000)})
    assert not p.covers({"input_features": (9, 80, 3000)})
    assert not p.covers({"input_features": (2, 80, 3002)})
    with pytest.raises(ValueError, match="max_frames"):
        tb.derive_profile(MANIFEST, "audio", frames=(100, 3000, 4000))
    with pytest.raises(ValueError, match="min <= opt <= max"):
        tb.derive_profile(MANIFEST, "audio", batch=(4, 2, 8))


def test_text_profile_defaults_to_manifest_limit():
    p = tb.derive_profile(MANIFEST, "text")
    # text max batch = the runtime's default text batch
    assert p.shapes["input_ids"] == p.shapes["attention_mask"] == ((1, 1), (8, 32), (32, 256))
    clipped = tb.derive_profile(MANIFEST, "text", seq=(1, 64, 1024))
    assert clipped.shapes["input_ids"][2] == (32, 256)
    with pytest.raises(ValueError):
        tb.derive_profile(MANIFEST, "vision")


# ---------------------------------------------------------------- cache keys

def test_engine_key_changes_with_every_dependency():
    base = _key()
    variants = [_key(trt_version="10.3.1"), _key(compute_capability=(8, 6)), _key(precision="int8"),
                _key(profile=tb.derive_profile(MANIFEST, "audio", batch=(1, 2, 8))),
                _key(onnx_sha256="cd" * 32), _key(strongly_typed=True)]
    digests = {tb.engine_key_digest(k) for k in [base, *variants]}
    assert len(digests) == len(variants) + 1
    assert tb.engine_key_digest(_key()) == tb.engine_key_digest(base)  # deterministic
    assert _key(compute_capability="8.7") == base


def test_engine_filename_names_what_it_is():
    name = tb.engine_filename("audio", _key())
    assert name.startswith("audio_fp16_trt10.3.0_sm87_") and name.endswith(".engine")
    assert tb.timing_cache_filename("10.3.0", "8.7") == "timing_trt10.3.0_sm87.cache"


def _engine(tmp_path, key, payload=b"serialized-engine"):
    path = tmp_path / tb.engine_filename("audio", key)
    path.write_bytes(payload)
    tb.write_sidecar(path, key, sha256_file(path))
    return path


def test_stale_engine_detection(tmp_path):
    key = _key()
    path = _engine(tmp_path, key)
    assert te.stale_reason(path, key, "10.3.0", "8.7") is None
    assert "TensorRT 10.3.0, running 10.4.0" in te.stale_reason(path, key, "10.4.0", "8.7")
    assert "compute capability 8.7, this GPU is 9.0" in te.stale_reason(path, key, "10.3.0", "9.0")
    assert "precision" in te.stale_reason(path, _key(precision="int8"), "10.3.0", "8.7")
    assert "onnx_sha256" in te.stale_reason(path, _key(onnx_sha256="cd" * 32))
    path.write_bytes(b"truncated")
    assert "sha256" in te.stale_reason(path, key)
    te.sidecar_path(path).unlink()
    assert "no sidecar" in te.stale_reason(path, key)
    assert "no engine file" in te.stale_reason(tmp_path / "missing.engine", key)
    other = _engine(tmp_path, key)
    te.sidecar_path(other).write_text("{not json")
    assert "unreadable" in te.stale_reason(other, key)


# ---------------------------------------------------------------- trtexec command lines

def test_trtexec_command_trt10_fp16():
    plan = tb.build_plan("10.3.0", "fp16", "audio")
    prof = tb.derive_profile(MANIFEST, "audio")
    cmd = tb.trtexec_command(Path("e/audio_fp16.onnx"), Path("c/a.engine"), plan, prof, Path("c/t.cache"))
    assert cmd[:3] == ["trtexec", "--onnx=e/audio_fp16.onnx", "--saveEngine=c/a.engine"]
    assert "--minShapes=input_features:1x80x100" in cmd and "--maxShapes=input_features:16x80x3000" in cmd
    assert "--fp16" in cmd and "--stronglyTyped" not in cmd and "--timingCacheFile=c/t.cache" in cmd


def test_trtexec_command_trt11_int8_and_text():
    plan = tb.build_plan("11.0.0", "int8", "text")
    prof = tb.derive_profile(MANIFEST, "text")
    cmd = tb.trtexec_command(Path("text_int8_static.onnx"), Path("t.engine"), plan, prof)
    assert "--stronglyTyped" in cmd and "--int8" not in cmd and "--fp16" not in cmd
    assert "--optShapes=attention_mask:8x32,input_ids:8x32" in cmd
    fp32 = tb.trtexec_command(Path("text.onnx"), Path("t.engine"), tb.build_plan("10.3.0", "fp32", "text"), prof)
    assert "--noTF32" in fp32


# ---------------------------------------------------------------- CLI without TensorRT

@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """An export dir with stand-in ONNX bytes: the CLI's planning only hashes them."""
    import hashlib

    d = tmp_path_factory.mktemp("trt_export")
    artifacts = {}
    for name in ("audio.onnx", "text.onnx", "audio_fp16.onnx", "text_fp16.onnx"):
        data = f"stand-in {name}".encode()
        (d / name).write_bytes(data)
        artifacts[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (d / "manifest.json").write_text(json.dumps({**MANIFEST, "artifacts": artifacts}))
    return d


def _cli(*args):
    return subprocess.run([sys.executable, str(REPO / "export" / "to_tensorrt.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_cli_dry_run_prints_plan_and_trtexec(tiny_export):
    r = _cli(tiny_export, "--precision", "fp16", "--tower", "text", "--dry-run", "--trt-version", "11.1.0",
             "--compute-capability", "8.7")
    assert r.returncode == 0, r.stderr
    assert "strongly typed" in r.stdout and "trtexec --onnx=" in r.stdout and "--stronglyTyped" in r.stdout
    # fp16 audio on TensorRT 10: the standard-op fp32 graph with the FP16 flag (audio_fp16.onnx is ORT-fused)
    r = _cli(tiny_export, "--precision", "fp16", "--tower", "audio", "--dry-run", "--trt-version", "10.3.0",
             "--compute-capability", "8.7")
    assert r.returncode == 0, r.stderr
    assert "--onnx=" in r.stdout and "audio.onnx" in r.stdout and "--fp16" in r.stdout
    r = _cli(tiny_export, "--precision", "fp16", "--tower", "audio", "--dry-run", "--trt-version", "11.1.0",
             "--compute-capability", "8.7")
    assert r.returncode == 2 and "MultiHeadAttention" in r.stderr and "Traceback" not in r.stderr


def test_cli_missing_precision_artifact_is_a_clear_error(tiny_export):
    r = _cli(tiny_export, "--precision", "int8", "--dry-run")
    assert r.returncode == 2 and "audio_int8_static.onnx is not in" in r.stderr and "quantize.py" in r.stderr


def test_cli_without_tensorrt_says_what_to_install(tiny_export):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    r = _cli(tiny_export, "--precision", "fp32")
    assert r.returncode == 2 and "tensorrt" in r.stderr and "cuda-python" in r.stderr


def test_session_without_tensorrt_raises_importerror(tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="tensorrt"):
        te.TensorRTSession(tmp_path / "x.engine")


def test_runtime_module_is_self_contained():
    """runtime/trt_engine.py: no torch, no imports from other wavlink_edge folders."""
    src = (REPO / "runtime" / "trt_engine.py").read_text()
    assert "import torch" not in src and "wavlink_edge." not in src.replace("wavlink_edge.runtime", "")


# ---------------------------------------------------------------- hardware (skips without TensorRT + GPU)

@pytest.fixture(scope="module")
def gpu_trt():
    pytest.importorskip("tensorrt", reason="TensorRT Python bindings are not installed (no NVIDIA GPU stack here)")
    pytest.importorskip("cuda", reason="cuda-python is not installed")
    if shutil.which("nvidia-smi") is None:
        pytest.skip("no NVIDIA GPU on this machine")
    return te.import_tensorrt()


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_matches_onnx(gpu_trt, base_export, tmp_path, precision):
    import numpy as np

    from wavlink_edge.quantization.evaluate import SAMPLES_DIR, audio_feeds, audio_files, session

    export = tmp_path / "export"
    shutil.copytree(base_export, export)
    if precision != "fp32":
        from wavlink_edge.quantization.quantize import quantize_export

        quantize_export(export, [precision], towers=("audio",), fast=True, log=lambda *_: None)
    from wavlink_edge.export import to_tensorrt

    cc = te.compute_capability()
    job = to_tensorrt.plan_tower(export, "audio", precision, gpu_trt.__version__, cc, tmp_path / "cache",
                                 (1, 2, 4), (100, 3000, 3000), tb.DEFAULT_TEXT_SEQ, None)
    engine = to_tensorrt.build_engine(job)
    assert te.stale_reason(engine, job["key"], gpu_trt.__version__, cc) is None
    feeds = audio_feeds(audio_files(SAMPLES_DIR)[:2], 80, ("pad",))
    batch = np.concatenate([f["input_features"] for _, f in feeds])
    got = te.TensorRTSession(engine).run({"input_features": batch})
    ref = session(export / "audio.onnx").run({"input_features": batch})
    cos = np.sum(got * ref, -1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert cos.min() > (0.99999 if precision == "fp32" else 0.999)
    # a second build with the same key reuses the engine
    assert to_tensorrt.build_engine(job) == engine
