"""Issue 18 on the tiny export (no torch): formats FFmpeg decodes, directory/list/stdin inputs, the
verification cache, the provider-fallback line, `info`/`verify`, and a layout that cannot shadow itself."""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from wavlink_edge.bench.formats import encode_with_ffmpeg
from wavlink_edge.runtime import ModelFilesError, WavLink, cli
from wavlink_edge.runtime.audio import decode_audio
from wavlink_edge.runtime.errors import AudioInputError
from wavlink_edge.runtime.inputs import expand_inputs
from wavlink_edge.runtime.outputs import read_rows

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def speech(sample_clips) -> Path:
    return next(p for p in sample_clips if "speech" in p.name)


@pytest.mark.parametrize("name, codec, container, rate", [
    ("phone.m4a", "aac", None, None), ("browser.webm", "libopus", None, 48000), ("old.wma", "wmav2", "asf", 22050),
])
def test_compressed_copies_decode_through_ffmpeg_and_embed_like_the_original(tiny_export, speech, tmp_path,
                                                                            name, codec, container, rate):
    pytest.importorskip("av")
    copy = encode_with_ffmpeg(speech, tmp_path / name, codec, container, rate)
    original, decoded = decode_audio(speech), decode_audio(copy)
    assert abs(decoded.size - original.size) < 0.1 * original.size  # encoder delay/padding only
    model = WavLink.from_pretrained(tiny_export)
    a, b = model.embed_audio([speech, copy])
    assert float(a @ b) > 0.95, "a lossy copy of the same speech must embed close to the original"


def test_video_audio_track_decodes_and_bad_stream_counts_are_one_line(speech, tmp_path):
    pytest.importorskip("av")
    video = encode_with_ffmpeg(speech, tmp_path / "camera.mp4", "aac", video=True)
    assert decode_audio(video).size > 16000
    silent = encode_with_ffmpeg(speech, tmp_path / "silent.mp4", None, video=True)
    with pytest.raises(AudioInputError, match=r"silent.mp4: no audio streams \(streams: video:mpeg4\)"):
        decode_audio(silent)
    two = encode_with_ffmpeg(speech, tmp_path / "two.mkv", "aac", audio_streams=2)
    with pytest.raises(AudioInputError, match=r"two.mkv: 2 audio streams .*-map 0:a:0"):
        decode_audio(two)


def test_garbage_with_a_media_extension_fails_alone_by_name(tiny_export, speech, tmp_path):
    pytest.importorskip("av")
    bad = tmp_path / "broken.m4a"
    bad.write_bytes(os.urandom(4096))
    results = list(WavLink.from_pretrained(tiny_export).iter_embed_audio([bad, speech]))
    assert results[0].error.startswith(f"{bad}: not a readable audio file") and results[1].ok


