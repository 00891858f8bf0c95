"""The vector index: build, incremental add/change/remove, search by text and audio, Matryoshka re-rank,
refusal of another model's queries, damage detection, interrupts, and the CLI commands."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from wavlink_edge.runtime import WavLink, cli
from wavlink_edge.runtime.index import IndexFileError, WavLinkIndex

pytest.importorskip("faiss", reason="the index extra (faiss-cpu) is not installed")


@pytest.fixture
def library(tmp_path, write_clip):
    folder = tmp_path / "library"
    folder.mkdir()
    clips = [write_clip(folder / f"clip{i:02d}.wav", i) for i in range(8)]
    (folder / "notes.txt").write_text("not audio, not an audio suffix: skipped")
    return folder, clips


@pytest.fixture(scope="module")
def model(tiny_export):
    return WavLink.from_pretrained(tiny_export)


def test_build_search_and_reopen(model, library, tmp_path):
    folder, clips = library
    index = WavLinkIndex.create(tmp_path / "idx", model)
    report = index.update(model, [folder])
    assert (report.added, report.failed, len(index)) == (8, [], 8)
    reopened = WavLinkIndex.open(tmp_path / "idx")
    np.testing.assert_array_equal(reopened.vectors, model.embed_audio(clips))
    assert [e["source"] for e in reopened.entries] == clips
    for clip in (clips[3], clips[6]):
        hits = reopened.search_audio(model, [clip], k=3)[0]
        assert hits[0].source == clip and hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    text_hits = reopened.search_text(model, ["a dog barking", "rain"], k=20)
    assert [len(h) for h in text_hits] == [8, 8]  # k above the count returns everything, once
    assert sorted(h.source for h in text_hits[0]) == sorted(clips)


def test_incremental_update_adds_changes_and_removes_only_what_moved(model, library, tmp_path, write_clip):
    folder, clips = library
    index = WavLinkIndex.create(tmp_path / "idx", model)
    index.update(model, [folder])
    before = dict(zip(clips, index.vectors))

    calls = []

    def counting_embed(items):
        calls.append(list(items))
        for r in model.iter_embed_audio(items):
            yield r.source, r.embedding, r.error

    index = WavLinkIndex.open(tmp_path / "idx")
    report = index.update(model, [folder], embed=counting_embed)
    assert (report.added, report.changed, report.removed, report.unchanged) == (0, 0, 0, 8) and calls == [[]]

    write_clip(clips[2], 40, seconds=0.9)  # new content, new size
    os.remove(clips[5])
    new = write_clip(folder / "clip99.wav", 99)
    calls.clear()
    report = WavLinkIndex.open(tmp_path / "idx").update(model, [folder], embed=counting_embed)
    assert (report.added, report.changed, report.removed, report.unchanged) == (1, 1, 1, 6)
    assert sorted(calls[0]) == sorted([clips[2], new])
    index = WavLinkIndex.open(tmp_path / "idx")
    rows = {e["source"]: v for e, v in zip(index.entries, index.vectors)}
    assert sorted(rows) == sorted(set(clips) - {clips[5]} | {new})
    for clip in set(clips) - {clips[2], clips[5]}:
        np.testing.assert_array_equal(rows[clip], before[clip])
    np.testing.assert_allclose(rows[clips[2]], model.embed_audio([clips[2]])[0], atol=1e-6)
    assert not np.allclose(rows[clips[2]], before[clips[2]])
    assert index.search_audio(model, [clips[2]], k=1)[0][0].source == clips[2]  # the rebuilt graph has it
    assert index.search_audio(model, [new], k=1)[0][0].source == new


def test_matryoshka_graph_with_full_width_rerank_matches_exact(model, library, tmp_path):
    folder, clips = library
    index = WavLinkIndex.create(tmp_path / "idx", model, search_dim=8)
    index.update(model, [folder])
    assert index.search_dim == 8 and index.vectors.shape == (8, 32)
    queries = model.embed_text(["a dog", "a bell", "speech", "noise"])
    ann = index.search_vectors(queries, k=5)
    exact = index.search_vectors(queries, k=5, exact=True)
    assert [[h.row for h in q] for q in ann] == [[h.row for h in q] for q in exact]
    # scores are full-width cosines, not the graph's 8-dim ones
    np.testing.assert_allclose([h.score for h in ann[0]], (index.vectors @ queries[0])[[h.row for h in ann[0]]],
                               atol=1e-5)


def test_refuses_queries_from_another_model(model, library, tmp_path, tiny_export):
    folder, _ = library
    WavLinkIndex.create(tmp_path / "idx", model).update(model, [folder])
    index = WavLinkIndex.open(tmp_path / "idx")
    other = WavLink.from_pretrained(tiny_export, clip_policy="pad")  # same weights, other input policy: other vectors
    with pytest.raises(IndexFileError, match="built with wavlink-tiny-random .*not comparable"):
        index.search_text(other, "a dog")
    with pytest.raises(IndexFileError, match="not comparable"):
        index.update(other, [folder])
    copy = tmp_path / "retrained"
    shutil.copytree(tiny_export, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["model"]["name"] = "someone-else"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFileError, match="query model is someone-else"):
        index.search_text(WavLink.from_pretrained(copy), "a dog")


def test_damaged_or_foreign_index_is_refused(model, library, tmp_path):
    folder, _ = library
    WavLinkIndex.create(tmp_path / "idx", model).update(model, [folder])
    data = bytearray((tmp_path / "idx" / "vectors.npy").read_bytes())
    data[-3] ^= 0x40
    (tmp_path / "idx" / "vectors.npy").write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match="vectors.npy: sha256 differs"):
        WavLinkIndex.open(tmp_path / "idx")
    with pytest.raises(IndexFileError, match="not a wavlink-edge index"):
        WavLinkIndex.open(tmp_path)


def test_interrupt_keeps_what_was_embedded(model, library, tmp_path):
    folder, clips = library

    def interrupted(items):
        for n, r in enumerate(model.iter_embed_audio(items)):
            if n == 3:
                raise KeyboardInterrupt
            yield r.source, r.embedding, r.error

    with pytest.raises(KeyboardInterrupt):
        WavLinkIndex.create(tmp_path / "idx", model).update(model, [folder], embed=interrupted)
    assert len(WavLinkIndex.open(tmp_path / "idx")) == 3
    report = WavLinkIndex.open(tmp_path / "idx").update(model, [folder])
    assert (report.added, report.unchanged) == (5, 3)


def test_cli_index_and_search(tiny_export, library, tmp_path, capsys):
    folder, clips = library
    junk = folder / "junk.wav"
    junk.write_text("not audio")
    out = tmp_path / "idx"
    assert cli.main(["index", str(folder), "--model", str(tiny_export), "--out", str(out), "--dim", "16",
                     "--workers", "2", "--batch-size", "3"]) == 1
    err = capsys.readouterr().err
    assert f"failed: {junk}" in err and "8 files (8 added" in err and "1 failed" in err
    junk.unlink()
    assert cli.main(["index", str(folder), "--model", str(tiny_export), "--out", str(out)]) == 0
    assert "0 added, 0 changed, 0 removed, 8 unchanged" in capsys.readouterr().err

    assert cli.main(["search", str(out), "--audio", clips[4], "-k", "2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["hits"][0]["source"] == clips[4] and len(doc["hits"]) == 2
    assert cli.main(["search", str(out), "a dog barking", "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(line.split("  ", 1)[1] in clips for line in lines)
    assert cli.main(["search", str(out)]) == 2
    assert "give a text query or --audio FILE" in capsys.readouterr().err
    assert cli.main(["search", str(out), "x", "--precision", "fp16"]) == 2  # tiny export has no fp16: one line
    assert cli.main(["index", str(folder), "--model", str(tiny_export), "--out", str(out), "--clip-policy", "pad"]) == 2
    assert "not comparable" in capsys.readouterr().err


def test_cli_search_with_another_export_is_refused(tiny_export, library, tmp_path, capsys):
    folder, _ = library
    out = tmp_path / "idx"
    assert cli.main(["index", str(folder), "--model", str(tiny_export), "--out", str(out)]) == 0
    meta = json.loads((out / "index.json").read_text())
    meta["model"]["window_hop_seconds"] = 30.0  # as a base-model index records it: the tiny model cannot take it
    meta["model"]["name"] = "wavlink-base-demo"
    (out / "index.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert cli.main(["search", str(out), "a dog", "--model", str(tiny_export)]) == 2
    assert "built with wavlink-base-demo" in capsys.readouterr().err
