"""The wavlink-edge CLI: exit codes, output order, failed rows kept and named, subcommands."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from wavlink_edge.runtime import WavLink
from wavlink_edge.runtime import cli


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
    lines = (tmp_path / "emb.npy.sources.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == inputs
    assert [line.split("\t")[1] == "ok" for line in lines] == [True, False, True, False, True]
    assert "file not found" in lines[3]


def test_embed_jsonl_and_npz_name_every_row(tiny_export, inputs, tmp_path, capsys):
    jsonl = tmp_path / "emb.jsonl"
    assert cli.main(["embed", *inputs, "--model", str(tiny_export), "--dim", "4", "--clip-policy", "trim",
                     "--out", str(jsonl)]) == 1
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
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
    assert [line.split("\t")[0] for line in (tmp_path / "text.npy.sources.txt").read_text().splitlines()] == \
        ["a woman speaks", "a phone is ringing", "", "a short chime"]
    assert "4 ok, 0 failed" in capsys.readouterr().err


def test_embed_text_undecodable_argument_is_a_failed_row(tiny_export, tmp_path, capsys):
    out = tmp_path / "text.jsonl"
    # What Python makes of non-UTF-8 bytes on the command line: lone surrogates.
    assert cli.main(["embed-text", "fine", "bad \udcff", "--model", str(tiny_export), "--out", str(out)]) == 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
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


def test_bench_forwards_arguments_or_explains_what_is_missing(tmp_path, monkeypatch, capsys):
    (tmp_path / "fake_latency_bench.py").write_text(
        "import sys, pathlib\npathlib.Path(sys.argv[1]).write_text(' '.join(sys.argv[2:]))\nsys.exit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.BENCH_MODULES, "latency", "fake_latency_bench")
    record = tmp_path / "argv.txt"
    assert cli.main(["bench", "latency", str(record), "--runs", "5"]) == 3
    assert record.read_text() == "--runs 5"
    monkeypatch.setitem(cli.BENCH_MODULES, "recall", "wavlink_edge.bench.no_such_module")
    assert cli.main(["bench", "recall"]) == 2
    assert "wavlink_edge.bench.no_such_module is not installed" in capsys.readouterr().err


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
