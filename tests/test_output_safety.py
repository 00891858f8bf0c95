"""Issue 19 on the tiny export (no torch): no run loses or corrupts a file. Each case is one that lost or
corrupted a file (or gave a traceback) before: two writers, --out that is an input, --resume into the
wrong file, a cut row, a full disk, a manifest that lies, and the weak spots that now give one line."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from wavlink_edge.runtime import ModelFilesError, WavLink, cli, files
from wavlink_edge.runtime.errors import AudioInputError, TextInputError
from wavlink_edge.runtime.outputs import HEADER_KEY, exclusive_lock, read_rows


def run(capsys, *argv) -> tuple[int, str]:
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


@pytest.fixture
def clips(sample_clips, tmp_path) -> list[str]:
    return [str(shutil.copy(p, tmp_path / p.name)) for p in sample_clips]


# -- two writers, and outputs that are inputs ----------------------------------------------------------

def test_a_second_writer_of_one_output_is_refused(tiny_export, clips, tmp_path, capsys):
    out = tmp_path / "emb.jsonl"
    with exclusive_lock(out, str(out)):
        code, err = run(capsys, "embed", *clips, "--model", tiny_export, "--out", out)
    assert code == 2 and "another wavlink-edge run is writing" in err and not out.exists()
    assert run(capsys, "embed", *clips, "--model", tiny_export, "--out", out)[0] == 0
    assert not (tmp_path / ".emb.jsonl.lock").exists()


def test_two_concurrent_processes_leave_one_complete_file(tiny_export, clips, tmp_path):
    out = tmp_path / "emb.jsonl"
    command = [sys.executable, "-m", "wavlink_edge", "embed", *clips * 8, "--model", str(tiny_export), "--out", str(out)]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 2], [0, 0]), results  # overlap: one refused; none: both complete
    header, rows = read_rows(out)
    assert header["tower"] == "audio" and len(rows) == len(clips) * 8 and all("embedding" in r for r in rows)


@pytest.mark.parametrize("case", ["symlink to an input", "input named like the output", "texts file"])
def test_an_output_that_is_an_input_is_refused_and_the_input_kept(tiny_export, clips, tmp_path, capsys, case):
    if case == "symlink to an input":
        out = tmp_path / "emb.jsonl"
        out.symlink_to(clips[0])
        argv = ["embed", *clips, "--out", out]
    elif case == "input named like the output":
        out = Path(shutil.copy(clips[0], tmp_path / "x.jsonl"))
        argv = ["embed", out, *clips, "--out", out]
    else:
        out = tmp_path / "captions.jsonl"
        out.write_text("a dog\na cat\n")
        argv = ["embed-text", "--file", out, "--out", out]
    before = Path(out).resolve().read_bytes()
    code, err = run(capsys, *argv, "--model", tiny_export)
    assert code == 2 and "refusing to overwrite an input" in err
    assert Path(out).resolve().read_bytes() == before


# -- --resume ------------------------------------------------------------------------------------------

def test_resume_refuses_rows_of_another_dim_model_or_tower(tiny_export, clips, tmp_path, capsys):
    out = tmp_path / "emb.jsonl"
    assert run(capsys, "embed", clips[0], "--model", tiny_export, "--dim", "16", "--out", out)[0] == 0
    before = out.read_bytes()
    code, err = run(capsys, "embed", *clips, "--model", tiny_export, "--dim", "8", "--out", out, "--resume")
    assert code == 2 and "dim 16 vs this run's 8" in err and out.read_bytes() == before
    code, err = run(capsys, "embed-text", "a dog", "--model", tiny_export, "--dim", "16", "--out", out, "--resume")
    assert code == 2 and "tower 'audio' vs this run's 'text'" in err
    header, rows = read_rows(out)
    lines = out.read_text().splitlines()
    lines[0] = json.dumps({HEADER_KEY: {**header, "model": "another-model"}})
    out.write_text("\n".join(lines) + "\n")
    code, err = run(capsys, "embed", *clips, "--model", tiny_export, "--dim", "16", "--out", out, "--resume")
    assert code == 2 and "model 'another-model'" in err


def test_resume_survives_changes_to_other_files_of_the_export_but_not_to_its_artifact(tiny_export, clips, tmp_path, capsys):
    """The header keys the rows by the audio artifact in use: adding files to the export (a quantized text
    tower, notes) keeps them; rows of another artifact are refused."""
    from wavlink_edge.runtime.manifest import Manifest

    export, out = Path(shutil.copytree(tiny_export, tmp_path / "export")), tmp_path / "emb.jsonl"
    assert run(capsys, "embed", clips[0], "--model", export, "--out", out)[0] == 0
    manifest = Manifest.load(export)
    (export / "NOTES.txt").write_text("re-exported text tower\n")
    manifest.record("NOTES.txt")
    manifest.save()
    code, err = run(capsys, "embed", *clips, "--model", export, "--out", out, "--resume")
    assert code == 0 and "1 sources already" in err and len(read_rows(out)[1]) == len(clips)
    header, rows = read_rows(out)
    lines = out.read_text().splitlines()
    lines[0] = json.dumps({HEADER_KEY: {**header, "model_digest": "0" * 64}})
    out.write_text("\n".join(lines) + "\n")
    code, err = run(capsys, "embed", *clips, "--model", export, "--out", out, "--resume")
    assert code == 2 and "model_digest" in err


def test_resume_repairs_a_cut_last_row_and_completes_in_order(tiny_export, clips, tmp_path, capsys):
    out = tmp_path / "emb.jsonl"
    assert run(capsys, "embed", *clips, "--model", tiny_export, "--out", out)[0] == 0
    whole = read_rows(out)[1]
    data = out.read_bytes()
    out.write_bytes(data[: data.rfind(b"\n", 0, len(data) - 1) + 40])  # last row cut 39 bytes in
    code, err = run(capsys, "embed", *clips, "--model", tiny_export, "--out", out, "--resume")
    assert code == 0 and "ended inside a row" in err and "was removed and will be redone" in err
    assert read_rows(out)[1] == whole


def test_resume_replaces_an_error_row_and_keeps_input_order(tiny_export, clips, tmp_path, capsys):
    late = tmp_path / "late.flac"
    paths = [clips[0], str(late), clips[1]]
    out = tmp_path / "emb.jsonl"
    assert run(capsys, "embed", *paths, "--model", tiny_export, "--out", out)[0] == 1
    shutil.copy(clips[2], late)  # the failed input becomes readable
    assert run(capsys, "embed", *paths, "--model", tiny_export, "--out", out, "--resume")[0] == 0
    rows = read_rows(out)[1]
    assert [r["source"] for r in rows] == paths and all("embedding" in r for r in rows)


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe not utf-8\n", "line 1 is not a JSON row"),
    (b"[1, 2]\n", "line 1 is not a JSON object"),
    (b'{"source": "a.wav", "embedding": [0.5]}\n', "no wavlink-edge header"),
])
def test_resume_into_a_foreign_file_is_one_line(tiny_export, clips, tmp_path, capsys, content, message):
    out = tmp_path / "emb.jsonl"
    out.write_bytes(content)
    code, err = run(capsys, "embed", *clips, "--model", tiny_export, "--out", out, "--resume")
    assert code == 2 and message in err and err.count("error:") == 1 and out.read_bytes() == content


# -- a full disk -----------------------------------------------------------------------------------------

def test_npy_and_sidecar_are_one_unit_when_the_disk_fills(tiny_export, clips, tmp_path, monkeypatch, capsys):
    out = tmp_path / "emb.npy"
    assert run(capsys, "embed", *clips, "--model", tiny_export, "--out", out)[0] == 0
    old = {p.name: p.read_bytes() for p in tmp_path.glob("emb.npy*")}
    real, calls = files._write_temporary, []

    def second_write_fails(path, write):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, write)

    monkeypatch.setattr(files, "_write_temporary", second_write_fails)
    code, err = run(capsys, "embed", clips[0], "--model", tiny_export, "--out", out)
    assert code == 2 and "No space left on device" in err and str(out) in err
    assert {p.name: p.read_bytes() for p in tmp_path.glob("emb.npy*")} == old  # no temporaries, nothing replaced
    header, rows = read_rows(tmp_path / "emb.npy.sources.jsonl")
    import hashlib

    assert header["npy_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest() and len(rows) == len(clips)


@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or 'mount failed'})")
    yield mount
    subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_real_full_disk_keeps_the_finished_jsonl_rows_and_resume_completes(tiny_export, clips, tiny_disk, capsys):
    out = tiny_disk / "emb.jsonl"
    paths = clips * 40
    code, err = run(capsys, "embed", *paths, "--model", tiny_export, "--out", out)
    assert code == 2 and "No space left on device" in err and str(out) in err
    data = out.read_bytes()
    complete = [json.loads(line) for line in data[: data.rfind(b"\n")].split(b"\n")]
    assert HEADER_KEY in complete[0] and len(complete) > 1 and all("embedding" in r for r in complete[1:])
    subprocess.run(["mount", "-o", "remount,size=1m", str(tiny_disk)], check=True)
    code, err = run(capsys, "embed", *paths, "--model", tiny_export, "--out", out, "--resume")
    assert code == 0
    rows = read_rows(out)[1]
    assert len(rows) == len(clips) and [r["source"] for r in rows] == clips  # repeats are done already


# -- a manifest that lies --------------------------------------------------------------------------------

def _lying_export(tiny_export: Path, tmp_path: Path, edit) -> Path:
    export = tmp_path / f"export-{uuid.uuid4().hex[:6]}"
    shutil.copytree(tiny_export, export, ignore=shutil.ignore_patterns(".verified.json"))
    data = json.loads((export / "manifest.json").read_text())
    edit(data)
    (export / "manifest.json").write_text(json.dumps(data))
    return export


@pytest.mark.parametrize("field, value, message", [
    ("embed_dim", 0, "model.embed_dim must be a positive integer, got 0"),
    ("embed_dim", 64, "model.embed_dim is 64 but audio.onnx outputs 32 dims"),
    ("matryoshka_dims", [32, 16, 8, 40], "model.matryoshka_dims must be distinct integers in 1..embed_dim"),
    ("matryoshka_dims", [16, 8], "including embed_dim"),
    ("n_mels", 128, "model.n_mels is 128 but audio.onnx takes 80 mel bins"),
    ("n_mels", "80", "model.n_mels must be 80 or 128"),
    ("max_frames", 0, "model.max_frames must be 1..3000"),
    ("clip_policy", "stretch", "model.clip_policy must be 'pad' or 'trim'"),
    ("sample_rate", 44100, "model.sample_rate must be 16000"),
])
def test_a_lying_manifest_fails_at_load_naming_the_field(tiny_export, tmp_path, field, value, message):
    if field == "embed_dim" and value == 64:
        edit = lambda d: d["model"].update(embed_dim=64, matryoshka_dims=[64, 32, 16, 8])  # noqa: E731
    else:
        edit = lambda d: d["model"].update({field: value})  # noqa: E731
    with pytest.raises(ModelFilesError, match=message.replace("(", r"\(").replace("[", r"\[")):
        WavLink.from_pretrained(_lying_export(tiny_export, tmp_path, edit))


def test_deep_manifest_and_garbage_tokenizer_are_one_line(tiny_export, tmp_path, capsys):
    deep = tmp_path / "deep"
    shutil.copytree(tiny_export, deep)
    (deep / "manifest.json").write_text("[" * 100000 + "]" * 100000)
    code, err = run(capsys, "embed-text", "x", "--model", deep)
    assert code == 2 and "nested too deeply" in err

    def garbage_tokenizer(data):
        import hashlib

        data["artifacts"]["tokenizer.json"].update(sha256=hashlib.sha256(b'{"not": "a tokenizer"}').hexdigest(), bytes=22)

    export = _lying_export(tiny_export, tmp_path, garbage_tokenizer)
    (export / "tokenizer.json").write_bytes(b'{"not": "a tokenizer"}')
    code, err = run(capsys, "embed-text", "x", "--model", export)
    assert code == 2 and "tokenizer.json: not a usable tokenizer" in err


# -- weak spots: one line each ---------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"threads": 0}, "threads must be an integer in 1..1024"),
    ({"threads": 10**6}, "threads must be an integer in 1..1024"),
    ({"max_batch_frames": "x"}, "max_batch_frames must be a positive integer"),
    ({"window_hop_seconds": 1e-9}, "at least 0.01 s"),
    ({"providers": "CPUExecutionProvider"}, "providers must be a list"),
])
def test_bad_load_options_fail_at_load(tiny_export, kwargs, message):
    with pytest.raises(ValueError, match=message):
        WavLink.from_pretrained(tiny_export, **kwargs)


def test_bad_items_are_named(tiny_export):
    model = WavLink.from_pretrained(tiny_export)
    with pytest.raises(AudioInputError, match="sample rate must be a number, got str"):
        model.embed_audio((np.zeros(16000, np.float32), "16000"))
    with pytest.raises(TextInputError, match="got dict"):
        model.embed_text({"a dog": 1})


def test_cut_ogg_last_page_is_truncation(sample_clips, tmp_path):
    import soundfile as sf

    from wavlink_edge.runtime.audio import decode_audio

    whole = tmp_path / "whole.ogg"
    sf.write(whole, sf.read(sample_clips[0])[0], 44100, format="OGG")
    cut = tmp_path / "cut.ogg"
    data = whole.read_bytes()
    cut.write_bytes(data[: data.rfind(b"OggS") + 60])  # inside the last page, its header (and EOS flag) intact
    decode_audio(whole)
    with pytest.raises(AudioInputError, match="last page is incomplete"):
        decode_audio(cut)


def test_cli_version_model_file_and_warnings_once(tiny_export, clips, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("wavlink-edge ")
    not_a_dir = tmp_path / "model.onnx"
    not_a_dir.write_bytes(b"x")
    code, err = run(capsys, "embed-text", "x", "--model", not_a_dir)
    assert code == 2 and "is a file, not an export directory" in err
    with contextlib.redirect_stdout(open(os.devnull, "w")):
        code, err = run(capsys, "embed-text", "a", "", " ", "--model", tiny_export)
    assert code == 0
    assert err.count("untrained heads") == 1 and err.count("empty or whitespace only") == 1


# -- SIGKILL -------------------------------------------------------------------------------------------

def test_a_killed_embed_leaves_whole_rows_and_resume_completes(tiny_export, clips, tmp_path, capsys):
    import signal
    import time

    out = tmp_path / "emb.jsonl"
    paths = [str(shutil.copy(clips[i % len(clips)], tmp_path / f"c{i:03d}.flac")) for i in range(60)]
    paused = tmp_path / "paused"
    env = {**os.environ, "WAVLINK_EDGE_HOLD_AT": "rows written: 3", "WAVLINK_EDGE_HOLD_FILE": str(paused)}
    proc = subprocess.Popen([sys.executable, "-m", "wavlink_edge", "embed", *paths, "--model", str(tiny_export),
                             "--batch-size", "1", "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while not paused.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert paused.exists(), f"the run never reached its pause point (exit code {proc.poll()})"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (tmp_path / ".emb.npy.leftover.tmp").write_bytes(b"half")  # what a kill during an .npy rename leaves
    code, _ = run(capsys, "embed", *paths, "--model", tiny_export, "--batch-size", "1", "--out", out, "--resume")
    assert code == 0
    assert [r["source"] for r in read_rows(out)[1]] == paths
    assert run(capsys, "embed", clips[0], "--model", tiny_export, "--out", tmp_path / "emb.npy")[0] == 0
    assert not list(tmp_path.glob(".*.tmp")) and not list(tmp_path.glob(".*.lock"))
