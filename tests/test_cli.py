"""The wavlink-edge CLI: exit codes, output order, failed rows kept and named, subcommands."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from wavlink_edge.runtime import WavLink, cli
from wavlink_edge.runtime.outputs import read_rows


@pytest.fixture
def inputs(sample_clips, tmp_path):
    """Good clips with a non-audio file and a missing one in between."""
    junk = tmp_path / "junk.wav"
    junk.write_text("not audio")
    return [str(sample_clips[0]), str(junk), str(sample_clips[1]), str(tmp_path / "missing.flac"), str(sample_clips[2])]


def test_embed_npy_keeps_order_marks_failures_and_exits_1(tiny_export, inputs, tmp_path, capsys):
    out = tmp_path / "emb.npy"
    code = cli.main(["embed", *inputs, "--model", str(tiny_export), "--dim", "8", "--clip-policy", "trim",
                     "--batch-size", "2", "--out", str(out)])
    assert code == 1
    err = capsys.readouterr().err
    assert "failed: " + inputs[1] in err and "not a readable audio file" in err
    assert "failed: " + inputs[3] + ": file not found" in err
    assert "3 ok, 2 failed" in err
    matrix = np.load(out)
    assert matrix.shape == (5, 8)
    assert np.isnan(matrix[[1, 3]]).all() and np.isfinite(matrix[[0, 2, 4]]).all()
    expected = WavLink.from_pretrained(tiny_export, clip_policy="trim").embed_audio(
        [inputs[i] for i in (0, 2, 4)], dim=8)
    np.testing.assert_allclose(matrix[[0, 2, 4]], expected, atol=1e-5)
    rows = read_rows(tmp_path / "emb.npy.sources.jsonl")[1]
    assert [row["source"] for row in rows] == inputs
    assert ["error" not in row for row in rows] == [True, False, True, False, True]
    assert "file not found" in rows[3]["error"]


def test_embed_jsonl_and_npz_name_every_row(tiny_export, inputs, tmp_path, capsys):
    jsonl = tmp_path / "emb.jsonl"
    assert cli.main(["embed", *inputs, "--model", str(tiny_export), "--dim", "4", "--clip-policy", "trim",
                     "--out", str(jsonl)]) == 1
    rows = read_rows(jsonl)[1]
    assert [r["source"] for r in rows] == inputs
    assert ["embedding" in r for r in rows] == [True, False, True, False, True]
    assert len(rows[0]["embedding"]) == 4 and "file not found" in rows[3]["error"]

    npz = tmp_path / "emb.npz"
    assert cli.main(["embed", inputs[0], inputs[3], "--model", str(tiny_export), "--dim", "4",
                     "--clip-policy", "trim", "--out", str(npz)]) == 1
    saved = np.load(npz)
    assert list(saved["sources"]) == [inputs[0], inputs[3]]
    assert saved["errors"][0] == "" and "file not found" in saved["errors"][1]
    assert saved["embeddings"].shape == (2, 4)


def test_embed_all_good_exits_0_and_prints_jsonl_without_out(tiny_export, sample_clips, capsys):
    assert cli.main(["embed", *map(str, sample_clips), "--model", str(tiny_export), "--dim", "4",
                     "--clip-policy", "trim"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["source"] for r in rows] == list(map(str, sample_clips))
    assert "3 ok, 0 failed" in captured.err


def test_embed_text_from_args_and_file(tiny_export, tmp_path, capsys):
    listing = tmp_path / "captions.txt"
    listing.write_text("a phone is ringing\n\na short chime\n", encoding="utf-8")
    out = tmp_path / "text.npy"
    assert cli.main(["embed-text", "a woman speaks", "--file", str(listing), "--model", str(tiny_export),
                     "--dim", "8", "--out", str(out)]) == 0
    matrix = np.load(out)
    texts = ["a woman speaks", "a phone is ringing", "", "a short chime"]
    expected = WavLink.from_pretrained(tiny_export).embed_text(texts, dim=8)
    np.testing.assert_allclose(matrix, expected, atol=1e-5)
    sidecar = read_rows(tmp_path / "text.npy.sources.jsonl")[1]
    assert [row["text"] for row in sidecar] == ["a woman speaks", "a phone is ringing", "", "a short chime"]
    assert "4 ok, 0 failed" in capsys.readouterr().err


def test_embed_text_undecodable_argument_is_a_failed_row(tiny_export, tmp_path, capsys):
    out = tmp_path / "text.jsonl"
    # What Python makes of non-UTF-8 bytes on the command line: lone surrogates.
    assert cli.main(["embed-text", "fine", "bad \udcff", "--model", str(tiny_export), "--out", str(out)]) == 1
    rows = read_rows(out)[1]
    assert "embedding" in rows[0] and "not encodable as UTF-8" in rows[1]["error"]
    assert "1 ok, 1 failed" in capsys.readouterr().err


def test_similarity_prints_one_cosine_per_text(tiny_export, sample_clips, capsys):
    texts = ["a woman speaks", "a phone is ringing"]
    assert cli.main(["similarity", str(sample_clips[2]), *texts, "--model", str(tiny_export)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ", 1)[1] for line in lines] == texts
    model = WavLink.from_pretrained(tiny_export)
    expected = model.similarity(model.embed_audio([sample_clips[2]]), model.embed_text(texts))[0]
    np.testing.assert_allclose([float(line.split()[0]) for line in lines], expected, atol=1e-4)


@pytest.mark.parametrize("args, message", [
    (["embed", "x.wav", "--dim", "100"], "dim 100 is not one of this model's Matryoshka dims 32, 16, 8, 4"),
    (["embed", "x.wav", "--out", "emb.csv"], "unsupported extension"),
    (["embed", "x.wav", "--precision", "int8"], "no audio artifact with precision 'int8'; the manifest has fp32"),
    (["embed-text", "--dim", "4"], "no texts given"),
])
def test_usage_and_model_errors_exit_2(tiny_export, capsys, args, message):
    assert cli.main([*args, "--model", str(tiny_export)]) == 2
    assert message in capsys.readouterr().err


def test_default_model_missing_says_how_to_create_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["embed-text", "hello"]) == 2
    err = capsys.readouterr().err
    assert "no WavLink Edge export at exports/wavlink-base" in err and "python export/to_onnx.py --size base" in err


def test_stage_commands_run_their_module_or_name_the_missing_extra(monkeypatch, capsys, tmp_path):
    """`wavlink-edge export|bench NAME|...` imports the stage module named in wavlink_edge/commands.py and runs
    its main(argv); a missing third-party import is one line naming the extra; a missing module of this
    package is a bug and keeps its traceback."""
    from wavlink_edge import commands

    (tmp_path / "fake_stage_ok.py").write_text(
        "import sys\nSEEN = []\ndef main(argv):\n    SEEN.append((sys.argv[0], argv))\n    return 3\n")
    (tmp_path / "fake_stage_torchless.py").write_text("import no_such_module_xyz  # noqa\n")
    (tmp_path / "fake_stage_broken.py").write_text("import wavlink_edge.no_such_stage  # noqa\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(commands.BENCHMARKS, "latency", commands.StageCommand("fake_stage_ok", "bench", ""))
    monkeypatch.setitem(commands.STAGE_COMMANDS, "export", commands.StageCommand("fake_stage_torchless", "export", ""))
    monkeypatch.setitem(commands.STAGE_COMMANDS, "quantize", commands.StageCommand("fake_stage_broken", "export", ""))
    assert cli.main(["bench", "latency", "--runs", "5"]) == 3
    import fake_stage_ok

    assert fake_stage_ok.SEEN == [("wavlink-edge bench latency", ["--runs", "5"])]
    assert cli.main(["export", "--size", "base"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs the [export] extra" in err and "no_such_module_xyz" in err, err
    with pytest.raises(ModuleNotFoundError):
        cli.main(["quantize"])
    assert cli.main(["bench", "nope"]) == 2
    assert "bench: give one of latency" in capsys.readouterr().err
    assert cli.main(["bench", "--help"]) == 0 and "recall" in capsys.readouterr().out


def test_debug_shows_the_traceback_and_bugs_are_not_one_liners(monkeypatch, capsys, tiny_export):
    """A refusal is one line; `--debug` (or WAVLINK_EDGE_DEBUG=1) raises it; a programming error (here a
    KeyError from inside a command) is never turned into a one-line message."""
    monkeypatch.setenv("WAVLINK_EDGE_DEBUG", "0")  # and undone after the test: --debug sets it to 1
    assert cli.main(["info", "/nonexistent/export"]) == 2
    assert capsys.readouterr().err.startswith("error: no WavLink Edge export at /nonexistent/export")
    with pytest.raises(cli.CliError):
        cli.main(["--debug", "info", "/nonexistent/export"])
    monkeypatch.setenv("WAVLINK_EDGE_DEBUG", "0")

    def bug(args):
        raise KeyError("x")

    monkeypatch.setattr(cli, "cmd_verify", bug)
    with pytest.raises(KeyError):
        cli.main(["verify", str(tiny_export)])


def test_console_entry_point_exit_codes(tiny_export, sample_clips, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "wavlink_edge.runtime.cli", *args], capture_output=True,
                              text=True, timeout=120)

    good = run("embed", str(sample_clips[0]), "--model", str(tiny_export), "--clip-policy", "trim", "--dim", "4",
               "--out", str(tmp_path / "a.npy"))
    assert good.returncode == 0, good.stderr
    bad = run("embed", str(tmp_path / "nope.wav"), "--model", str(tiny_export), "--out", str(tmp_path / "b.npy"))
    assert bad.returncode == 1 and "0 ok, 1 failed" in bad.stderr
    assert run("embed").returncode == 2  # argparse usage error


# -- hardening: names, outputs, interrupts ------------------------------------------------------------


def test_non_utf8_file_names_are_embedded_and_kept_exactly(tiny_export, sample_clips, tmp_path):
    import os
    import shutil

    raw = os.fsencode(tmp_path) + b"/clip-\xff.flac"
    shutil.copy(sample_clips[0], raw)
    name = os.fsdecode(raw)  # what argv gives Python for that name: a lone surrogate
    out = tmp_path / "emb.jsonl"
    assert cli.main(["embed", name, "--model", str(tiny_export), "--dim", "4", "--out", str(out)]) == 0
    (row,) = read_rows(out)[1]
    assert "embedding" in row and os.fsencode(row["source"]) == raw
    npy = tmp_path / "emb.npy"
    assert cli.main(["embed", name, "--model", str(tiny_export), "--dim", "4", "--out", str(npy)]) == 0
    (side,) = read_rows(tmp_path / "emb.npy.sources.jsonl")[1]
    assert os.fsencode(side["source"]) == raw


@pytest.mark.parametrize("out, message", [
    ("missing-dir/emb.jsonl", "does not exist"),
    (".", "is a directory"),
    ("emb.npy --resume", "--resume works with .jsonl"),
])
def test_output_problems_are_found_before_any_work(tiny_export, sample_clips, tmp_path, monkeypatch, capsys, out, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(WavLink, "from_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))
    out, *extra = out.split()
    assert cli.main(["embed", str(sample_clips[0]), "--model", str(tiny_export), "--out", out, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_file_lines_split_on_newlines_only(tiny_export, tmp_path, capsys):
    captions = tmp_path / "captions.txt"
    captions.write_bytes("\ufeffone\x0bwith VT\r\ntwo\u2028same line\n\nfour\x0c\n".encode("utf-8"))
    out = tmp_path / "text.jsonl"
    assert cli.main(["embed-text", "--file", str(captions), "--model", str(tiny_export), "--out", str(out)]) == 0
    rows = [json.loads(line)["text"] for line in out.read_text(encoding="utf-8").splitlines()[1:]]  # any line reader
    assert rows == ["one\x0bwith VT", "two\u2028same line", "", "four\x0c"]


def test_text_batch_size_must_be_positive(tiny_export, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["embed-text", "x", "--batch-size", "0", "--model", str(tiny_export)])
    assert exc.value.code == 2 and "must be >= 1" in capsys.readouterr().err


def test_interrupt_keeps_finished_jsonl_rows_and_resume_completes_them(tiny_export, sample_clips, tmp_path,
                                                                       monkeypatch, capsys):
    paths = [str(p) for p in sample_clips] * 2
    out = tmp_path / "emb.jsonl"
    real = WavLink.iter_embed_audio

    def interrupted(self, items, *args, **kwargs):
        for done, result in enumerate(real(self, items, *args, **kwargs)):
            if done == 2:
                raise KeyboardInterrupt
            yield result

    monkeypatch.setattr(WavLink, "iter_embed_audio", interrupted)
    assert cli.main(["embed", *paths[:4], "--model", str(tiny_export), "--dim", "4", "--out", str(out)]) == 130
    assert "holds the 2 finished rows" in capsys.readouterr().err
    assert [row["source"] for row in read_rows(out)[1]] == paths[:2]
    monkeypatch.setattr(WavLink, "iter_embed_audio", real)
    assert cli.main(["embed", *paths[:4], "--model", str(tiny_export), "--dim", "4", "--out", str(out), "--resume"]) == 0
    assert [row["source"] for row in read_rows(out)[1]] == paths[:3]  # 4th = 1st: done


def test_interrupted_npy_output_leaves_no_file(tiny_export, sample_clips, tmp_path, monkeypatch, capsys):
    out = tmp_path / "emb.npy"
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
        yield

    monkeypatch.setattr(WavLink, "iter_embed_audio", interrupted)
    assert cli.main(["embed", str(sample_clips[0]), "--model", str(tiny_export), "--out", str(out)]) == 130
    assert "nothing was written" in capsys.readouterr().err and list(tmp_path.iterdir()) == []


def test_full_device_is_one_line_exit_2(tiny_export, sample_clips, capsys):
    import os

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    done = subprocess.run([sys.executable, "-m", "wavlink_edge", "embed-text", "x", "--model", str(tiny_export)],
                          stdout=open("/dev/full", "w"), stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "No space left" in done.stderr


def test_one_sample_clips_fail_alone(tiny_export, sample_clips, tmp_path, capsys):
    import soundfile as sf

    tiny = []
    for rate in (44_100, 48_000, 96_000, 192_000):
        path = tmp_path / f"one_sample_{rate}.wav"
        sf.write(path, np.array([0.5], np.float32), rate)
        tiny.append(str(path))
    out = tmp_path / "emb.jsonl"
    assert cli.main(["embed", str(sample_clips[0]), *tiny, str(sample_clips[1]), "--model", str(tiny_export),
                     "--out", str(out)]) == 1
    rows = read_rows(out)[1]
    assert ["embedding" in row for row in rows] == [True, False, False, False, False, True]
    assert all("too short" in row["error"] for row in rows[1:5])


def test_decoder_chatter_does_not_reach_the_terminal(tiny_export, tmp_path):
    """libmpg123 prints resync notes straight to fd 2; the CLI keeps only its own one-line messages."""
    import io

    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32), 16000, format="MP3")

    def run(*extra):
        return subprocess.run([sys.executable, "-m", "wavlink_edge", "embed", str(tmp_path / "corrupt.mp3"),
                               "--model", str(tiny_export), "--out", str(tmp_path / "e.jsonl"), *extra],
                              capture_output=True, text=True, timeout=120)

    for stride in (97, 53, 211, 31):  # damage patterns; keep the first that makes the decoder talk
        payload = bytearray(buffer.getvalue())
        for i in range(200, len(payload), stride):
            payload[i] ^= 0x5A
        (tmp_path / "corrupt.mp3").write_bytes(bytes(payload))
        loud = run("--verbose")
        if "Note:" in loud.stderr or "mpg123" in loud.stderr:
            break
    else:
        pytest.skip("this libsndfile/libmpg123 build prints nothing for these files")
    quiet = run()
    assert "mpg123" not in quiet.stderr and "Note:" not in quiet.stderr
    assert quiet.stderr.strip().endswith(("1 ok, 0 failed -> " + str(tmp_path / "e.jsonl"),
                                          "0 ok, 1 failed -> " + str(tmp_path / "e.jsonl")))
