"""Issue 19, build side: re-export updates an export in place and never deletes what it did not write;
export and quantize share one lock; a killed export leaves nothing that survives the next run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_export import tiny_config  # noqa: I001  (tests/ is on sys.path)

from wavlink_edge.export.model import WavLinkModel
from wavlink_edge.export.to_onnx import main as to_onnx_main
from wavlink_edge.quantization import quantize as q
from wavlink_edge.runtime import WavLink
from wavlink_edge.runtime.manifest import Manifest
from wavlink_edge.runtime.outputs import exclusive_lock

REPO = Path(__file__).resolve().parent.parent


def _checkpoint(path: Path, tokenizer_json: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    return WavLinkModel(tiny_config("base")).save_pretrained(path, tokenizer_json=tokenizer_json)


def _export(checkpoint: Path, out: Path | str) -> int:
    return to_onnx_main(["--size", "base", "--checkpoint", str(checkpoint), "--out", str(out)])


def test_reexport_keeps_what_still_holds_and_never_touches_user_files(tmp_path, base_model, capsys):
    tokenizer = base_model[1]
    out = tmp_path / "exp"
    assert _export(_checkpoint(tmp_path / "ck", tokenizer, 0), out) == 0
    q.quantize_export(out, ["fp16"], towers=("text",), fast=True, force=True, log=lambda *_: None)
    (out / "notes.txt").write_text("mine")
    (out / "trt_cache").mkdir()
    (out / "trt_cache" / "audio_fp16_x.engine").write_bytes(b"engine")
    fp32 = (out / "text.onnx").read_bytes()

    assert _export(tmp_path / "ck", out) == 0  # the same weights: byte-identical fp32 graphs
    assert "kept text_fp16.onnx" in capsys.readouterr().out
    assert (out / "text.onnx").read_bytes() == fp32 and "text_fp16.onnx" in Manifest.load(out).files
    assert Manifest.load(out).verified_path("text_fp16.onnx")

    assert _export(_checkpoint(tmp_path / "ck2", tokenizer, 1), out) == 0  # other weights: fp16 is stale
    assert "dropped text_fp16.onnx" in capsys.readouterr().out
    assert not (out / "text_fp16.onnx").exists() and "text_fp16.onnx" not in Manifest.load(out).files
    assert (out / "notes.txt").read_text() == "mine" and (out / "trt_cache" / "audio_fp16_x.engine").exists()
    WavLink.from_pretrained(out).embed_text(["new weights"])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_export_into_the_current_directory(tmp_path, base_model, monkeypatch):
    checkpoint = _checkpoint(tmp_path / "ck", base_model[1], 0)
    out = tmp_path / "exp"
    out.mkdir()
    monkeypatch.chdir(out)
    assert _export(checkpoint, ".") == 0
    assert _export(checkpoint, ".") == 0
    WavLink.from_pretrained(out).embed_text(["x"])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_quantize_refuses_while_an_export_holds_the_directory(tmp_path, base_model):
    out = tmp_path / "exp"
    assert _export(_checkpoint(tmp_path / "ck", base_model[1], 0), out) == 0
    with exclusive_lock(out, "an export"):
        assert q.main([str(out), "--precision", "fp16", "--tower", "text", "--fast", "--force"]) == 2
    assert "text_fp16.onnx" not in Manifest.load(out).files


@pytest.mark.parametrize("argv, message", [
    (["--int8-variants", "bogus"], "unknown int8 variant"),
    (["--eval-dir", "/nonexistent"], "--eval-dir /nonexistent: not a directory"),
])
def test_quantize_weak_spots_are_one_line(tmp_path, base_model, capsys, argv, message):
    out = tmp_path / "exp"
    assert _export(_checkpoint(tmp_path / "ck", base_model[1], 0), out) == 0
    assert q.main([str(out), "--precision", "int8", "--fast", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_quantize_without_text_files_is_one_line(tmp_path, base_model, capsys):
    out = tmp_path / "exp"
    assert _export(_checkpoint(tmp_path / "ck", base_model[1], 0), out) == 0
    (out / "tokenizer.json").unlink()
    assert q.main([str(out), "--precision", "fp16", "--tower", "text", "--fast"]) == 2
    assert "tokenizer.json is missing" in capsys.readouterr().err


def test_a_killed_export_leaves_the_previous_one_and_its_leftovers_are_cleaned(tmp_path, base_model):
    checkpoint = _checkpoint(tmp_path / "ck", base_model[1], 0)
    out = tmp_path / "exp"
    assert _export(checkpoint, out) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".verified.json"}
    paused = tmp_path / "paused"
    env = {**os.environ, "WAVLINK_EDGE_HOLD_AT": "export: graphs written, not yet validated", "WAVLINK_EDGE_HOLD_FILE": str(paused)}
    proc = subprocess.Popen([sys.executable, str(REPO / "export" / "to_onnx.py"), "--size", "base", "--checkpoint",
                             str(checkpoint), "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 600
    while not paused.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert paused.exists(), f"the export never reached its pause point (exit code {proc.poll()})"
    assert list(tmp_path.glob(".exp.building-*/audio.onnx")), "paused with the new graphs in the build directory"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.glob(".exp.building-*")), "the kill left its build directory (what this test checks)"
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".verified.json"} == before
    assert _export(checkpoint, out) == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_killed_quantization_leaves_nothing_the_next_run_keeps(tmp_path, base_model):
    out = tmp_path / "exp"
    assert _export(_checkpoint(tmp_path / "ck", base_model[1], 0), out) == 0
    (out / ".tmp-99999-text_fp16.onnx").write_bytes(b"half a graph")  # a SIGKILLed run's candidate
    before = Manifest.load(out).files.copy()
    assert q.main([str(out), "--precision", "fp16", "--tower", "text", "--fast", "--force"]) == 0
    assert not list(out.glob(".tmp-*"))
    assert set(Manifest.load(out).files) == set(before) | {"text_fp16.onnx"}