def _tree(tmp_path: Path, speech: Path) -> Path:
    root = tmp_path / "library"
    for rel in ["b/2.flac", "a/1.wav", "a/z/3.ogg", "c.flac", "notes.txt", "a/cover.jpg"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(speech.read_bytes() if rel.endswith(".flac") else b"x")
    return root


def test_directories_expand_recursively_sorted_by_audio_extension(speech, tmp_path):
    root = _tree(tmp_path, speech)
    got = expand_inputs([str(root)])
    assert got == [str(root / r) for r in ["a/1.wav", "a/z/3.ogg", "b/2.flac", "c.flac"]]
    assert expand_inputs([str(root)], exts=["flac"]) == [str(root / "b/2.flac"), str(root / "c.flac")]
    assert expand_inputs([str(root)], glob="*/a/*.wav") == [str(root / "a/1.wav")]
    assert expand_inputs([str(root / "notes.txt"), str(root)], glob="*.ogg") == [str(root / "notes.txt"),
                                                                                  str(root / "a/z/3.ogg")]


def test_lists_and_stdin_give_paths_in_their_order(speech, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("z.wav\n\n a b.flac\r\nskip.txt\n")
    assert expand_inputs([], from_list=str(listing)) == ["z.wav", " a b.flac"]
    assert expand_inputs(["-", "x.flac"], stdin=io.StringIO("s.mp3\ns.txt\n")) == ["s.mp3", "x.flac"]
    with pytest.raises(ValueError, match="--from-list .*missing.txt"):
        expand_inputs([], from_list=str(tmp_path / "missing.txt"))


def test_cli_embeds_a_directory_and_stdin_with_the_same_rows(tiny_export, speech, tmp_path, monkeypatch, capsys):
    root = _tree(tmp_path, speech)
    out_dir, out_stdin = tmp_path / "dir.jsonl", tmp_path / "stdin.jsonl"
    assert cli.main(["embed", str(root), "--ext", "flac", "--model", str(tiny_export), "--out", str(out_dir)]) == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{root / 'b/2.flac'}\n{root / 'c.flac'}\n"))
    assert cli.main(["embed", "-", "--model", str(tiny_export), "--out", str(out_stdin)]) == 0
    assert read_rows(out_dir)[1] == read_rows(out_stdin)[1]
    assert [r["source"] for r in read_rows(out_dir)[1]] == [str(root / "b/2.flac"), str(root / "c.flac")]
    assert cli.main(["embed", str(root / "a"), "--ext", "mp3", "--model", str(tiny_export)]) == 2
    assert "hold no audio files" in capsys.readouterr().err


def _copy(tiny_export: Path, tmp_path: Path) -> Path:
    export = tmp_path / "export"
    shutil.copytree(tiny_export, export, ignore=shutil.ignore_patterns(".verified.json"))
    return export


def test_verification_cache_skips_rehashing_but_catches_a_changed_byte(tiny_export, tmp_path, monkeypatch):
    from wavlink_edge.runtime import manifest as manifest_module

    export = _copy(tiny_export, tmp_path)
    WavLink.from_pretrained(export)
    cache = json.loads((export / ".verified.json").read_text())
    assert {"audio.onnx", "text.onnx", "tokenizer.json"} <= set(cache["files"])
    hashed = []
    real_sha256 = manifest_module.hashlib.sha256
    monkeypatch.setattr(manifest_module.hashlib, "sha256", lambda *a: hashed.append(1) or real_sha256(*a))
    WavLink.from_pretrained(export)
    assert len(hashed) == 1, "only the manifest's own digest; no artifact re-hashed"
    data = bytearray((export / "text.onnx").read_bytes())
    data[len(data) // 2] ^= 1  # same size, one bit
    (export / "text.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelFilesError, match="text.onnx: sha256 mismatch"):
        WavLink.from_pretrained(export)


def test_read_only_export_loads_and_caches_in_the_user_directory(tiny_export, tmp_path, monkeypatch):
    from wavlink_edge.runtime import manifest as manifest_module

    export = _copy(tiny_export, tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    # Root ignores permission bits, so the read-only check itself is what is simulated here.
    monkeypatch.setattr(manifest_module.os, "access", lambda path, mode: Path(path) != export)
    WavLink.from_pretrained(export).embed_text(["x"])
    assert not (export / ".verified.json").exists()
    assert len(list((tmp_path / "cache" / "wavlink-edge" / "verified").glob("*.json"))) == 1


def test_verify_and_info_commands(tiny_export, tmp_path, capsys):
    export = _copy(tiny_export, tmp_path)
    assert cli.main(["verify", str(export)]) == 0
    assert "files match" in capsys.readouterr().out
    assert cli.main(["info", str(export), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"]["embed_dim"] == 32 and "audio.onnx" in info["artifacts"]
    assert info["would_load"]["fp32"].startswith("audio.onnx + text.onnx on CPUExecutionProvider")
    (export / "audio.onnx").write_bytes(b"tampered")
    assert cli.main(["verify", str(export)]) == 2
    assert "audio.onnx" in capsys.readouterr().err


def test_unavailable_provider_is_reported_once_in_one_line(tiny_export, monkeypatch, caplog, capfd):
    import onnxruntime as ort

    from wavlink_edge.runtime import session

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(session, "provider_blocker", lambda name: None)  # its libraries load; ORT still cannot start it
    monkeypatch.setattr(session, "_WARNED", set())
    with caplog.at_level(logging.WARNING, logger="wavlink_edge.runtime"):
        model = WavLink.from_pretrained(tiny_export)
    assert model.audio_session.providers[0] == "CPUExecutionProvider"
    lines = [r.getMessage() for r in caplog.records if "could not be started" in r.getMessage()]
    assert lines == ["CUDAExecutionProvider could not be started here (run with --verbose for onnxruntime's reason); "
                     "running on CPUExecutionProvider"]
    assert "EP Error" not in capfd.readouterr().err


def test_providers_as_a_string_or_one_tuple(tiny_export):
    with pytest.raises(ValueError, match="providers must be a list"):
        WavLink.from_pretrained(tiny_export, providers="CPUExecutionProvider")
    model = WavLink.from_pretrained(tiny_export, providers=[("CPUExecutionProvider",)])
    assert model.audio_session.providers == ["CPUExecutionProvider"]


def test_wheel_holds_every_stage_and_its_small_data_and_the_checkout_cannot_shadow_it(tmp_path):
    """A non-editable install, used from the repository root (the checkout's package is found first) and
    from elsewhere (the installed one): both import the runtime. The wheel holds every stage's code and the
    data they read at run time (clips, heads, calibration and held-out sets), not the eval split."""
    pytest.importorskip("setuptools", minversion="70.1", reason="building the wheel offline needs setuptools >= 70.1")
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(REPO)], check=True, capture_output=True, timeout=600)
    (wheel,) = wheels.glob("wavlink_edge-*.whl")
    packages = {Path(n).parts[1] if len(Path(n).parts) > 2 else Path(n).name
                for n in zipfile.ZipFile(wheel).namelist() if n.startswith("wavlink_edge/")}
    assert packages == {"__init__.py", "__main__.py", "commands.py", "run_by_path.py", "runtime", "export", "quantization",
                        "train", "bench"}
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("wavlink_edge/runtime/samples/speech_en_female.flac", "wavlink_edge/export/weights/wavlink-base-demo.safetensors",
                   "wavlink_edge/export/weights/wealy-base-head.safetensors", "wavlink_edge/quantization/calibration/sentences.txt",
                   "wavlink_edge/quantization/heldout/sentences.txt", "wavlink_edge/train/corpus/debian_sounds.tsv.gz"):
        assert needed in names, needed
    assert not [n for n in names if "/bench/data/" in n or "/bench/results/" in n], "the eval split and results stay out"
    assert wheel.stat().st_size < 20e6, f"{wheel.stat().st_size / 1e6:.1f} MB"
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = "import wavlink_edge.runtime.cli as c, wavlink_edge; print(c.__file__)"
    for cwd, expected in ((REPO, REPO / "wavlink_edge"), (tmp_path, target / "wavlink_edge")):
        done = subprocess.run([sys.executable, "-c", probe], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert Path(done.stdout.strip()).resolve().is_relative_to(expected.resolve())
        help_run = subprocess.run([sys.executable, "-m", "wavlink_edge", "--help"], cwd=cwd, env=env,
                                  capture_output=True, text=True, timeout=120)
        assert help_run.returncode == 0 and "embed" in help_run.stdout, help_run.stderr
