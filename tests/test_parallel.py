"""embed --workers: N processes give the rows one worker gives, in input order, every input once."""
from __future__ import annotations

import numpy as np
import pytest

from wavlink_edge.runtime import cli
from wavlink_edge.runtime.outputs import read_rows
from wavlink_edge.runtime.parallel import embed_parallel, threads_per_worker


@pytest.fixture
def inputs(tmp_path, write_clip):
    clips = [write_clip(tmp_path / f"c{i}.wav", i, seconds=0.3 + 0.25 * i) for i in range(7)]
    junk = tmp_path / "junk.wav"
    junk.write_text("not audio")
    return clips[:3] + [str(junk)] + clips[3:] + [str(tmp_path / "missing.flac")]


def test_two_workers_match_one(tiny_export, inputs):
    one = list(embed_parallel(tiny_export, inputs, workers=1, batch_size=2))
    two = list(embed_parallel(tiny_export, inputs, workers=2, batch_size=2))
    assert [r[0] for r in two] == [r[0] for r in one] == inputs
    assert [r[2] is None for r in two] == [r[2] is None for r in one] == [True] * 3 + [False] + [True] * 4 + [False]
    assert "not a readable audio file" in two[3][2] and "file not found" in two[-1][2]
    for (_, a, _), (_, b, _) in zip(one, two):
        if a is not None:
            np.testing.assert_allclose(a, b, atol=1e-6)
    arrays = [(np.sin(np.arange(8000 + 1000 * i) / (3 + i)).astype(np.float32), 16000) for i in range(5)]
    arrays[3] = (np.zeros(0, np.float32), 16000)
    rows = list(embed_parallel(tiny_export, arrays, workers=2, batch_size=2))
    assert [r[0].split(" ")[0] for r in rows] == [f"array[{i}]" for i in range(5)]
    assert rows[3][2].startswith("array[3] ")


def test_cli_workers_rows_equal_one_worker(tiny_export, inputs, tmp_path, capsys):
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}.jsonl"
        assert cli.main(["embed", *inputs, "--model", str(tiny_export), "--batch-size", "2", "--dim", "16",
                         "--workers", str(workers), "--out", str(out)]) == 1
        assert "7 ok, 2 failed" in capsys.readouterr().err
        outs.append(read_rows(out)[1])
    assert [r["source"] for r in outs[1]] == inputs
    for a, b in zip(*outs):
        assert a.keys() == b.keys()
        if "embedding" in a:
            np.testing.assert_allclose(a["embedding"], b["embedding"], atol=1e-6)


def test_thread_share_and_bad_counts():
    assert threads_per_worker(1) >= 1 and threads_per_worker(10_000) == 1
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        list(embed_parallel("unused", ["x"], workers=0))
    with pytest.raises(SystemExit, match="2"):
        cli.main(["embed", "x.wav", "--workers", "0"])


def test_resume_with_workers_embeds_only_the_rest(tiny_export, inputs, tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    good = [p for p in inputs if p.endswith(".wav") and "junk" not in p][:6]
    assert cli.main(["embed", *good[:2], "--model", str(tiny_export), "--out", str(out)]) == 0
    assert cli.main(["embed", *good, "--model", str(tiny_export), "--out", str(out), "--resume",
                     "--workers", "2", "--batch-size", "2"]) == 0
    assert "--resume: 2 sources already" in capsys.readouterr().err
    assert [row["source"] for row in read_rows(out)[1]] == good
