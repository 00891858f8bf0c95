"""Issue 4's bad-input list as tables: each bad item gets one clear error naming it, the rest of the batch
is embedded, in order. (Hours-long files: test_runtime.py::test_long_file_is_decoded_in_bounded_memory.)"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from wavlink_edge.runtime import AudioInputError, ModelFilesError, TextInputError, WavLink

SR = 16_000
OK = None  # expected outcome: an embedding


def _tone(seconds: float = 1.5, rate: int = SR, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.4 * np.sin(2 * np.pi * 330 * t) * np.exp(-t)
    return np.repeat(mono[:, None], channels, axis=1).astype(np.float32) if channels > 1 else mono.astype(np.float32)


def _write(directory: Path, name: str, audio: np.ndarray, rate: int = SR, **kwargs) -> Path:
    path = directory / name
    sf.write(path, audio, rate, **kwargs)
    return path


def _truncated(directory: Path, name: str, seconds: float = 2.0) -> Path:
    whole = _write(directory, "whole_" + name, _tone(seconds))
    payload = whole.read_bytes()
    path = directory / name
    path.write_bytes(payload[: len(payload) // 2])
    return path


def _raw(directory: Path, name: str, payload: bytes) -> Path:
    path = directory / name
    path.write_bytes(payload)
    return path


def _nan_wav(directory: Path) -> Path:
    audio = _tone()
    audio[1234] = np.nan
    return _write(directory, "nan.wav", audio, subtype="FLOAT")


def _subdir(directory: Path) -> Path:
    (directory / "a_directory.wav").mkdir()
    return directory / "a_directory.wav"


# (id, builder(tmp_dir) -> input item, expected error regex or OK). Order matters: one batch, in this order.
AUDIO_CASES = [
    ("good_flac", lambda d: _write(d, "good.flac", _tone()), OK),
    ("missing_file", lambda d: d / "does_not_exist.wav", r"does_not_exist\.wav: file not found"),
    ("corrupt_bytes", lambda d: _raw(d, "corrupt.wav", b"RIFF\x10\x00\x00\x00WAVEjunk" + os.urandom(300)),
     r"corrupt\.wav: not a readable audio file"),
    ("truncated_wav", lambda d: _truncated(d, "truncated.wav"), r"truncated\.wav: truncated file"),
    ("truncated_flac", lambda d: _truncated(d, "truncated.flac"), r"truncated\.flac: (truncated|decoding failed)"),
    ("empty_file", lambda d: _raw(d, "empty.wav", b""), r"empty\.wav: empty file \(0 bytes\)"),
    ("zero_sample_wav", lambda d: _write(d, "zero.wav", np.zeros(0, np.float32)), r"zero\.wav: no audio samples"),
    ("zero_sample_array", lambda d: (np.zeros(0, np.float32), SR), r"array\[7\].*no audio samples"),
    ("nan_wav", _nan_wav, r"nan\.wav: NaN or Inf sample at frame 1234"),
    ("inf_array", lambda d: (np.array([0.0, np.inf] + [0.0] * 4000), SR), r"array\[9\].*NaN or Inf sample at frame 1"),
    ("non_audio_file", lambda d: _raw(d, "notes.txt", b"not audio at all\n" * 50),
     r"notes\.txt: not a readable audio file"),
    ("directory", _subdir, r"a_directory\.wav: not a regular file"),
    ("pcm_8bit_wav", lambda d: _write(d, "u8.wav", _tone(), subtype="PCM_U8"), OK),
    ("pcm_24bit_wav", lambda d: _write(d, "s24.wav", _tone(), subtype="PCM_24"), OK),
    ("rate_8khz", lambda d: _write(d, "8k.wav", _tone(rate=8_000), 8_000), OK),
    ("rate_44_1khz_flac", lambda d: _write(d, "44k.flac", _tone(rate=44_100), 44_100), OK),
    ("rate_96khz", lambda d: _write(d, "96k.wav", _tone(rate=96_000), 96_000, subtype="PCM_24"), OK),
    ("six_channels", lambda d: _write(d, "6ch.wav", _tone(channels=6)), OK),
    ("ogg_vorbis", lambda d: _write(d, "clip.ogg", _tone(), format="OGG"), OK),
    ("mp3", lambda d: _write(d, "clip.mp3", _tone(), format="MP3"), OK),
    ("int16_array", lambda d: ((_tone() * 32767).astype(np.int16), SR), OK),
    ("uint8_stereo_array", lambda d: ((_tone(channels=2) * 127 + 128).astype(np.uint8), 22_050), OK),
    ("bool_array", lambda d: (np.ones(SR, bool), SR), r"array\[22\].*dtype bool is not integer or float PCM"),
    ("three_dim_array", lambda d: (np.zeros((2, 2, SR), np.float32), SR), r"array\[23\].*1-D \[samples\] or 2-D"),
    ("channels_first_array", lambda d: (np.zeros((2, SR), np.float32), SR), r"array\[24\].*16000 channels.*transpose"),
    ("rate_zero", lambda d: (_tone(), 0), r"array\[25\].*sample rate 0 Hz is outside"),
    ("rate_not_a_number", lambda d: (_tone(), "16k"), r"array\[26\].*sample rate must be a number"),
    ("not_an_input", lambda d: 42, r"input\[27\] \(int\): expected a file path or an \(array, sample_rate\) pair"),
    ("good_after_the_bad", lambda d: (_tone(2.0), SR), OK),
    ("truncated_ogg", lambda d: _truncated(d, "truncated.ogg", seconds=8.0), r"truncated\.ogg: truncated file: the Ogg"),
]


@pytest.fixture(scope="module")
def model(tiny_export):
    return WavLink.from_pretrained(tiny_export, clip_policy="trim")


@pytest.fixture(scope="module")
def audio_batch(model, tmp_path_factory):
    """The whole table as one batch: items in order, results in order."""
    directory = tmp_path_factory.mktemp("bad_audio")
    items = [build(directory) for _, build, _ in AUDIO_CASES]
    results = list(model.iter_embed_audio(items, dim=8, batch_size=4))
    return items, results


@pytest.mark.parametrize("case", range(len(AUDIO_CASES)), ids=[c[0] for c in AUDIO_CASES])
def test_bad_audio_item_gets_one_clear_error_and_the_batch_goes_on(model, audio_batch, case):
    items, results = audio_batch
    assert [r.index for r in results] == list(range(len(AUDIO_CASES)))
    result, (_, _, expected) = results[case], AUDIO_CASES[case]
    if expected is OK:
        assert result.ok, result.error
        assert result.embedding.shape == (8,) and np.isfinite(result.embedding).all()
        assert np.linalg.norm(result.embedding) == pytest.approx(1.0, abs=1e-5)
        # Batched with failing neighbours, still the same as embedded alone.
        np.testing.assert_allclose(result.embedding, model.embed_audio([items[case]], dim=8)[0], atol=1e-5)
    else:
        assert not result.ok and result.embedding is None
        assert re.search(expected, result.error), result.error


def test_embed_audio_raises_naming_the_first_bad_item(model, tmp_path):
    good = _write(tmp_path, "good.wav", _tone())
    with pytest.raises(AudioInputError, match=r"missing\.wav: file not found"):
        model.embed_audio([good, tmp_path / "missing.wav", tmp_path / "also_missing.wav"])


def test_channels_are_averaged_and_pcm_widths_agree(model, tmp_path):
    mono = _tone()
    reference = model.embed_audio([(mono, SR)], dim=8)[0]
    variants = [(_tone(channels=6), SR), _write(tmp_path, "s24.wav", mono, subtype="PCM_24"),
                ((mono * 32767).astype(np.int16), SR)]
    for embedding in model.embed_audio(variants, dim=8):
        assert float(embedding @ reference) > 0.9999


# -- text --------------------------------------------------------------------------------------------------

TEXT_CASES = [
    ("empty_string", "", OK),
    ("ten_thousand_chars", "the quick brown fox jumps over the lazy dog " * 228, OK),
    ("utf8_bytes", "café au lait".encode(), OK),
    ("non_utf8_bytes", b"caf\xe9 \xff\xfe", r"text\[0\]: bytes are not valid UTF-8"),
    ("lone_surrogate", "bad \udcff text", r"text\[0\]: not encodable as UTF-8"),
    ("not_a_string", None, r"text\[0\]: expected str, got NoneType"),
]


@pytest.mark.parametrize("text, expected", [c[1:] for c in TEXT_CASES], ids=[c[0] for c in TEXT_CASES])
def test_text_inputs(model, text, expected):
    if expected is OK:
        (embedding,) = model.embed_text([text], dim=4)
        assert np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-5)
    else:
        with pytest.raises(TextInputError, match=expected):
            model.embed_text([text], dim=4)


def test_long_text_is_truncated_to_the_model_limit(model):
    long_text = "the quick brown fox jumps over the lazy dog " * 228
    assert len(long_text) > 10_000
    assert model.tokenizer.feeds([long_text])["input_ids"].shape == (1, model.spec.text_max_length)
    # Everything past the limit is ignored: the embedding equals that of a text cut well past the limit.
    np.testing.assert_allclose(model.embed_text([long_text]), model.embed_text([long_text[:5000]]), atol=1e-6)


def test_wrong_dim_lists_valid_dims(model):
    with pytest.raises(ValueError, match=r"dim 100 is not one of this model's Matryoshka dims 32, 16, 8, 4"):
        model.embed_audio([(_tone(), SR)], dim=100)


# -- model files -------------------------------------------------------------------------------------------


def _copy_export(tiny_export: Path, target: Path) -> Path:
    """Large files hard-linked, small ones copied; a test replaces a link with a file to tamper with it."""
    target.mkdir()
    for path in tiny_export.iterdir():
        if path.is_file():
            (os.link(path, target / path.name) if path.suffix == ".onnx" else shutil.copy(path, target / path.name))
    return target


def _rename_artifact(old: str, new: str, move_file_to: str | None = None):
    """Make the manifest name ``new`` for ``old``'s entry (and optionally put the file there)."""
    def edit(export: Path):
        manifest = json.loads((export / "manifest.json").read_text())
        manifest["artifacts"][new] = manifest["artifacts"].pop(old)
        if move_file_to is not None:
            destination = (export / move_file_to)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(export / old), destination)
        (export / "manifest.json").write_text(json.dumps(manifest))
    return edit


