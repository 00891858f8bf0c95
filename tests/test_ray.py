"""embed --engine ray on a local 2-CPU Ray: the plain path's embeddings, every input once, errors as rows."""
from __future__ import annotations

import numpy as np
import pytest

from wavlink_edge.runtime import WavLink, cli
from wavlink_edge.runtime.ray_pipeline import read_parquet_rows

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'wavlink-edge[ray]')")
pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install 'wavlink-edge[ray]')")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_pipeline_matches_plain_path(local_ray, tiny_export, tmp_path, write_clip, capsys):
    clips = [write_clip(tmp_path / f"c{i}.wav", i, seconds=0.4 + 0.5 * i) for i in range(6)]  # 0.4-2.9 s: 1-3 windows
    junk = tmp_path / "junk.wav"
    junk.write_text("not audio")
    inputs = clips[:2] + [str(junk)] + clips[2:] + [str(tmp_path / "missing.wav"), clips[0]]
    out = tmp_path / "parquet"
    code = cli.main(["embed", *inputs, "--model", str(tiny_export), "--dim", "16", "--batch-size", "3",
                     "--engine", "ray", "--out", str(out)])
    assert code == 1
    err = capsys.readouterr().err
    assert "7 ok, 2 failed" in err and f"failed: {junk}" in err

    rows = read_parquet_rows(out)
    assert [r["index"] for r in rows] == list(range(len(inputs)))  # every input once
    assert [r["source"] for r in rows] == inputs
    assert [r["error"] is None for r in rows] == [True, True, False, True, True, True, True, False, True]
    assert "not a readable audio file" in rows[2]["error"] and "file not found" in rows[7]["error"]
    assert rows[2]["embedding"] is None
    assert {(r["model"], r["dim"], r["precision"]) for r in rows} == {("wavlink-tiny-random", 16, "fp32")}
    plain = WavLink.from_pretrained(tiny_export).embed_audio([s for s, r in zip(inputs, rows) if r["error"] is None],
                                                             dim=16)
    got = np.array([r["embedding"] for r in rows if r["error"] is None], np.float32)
    assert np.abs(got - plain).max() <= 1e-6


def test_ray_output_checks(tiny_export, tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert cli.main(["embed", "a.wav", "--model", str(tiny_export), "--engine", "ray", "--out", str(tmp_path / "full")]) == 2
    assert "must be a new or empty directory" in capsys.readouterr().err
    assert cli.main(["embed", "a.wav", "--model", str(tiny_export), "--engine", "ray"]) == 2
    assert "give --out DIR" in capsys.readouterr().err
    assert cli.main(["embed", "a.wav", "--model", str(tmp_path), "--engine", "ray", "--out", str(tmp_path / "o")]) == 2
    assert "manifest" in capsys.readouterr().err
    assert cli.main(["embed", "a.wav", "--model", str(tiny_export), "--dim", "5", "--engine", "ray",
                     "--out", str(tmp_path / "o")]) == 2
    assert "not one of this model's Matryoshka dims" in capsys.readouterr().err