def _symlink_out(name: str):
    """The listed file is a symlink to an identical file outside the export directory."""
    def edit(export: Path):
        outside = export.parent / f"outside-{name}"
        shutil.move(str(export / name), outside)
        os.symlink(outside, export / name)
    return edit


def _set_recorded_bytes(name: str, value: int):
    def edit(export: Path):
        manifest = json.loads((export / "manifest.json").read_text())
        manifest["artifacts"][name]["bytes"] = value
        (export / "manifest.json").write_text(json.dumps(manifest))
    return edit


def _set_manifest(key, value):
    def edit(export: Path):
        manifest = json.loads((export / "manifest.json").read_text())
        manifest[key] = value
        (export / "manifest.json").write_text(json.dumps(manifest))
    return edit


def _flip_byte(name: str):
    def edit(export: Path):
        payload = bytearray((export / name).read_bytes())
        payload[len(payload) // 2] ^= 0xFF
        (export / name).unlink()
        (export / name).write_bytes(bytes(payload))
    return edit


MODEL_CASES = [
    ("missing_audio_onnx", lambda e: (e / "audio.onnx").unlink(), r"audio\.onnx is missing"),
    ("missing_tokenizer", lambda e: (e / "tokenizer.json").unlink(), r"tokenizer\.json is missing"),
    ("missing_manifest", lambda e: (e / "manifest.json").unlink(), r"manifest\.json is missing"),
    ("tampered_text_onnx", _flip_byte("text.onnx"), r"text\.onnx: sha256 mismatch"),
    ("tampered_tokenizer", _flip_byte("tokenizer.json"), r"tokenizer\.json: sha256 mismatch"),
    ("manifest_of_another_version", _set_manifest("format_version", 2), r"format_version 2 is not supported"),
    ("manifest_of_another_format", _set_manifest("format", "onnx-bundle"), r"'onnx-bundle' is not 'wavlink-edge-export'"),
    ("manifest_not_json", lambda e: (e / "manifest.json").write_text("{"), r"not valid JSON"),
    ("manifest_without_artifacts", _set_manifest("artifacts", None), r"malformed manifest"),
    # a manifest cannot reach outside its directory, and nothing about outside files leaks into errors
    ("artifact_key_with_parent_dir", _rename_artifact("audio.onnx", "../outside/audio.onnx", "../outside/audio.onnx"),
     r"must be plain file names"),
    ("artifact_key_absolute", _rename_artifact("audio.onnx", "/etc/passwd"), r"'/etc/passwd'.*plain file names"),
    ("artifact_symlink_leaving_dir", _symlink_out("audio.onnx"), r"resolves outside the export directory"),
    # the recorded size is checked before a byte is read or hashed
    ("artifact_size_differs", _set_recorded_bytes("text.onnx", 1), r"text\.onnx: \d+ bytes, the manifest records 1"),
]


@pytest.mark.parametrize("edit, expected", [c[1:] for c in MODEL_CASES], ids=[c[0] for c in MODEL_CASES])
def test_bad_model_files_are_refused_clearly(tiny_export, tmp_path, edit, expected):
    export = _copy_export(tiny_export, tmp_path / "export")
    edit(export)
    with pytest.raises(ModelFilesError, match=expected):
        WavLink.from_pretrained(export)


def test_missing_export_directory_says_how_to_make_one(tmp_path):
    with pytest.raises(ModelFilesError, match=r"does not exist.*export/to_onnx\.py"):
        WavLink.from_pretrained(tmp_path / "nowhere")
