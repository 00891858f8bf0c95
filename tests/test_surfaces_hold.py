"""Issue 27: the surfaces added beside the last hardening (--resume on files the package did not write, the
output lock, the index, --workers, the Ray engine, parallel exports, lyrics) hold like the old ones.

Each failure class and weak spot of the issue is one test here. Races run in two real processes; a crash
is a real SIGKILL at a point the code announces (runtime/files.py `hold_point`: the process writes its pid
to a file and sleeps there), never on a timer; non-UTF-8 names are made with bytes paths."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from wavlink_edge.runtime import ModelFilesError, WavLink, cli
from wavlink_edge.runtime.files import HOLD_AT, HOLD_FILE
from wavlink_edge.runtime.outputs import exclusive_lock, read_rows

ROOT = Path(__file__).resolve().parent.parent
BAD_NAME = b"bad\xff\xfename.wav"  # not valid UTF-8


def lines(err: str) -> list[str]:
    """stderr's lines but the tiny export's expected "untrained heads" warning."""
    return [line for line in err.strip().splitlines() if "untrained heads" not in line]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def cli_process(*argv, hold_at: str | None = None, hold_file: Path | None = None) -> subprocess.Popen:
    env = dict(os.environ)
    if hold_at:
        env.update({HOLD_AT: hold_at, HOLD_FILE: str(hold_file)})
    return subprocess.Popen([sys.executable, "-m", "wavlink_edge", *map(str, argv)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_hold(hold_file: Path, process: subprocess.Popen, timeout: float = 120) -> int:
    """The pid a process wrote when it reached its hold point (it sleeps there until killed)."""
    deadline = time.monotonic() + timeout
    while not hold_file.exists():
        if process.poll() is not None:
            raise AssertionError(f"exited {process.returncode} before its hold point: {process.stderr.read()}")
        assert time.monotonic() < deadline, "hold point never reached"
        time.sleep(0.05)
    return int(hold_file.read_text())


@pytest.fixture
def clips(tmp_path, write_clip) -> list[str]:
    folder = tmp_path / "clips"
    folder.mkdir()
    return [write_clip(folder / f"c{i:02d}.wav", i, seconds=0.4) for i in range(6)]


# -- 1. --resume never modifies a file it did not write --------------------------------------------------

@pytest.mark.parametrize("content", [b'{"note": "mine"}\n{"note": "last line, no newline"}', b'{"a": 1}',
                                     b"plain text, not JSON\nsecond line"])
def test_resume_refuses_a_users_file_untouched(tiny_export, clips, tmp_path, capsys, content):
    notes = tmp_path / "notes.jsonl"
    notes.write_bytes(content)
    code, _, err = run(capsys, "embed", *clips, "--model", tiny_export, "--out", notes, "--resume")
    assert code == 2 and notes.read_bytes() == content
    assert len(lines(err)) == 1 and str(notes) in err
    assert "no wavlink-edge header" in err or "not a JSON row" in err


def test_resume_still_repairs_its_own_cut_row(tiny_export, clips, tmp_path, capsys):
    out = tmp_path / "emb.jsonl"
    assert run(capsys, "embed", *clips[:3], "--model", tiny_export, "--out", out)[0] == 0
    data = out.read_bytes()
    out.write_bytes(data[:-40])  # the last row cut, as by a kill
    code, _, err = run(capsys, "embed", *clips, "--model", tiny_export, "--out", out, "--resume")
    assert code == 0 and "partial row was removed" in err
    assert [r["source"] for r in read_rows(out)[1]] == clips


# -- 2. one lock per file, whatever its name --------------------------------------------------------------

HOLD_LOCK = """
import sys
from pathlib import Path
from wavlink_edge.runtime.outputs import exclusive_lock
with exclusive_lock(Path(sys.argv[1]), sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_two_names_of_one_output_share_its_lock(tiny_export, clips, tmp_path, capsys, link):
    out = tmp_path / "emb.jsonl"
    assert run(capsys, "embed", *clips[:2], "--model", tiny_export, "--out", out)[0] == 0
    before = out.read_bytes()
    other = tmp_path / "other-name.jsonl"
    (os.symlink if link == "symlink" else os.link)(out, other)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = run(capsys, "embed", *clips, "--model", tiny_export, "--out", other, "--resume")
        assert code == 2 and "another wavlink-edge run is writing" in err and len(lines(err)) == 1
        assert out.read_bytes() == before
    finally:
        holder.communicate("", timeout=60)
    # The other way round: the holder writes through the link, the plain name is refused.
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(other)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert run(capsys, "embed", *clips, "--model", tiny_export, "--out", out, "--resume")[0] == 2
    finally:
        holder.communicate("", timeout=60)
    assert run(capsys, "embed", *clips, "--model", tiny_export, "--out", other, "--resume")[0] == 0
    assert [r["source"] for r in read_rows(out)[1]] == clips


# -- 3. the index: one writer, crash-safe, edits seen, rebuildable -----------------------------------------

try:
    import faiss  # noqa: F401
    HAVE_FAISS = True
except ImportError:
    HAVE_FAISS = False
faiss_needed = pytest.mark.skipif(not HAVE_FAISS, reason="the index extra (faiss-cpu) is not installed")


@faiss_needed
def test_index_one_writer_and_a_killed_run_keeps_its_vectors(tiny_export, tmp_path, write_clip, capsys):
    folder = tmp_path / "lib"
    folder.mkdir()
    clips = [write_clip(folder / f"c{i:02d}.wav", i, seconds=0.3) for i in range(12)]
    idx, hold = tmp_path / "lib.idx", tmp_path / "held"
    # The first writer checkpoints its first batch (of 4), then is SIGKILLed there, holding the lock.
    first = cli_process("index", folder, "--model", tiny_export, "--out", idx, "--batch-size", "4",
                        hold_at="index-checkpoint", hold_file=hold)
    pid = wait_for_hold(hold, first)
    try:
        code, _, err = run(capsys, "index", folder, "--model", tiny_export, "--out", idx)
        assert code == 2 and "another wavlink-edge run is writing the index" in err
        assert len(lines(err)) == 1
    finally:
        os.kill(pid, signal.SIGKILL)
        first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL
    assert not (idx / "index.json").exists()  # killed before any save: only the checkpoint is there
    code, _, err = run(capsys, "index", folder, "--model", tiny_export, "--out", idx, "--batch-size", "4")
    assert code == 0 and "12 files (12 added" in err
    reused = int(err.split(" reused from a killed run")[0].rsplit(", ", 1)[1])
    assert reused >= 4  # at least the checkpointed batch was not embedded again
    assert not (idx / "checkpoint.jsonl").exists()
    from wavlink_edge.runtime.index import WavLinkIndex

    index = WavLinkIndex.open(idx)
    model = WavLink.from_pretrained(tiny_export)
    by_source = dict(zip((e["source"] for e in index.entries), index.vectors))
    np.testing.assert_allclose(np.stack([by_source[c] for c in clips]), model.embed_audio(clips), atol=1e-6)


@faiss_needed
def test_index_wait_takes_its_turn(tiny_export, tmp_path, write_clip):
    folder_a, folder_b = tmp_path / "a", tmp_path / "b"
    folder_a.mkdir(), folder_b.mkdir()
    a = [write_clip(folder_a / f"a{i}.wav", i, seconds=0.3) for i in range(5)]
    b = [write_clip(folder_b / f"b{i}.wav", 20 + i, seconds=0.3) for i in range(5)]
    idx, hold = tmp_path / "shared.idx", tmp_path / "held"
    first = cli_process("index", folder_a, "--model", tiny_export, "--out", idx, "--batch-size", "2",
                        hold_at="index-checkpoint", hold_file=hold)
    pid = wait_for_hold(hold, first)
    waiter = cli_process("index", folder_b, "--model", tiny_export, "--out", idx, "--wait")
    time.sleep(3)
    assert waiter.poll() is None, waiter.communicate()  # waiting for the lock, not refused
    os.kill(pid, signal.SIGKILL)
    first.wait(timeout=60)
    _, err = waiter.communicate(timeout=300)
    assert waiter.returncode == 0, err
    # The waiter used the killed run's checkpoint too: both folders' files end up indexed once, none lost.
    from wavlink_edge.runtime.index import WavLinkIndex

    sources = [e["source"] for e in WavLinkIndex.open(idx).entries]
    assert sorted(sources) == sorted(b) or set(b) <= set(sources)
    code = subprocess.run([sys.executable, "-m", "wavlink_edge", "index", str(folder_a), str(folder_b), "--model",
                           str(tiny_export), "--out", str(idx)], cwd=ROOT, capture_output=True, text=True)
    assert code.returncode == 0, code.stderr
    assert sorted(e["source"] for e in WavLinkIndex.open(idx).entries) == sorted(a + b)


@faiss_needed
def test_an_edit_keeping_size_and_mtime_is_seen(tiny_export, tmp_path, write_clip, capsys):
    folder = tmp_path / "lib"
    folder.mkdir()
    clips = [write_clip(folder / f"c{i}.wav", i, seconds=0.5) for i in range(3)]
    idx = tmp_path / "idx"
    assert run(capsys, "index", folder, "--model", tiny_export, "--out", idx)[0] == 0
    status = os.stat(clips[1])
    original = Path(clips[1]).read_bytes()
    write_clip(clips[1], 99, seconds=0.5)  # other sound, same length
    assert os.path.getsize(clips[1]) == status.st_size and Path(clips[1]).read_bytes() != original
    os.utime(clips[1], ns=(status.st_atime_ns, status.st_mtime_ns))  # mtime set back
    assert os.stat(clips[1]).st_mtime_ns == status.st_mtime_ns
    code, _, err = run(capsys, "index", folder, "--model", tiny_export, "--out", idx)
    assert code == 0 and "1 changed" in err and "2 unchanged" in err
    from wavlink_edge.runtime.index import WavLinkIndex

    index = WavLinkIndex.open(idx)
    row = [e["source"] for e in index.entries].index(clips[1])
    np.testing.assert_allclose(index.vectors[row], WavLink.from_pretrained(tiny_export).embed_audio([clips[1]])[0],
                               atol=1e-6)


@faiss_needed
def test_a_damaged_index_names_rebuild_and_rebuild_repairs_it(tiny_export, clips, tmp_path, capsys):
    folder, idx = Path(clips[0]).parent, tmp_path / "idx"
    assert run(capsys, "index", folder, "--model", tiny_export, "--out", idx)[0] == 0
    data = bytearray((idx / "vectors.npy").read_bytes())
    data[-3] ^= 0xFF
    (idx / "vectors.npy").write_bytes(bytes(data))
    for argv in (("search", idx, "a dog"), ("index", folder, "--model", tiny_export, "--out", idx)):
        code, _, err = run(capsys, *argv)
        assert code == 2 and "--rebuild" in err and len(lines(err)) == 1
    code, _, err = run(capsys, "index", folder, "--model", tiny_export, "--out", idx, "--rebuild")
    assert code == 0 and f"{len(clips)} files ({len(clips)} added" in err
    code, out, _ = run(capsys, "search", idx, "--audio", clips[2], "-k", "1")
    assert code == 0 and clips[2] in out


def test_index_without_faiss_fails_before_embedding_with_the_right_advice(tiny_export, clips, tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss raises ImportError
    loaded = []
    monkeypatch.setattr(WavLink, "from_pretrained", classmethod(lambda cls, *a, **k: loaded.append(1)))
    code, _, err = run(capsys, "index", Path(clips[0]).parent, "--model", tiny_export, "--out", tmp_path / "idx")
    assert code == 2 and "pip install 'wavlink-edge[index]'" in err and "--exact" not in err
    assert loaded == [] and not (tmp_path / "idx").exists()


# -- 4. file names that are not UTF-8 ----------------------------------------------------------------------

def _bad_name_folder(tmp_path: Path, write_clip) -> tuple[Path, list[str], bytes]:
    folder = tmp_path / "names"
    folder.mkdir()
    good = [write_clip(folder / f"g{i}.wav", i, seconds=0.4) for i in range(2)]
    bad = os.path.join(os.fsencode(folder), BAD_NAME)
    os.rename(os.fsencode(write_clip(folder / "tmp.wav", 7, seconds=0.4)), bad)  # named through bytes
    assert BAD_NAME in os.listdir(os.fsencode(folder))
    return folder, good, bad


@faiss_needed
def test_a_non_utf8_name_is_indexed_searched_and_reindexed(tiny_export, tmp_path, write_clip, capsys):
    folder, good, bad = _bad_name_folder(tmp_path, write_clip)
    idx = tmp_path / "idx"
    code, _, err = run(capsys, "index", folder, "--model", tiny_export, "--out", idx)
    assert code == 0 and "3 files (3 added" in err
    (idx / "entries.jsonl").read_bytes().decode("utf-8")  # the file stays valid UTF-8
    code, out, _ = run(capsys, "search", idx, "a tone", "--json")
    assert code == 0
    sources = [os.fsencode(h["source"]) for h in json.loads(out)["hits"]]  # lossless: the bytes come back
    assert sorted(sources) == sorted([bad, *map(os.fsencode, good)])
    code, out, _ = run(capsys, "search", idx, "--audio", os.fsdecode(bad), "-k", "1")
    assert code == 0 and "\\xff\\xfe" in out
    code, _, err = run(capsys, "index", folder, "--model", tiny_export, "--out", idx)
    assert code == 0 and "3 unchanged" in err


def test_a_non_utf8_name_round_trips_through_json_outputs(tiny_export, tmp_path, write_clip, capsys):
    folder, good, bad = _bad_name_folder(tmp_path, write_clip)
    out = tmp_path / "emb.jsonl"
    code, _, err = run(capsys, "embed", folder, "--model", tiny_export, "--out", out)
    assert code == 0 and "3 ok" in err
    out.read_bytes().decode("utf-8")
    assert sorted(os.fsencode(r["source"]) for r in read_rows(out)[1]) == sorted([bad, *map(os.fsencode, good)])
    assert run(capsys, "embed", folder, "--model", tiny_export, "--out", out, "--resume")[0] == 0


def test_a_non_utf8_name_is_one_row_in_the_ray_engine(tiny_export, tmp_path, write_clip, capsys):
    ray = pytest.importorskip("ray")
    pytest.importorskip("pyarrow")
    from wavlink_edge.runtime.ray_pipeline import read_parquet_rows

    folder, good, bad = _bad_name_folder(tmp_path, write_clip)
    missing = os.fsdecode(os.path.join(os.fsencode(folder), b"gone\xff.wav"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    capsys.readouterr()  # Ray's start-up logging went to whatever handler an earlier cli.main left on the root logger
    try:
        code, _, err = run(capsys, "embed", folder, missing, "--model", tiny_export, "--engine", "ray",
                           "--out", tmp_path / "parquet")
    finally:
        ray.shutdown()
    assert code == 1 and "3 ok, 1 failed" in err
    rows = read_parquet_rows(tmp_path / "parquet")
    assert [r["source_bytes"] for r in rows] == [bad, *map(os.fsencode, good), os.fsencode(missing)]
    assert rows[0]["error"] is None and "\\xff" in rows[0]["source"]
    assert "file not found" in rows[3]["error"]


# -- 5. a killed worker ------------------------------------------------------------------------------------

def test_a_killed_worker_is_an_error_naming_its_inputs_and_the_run_finishes(tiny_export, tmp_path, write_clip):
    clips = [write_clip(tmp_path / f"w{i}.wav", i, seconds=0.3) for i in range(8)]
    out, hold = tmp_path / "emb.jsonl", tmp_path / "held"
    run_ = cli_process("embed", *clips, "--model", tiny_export, "--workers", "2", "--batch-size", "2",
                       "--out", out, hold_at="worker-chunk", hold_file=hold)
    pid = wait_for_hold(hold, run_)
    os.kill(pid, signal.SIGKILL)  # as the out-of-memory killer would
    _, err = run_.communicate(timeout=300)
    assert run_.returncode == 1, err
    assert "Traceback" not in err and f"worker process {pid} killed by SIGKILL" in err
    rows = read_rows(out)[1]
    assert [r["source"] for r in rows] == clips  # every input once, in order
    failed = [r["source"] for r in rows if "error" in r]
    assert len(failed) == 2 and all(name in err for name in failed)
    assert all("worker process" in r["error"] for r in rows if "error" in r)
    assert "6 ok, 2 failed" in err
    assert not (tmp_path / ".emb.jsonl.lock").exists()  # the lock released


def test_workers_are_capped_by_cores_and_memory(tiny_export, tmp_path, write_clip, capsys, monkeypatch):
    from wavlink_edge.runtime import parallel

    clips = [write_clip(tmp_path / f"c{i}.wav", i, seconds=0.3) for i in range(4)]
    notes = []
    assert parallel.cap_workers(64, tiny_export, notify=notes.append) == parallel.host_cores()
    assert notes and "--workers 64 capped at" in notes[0] and "core" in notes[0]
    monkeypatch.setattr(parallel, "available_memory", lambda: parallel.worker_bytes(tiny_export, "fp32") * 3 // 2)
    notes.clear()
    assert parallel.cap_workers(64, tiny_export, notify=notes.append) == 1
    assert "GB of memory available" in notes[0]
    monkeypatch.undo()
    code, _, err = run(capsys, "embed", *clips, "--model", tiny_export, "--workers", "64", "--batch-size", "1",
                       "--out", tmp_path / "e.jsonl")
    assert code == 0 and "--workers 64 capped at" in err and "4 ok" in err


# -- 6. parallel exports -----------------------------------------------------------------------------------

HOLD_BUILD = """
import sys
from pathlib import Path
from wavlink_edge.export.to_onnx import exclusive_output
try:
    with exclusive_output(Path(sys.argv[1])) as building:
        print(building, flush=True)
        sys.stdin.read()
        raise SystemExit(0)
except SystemExit:
    pass
"""


def test_a_glob_named_export_leaves_a_concurrent_exports_build_alone(tmp_path):
    pytest.importorskip("torch")
    from wavlink_edge.export.to_onnx import exclusive_output, stale_builds

    holder = subprocess.Popen([sys.executable, "-c", HOLD_BUILD, str(tmp_path / "exp1")], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        live = Path(holder.stdout.readline().strip())
        assert live.is_dir() and live.name.startswith(".exp1.building-")
        assert stale_builds(tmp_path / "exp[1]") == []
        with pytest.raises(RuntimeError, match="abandon"):
            with exclusive_output(tmp_path / "exp[1]"):
                raise RuntimeError("abandon")  # the cleanup ran on entry; the build is dropped
        assert live.is_dir(), "the concurrent export's live build directory was deleted"
    finally:
        holder.communicate("", timeout=60)
    stale = tmp_path / ".exp1.building-old"
    stale.mkdir()
    assert stale_builds(tmp_path / "exp1") == [stale]  # its own leftovers are still cleaned


# -- 7. the weak spots: one clear line or correct behaviour ------------------------------------------------

def test_from_list_lines_are_never_dropped_silently(tiny_export, tmp_path, write_clip, capsys):
    folder = tmp_path / "sub"
    folder.mkdir()
    a = write_clip(tmp_path / "a.wav", 1)
    inner = write_clip(folder / "inner.flac", 2)
    (tmp_path / "README").write_text("no extension")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{a} \n{folder}\n{tmp_path / 'README'}\n")
    code, _, err = run(capsys, "embed", "--from-list", listing, "--model", tiny_export, "--out", tmp_path / "e.jsonl")
    assert code == 0 and "2 ok" in err
    assert f"using {a!r}" in err and "1 line skipped" in err and "README" in err
    assert [r["source"] for r in read_rows(tmp_path / "e.jsonl")[1]] == [a, inner]


def test_a_truncated_opus_webm_is_an_error(tmp_path):
    av = pytest.importorskip("av")
    from wavlink_edge.runtime.audio import decode_audio
    from wavlink_edge.runtime.errors import AudioInputError

    path = tmp_path / "clip.webm"
    with av.open(str(path), "w", format="webm") as container:
        stream = container.add_stream("libopus", rate=48000)
        stream.layout = "mono"
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(48000 * 2) / 48000)).astype(np.float32)[None]
        for start in range(0, tone.shape[1], 960):
            frame = av.AudioFrame.from_ndarray(tone[:, start:start + 960], format="flt", layout="mono")
            frame.sample_rate = 48000
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    assert decode_audio(path).size == 32000
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 7):
        half = tmp_path / f"cut{cut}.webm"
        half.write_bytes(data[:cut])
        with pytest.raises(AudioInputError, match="truncated file"):
            decode_audio(half)


def _copy_export(tiny_export: Path, tmp_path: Path) -> Path:
    export = tmp_path / "export"
    shutil.copytree(tiny_export, export, ignore=shutil.ignore_patterns(".verified.json"))
    return export


def test_info_reports_a_missing_or_tampered_graph_as_not_loadable(tiny_export, tmp_path, capsys):
    export = _copy_export(tiny_export, tmp_path)
    code, out, _ = run(capsys, "info", export)
    assert code == 0 and "--precision fp32: audio.onnx + text.onnx" in out
    data = bytearray((export / "audio.onnx").read_bytes())
    data[len(data) // 2] ^= 1
    (export / "audio.onnx").write_bytes(bytes(data))
    code, out, _ = run(capsys, "info", export)
    assert code == 0 and "--precision fp32: unavailable:" in out and "audio.onnx: sha256 mismatch" in out
    (export / "audio.onnx").unlink()
    code, out, _ = run(capsys, "info", export)
    assert "--precision fp32: unavailable:" in out and "audio.onnx is missing" in out


def test_a_forged_verification_stamp_does_not_let_a_tampered_graph_load(tiny_export, tmp_path):
    import hashlib
    import hmac

    export = _copy_export(tiny_export, tmp_path)
    WavLink.from_pretrained(export)
    stamps = json.loads((export / ".verified.json").read_text())
    data = bytearray((export / "audio.onnx").read_bytes())
    data[len(data) // 2] ^= 1  # same size, one bit
    (export / "audio.onnx").write_bytes(bytes(data))
    status = os.stat(export / "audio.onnx")
    sha = json.loads((export / "manifest.json").read_text())["artifacts"]["audio.onnx"]["sha256"]
    fields = [status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino, status.st_dev, sha]
    forged_key = hmac.digest(b"\0" * 32, json.dumps(["audio.onnx", stamps["manifest_sha256"], *fields]).encode(),
                             "sha256").hex()
    for forged in (fields, forged_key):  # the old stamp format (what the issue forged), and a wrong key's HMAC
        stamps["files"]["audio.onnx"] = forged
        (export / ".verified.json").write_text(json.dumps(stamps))
        with pytest.raises(ModelFilesError, match="audio.onnx: sha256 mismatch"):
            WavLink.from_pretrained(export)
    assert hashlib  # (hashlib imported for readers checking the manifest digest by hand)


def test_lock_file_for_a_new_output_and_its_symlink_agree(tmp_path):
    from wavlink_edge.runtime.outputs import lock_file_for

    target = tmp_path / "real" / "out.jsonl"
    target.parent.mkdir()
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)  # a link to an output that does not exist yet
    assert lock_file_for(link) == lock_file_for(target) == target.parent / ".out.jsonl.lock"
    with exclusive_lock(target, "t"):
        with pytest.raises(Exception, match="another wavlink-edge run"):
            with exclusive_lock(link, "t"):
                pass


# -- 8. lyrics: no speech and too short are said, never embedded as "you" ----------------------------------

@pytest.fixture(scope="module")
def tiny_lyrics(tmp_path_factory, tiny_export):
    """The tiny export plus a random tiny lyrics model (1 s windows), as tests/test_wealy.py makes it."""
    torch = pytest.importorskip("torch")
    from wavlink_edge.export.decoder import DecoderDims, WhisperDecoder
    from wavlink_edge.export.model import AudioDims, AudioTower
    from wavlink_edge.export.wealy import HeadDims, LyricsEncoder, LyricsReference, WealyHead, export_lyrics
    from wavlink_edge.runtime.lyrics import WhisperVocab

    vocab = WhisperVocab(sot=60, eot=59, transcribe=61, no_timestamps=62, lang_ids=(55, 56, 57), suppress=(1, 2),
                         suppress_begin=(59, 3))
    out = tmp_path_factory.mktemp("lyrics") / "export"
    shutil.copytree(tiny_export, out)
    torch.manual_seed(3)
    tower = AudioTower(AudioDims(n_mels=80, n_ctx=50, d_model=16, n_heads=2, n_layers=1, ffn_dim=32), 8).eval()
    decoder = WhisperDecoder(DecoderDims(n_vocab=64, n_ctx=32, d_model=16, n_heads=2, n_layers=2, ffn_dim=32)).eval()
    head = WealyHead(HeadDims(d_in=16, d_model=16, n_heads=2, n_layers=4, ffn_dim=32, embed_dim=12)).eval()
    clips = [("noise", np.random.default_rng(0).standard_normal((1, 80, 100)).astype(np.float32))]
    export_lyrics(out, LyricsReference(LyricsEncoder(tower, decoder), decoder, vocab, None), head, clips=clips,
                  max_new_tokens=8)
    return out


def test_lyrics_reports_silence_and_too_short_clips(tiny_lyrics, tmp_path, capsys):
    import soundfile as sf

    from wavlink_edge.runtime.lyrics import Lyrics

    rng = np.random.default_rng(0)
    speechy = (0.3 * rng.standard_normal(32000)).astype(np.float32)
    items = {"silence.wav": np.zeros(24000, np.float32), "short.wav": speechy[:1600], "one.wav": speechy[:1],
             "ok.wav": speechy, "half.wav": np.concatenate([speechy[:16000], np.zeros(20000, np.float32)])}
    paths = []
    for name, samples in items.items():
        sf.write(tmp_path / name, samples, 16000)
        paths.append(str(tmp_path / name))
    results = list(Lyrics.from_pretrained(tiny_lyrics).iter_embed_lyrics(paths))
    assert "no speech" in results[0].error and results[0].embedding is None
    assert "too short for lyrics: 0.100 s" in results[1].error and "too short" in results[2].error
    assert results[3].ok and results[3].silent_windows == 0
    assert results[4].ok and results[4].silent_windows == 1 and results[4].windows == 1
    capsys.readouterr()  # the API's warnings went to whatever handler an earlier cli.main left on the root logger
    code, _, err = run(capsys, "lyrics", *paths, "--model", tiny_lyrics, "--out", tmp_path / "l.jsonl")
    assert code == 1 and "2 ok, 3 failed" in err
    assert "windows are silent" in err and "half.wav" in err
    rows = read_rows(tmp_path / "l.jsonl")[1]
    assert ["error" in r for r in rows] == [True, True, True, False, False]


def test_lyrics_no_speech_probability_is_whispers_and_gates_an_item(tiny_lyrics, tmp_path, monkeypatch):
    """The tiny model's tokenizer-less export has no no-speech token; give it one and check the field is the
    softmax at the first step, and that an item above the threshold in every window is a "no speech" error."""
    from wavlink_edge.runtime import lyrics as lyrics_module

    model = lyrics_module.Lyrics.from_pretrained(tiny_lyrics)
    assert model.no_speech_id is None  # no tokenizer: the field stays None, nothing is gated
    model.no_speech_id = 5
    clip = (0.3 * np.random.default_rng(1).standard_normal(32000)).astype(np.float32)
    expected = []
    for features in model.windows((clip, 16000), "clip"):
        cross_k, cross_v = model.decoder.cross(features)
        logits = model.step(np.array([[model.vocab.sot]], np.int64), *model.empty_cache, cross_k, cross_v)[1][0]
        logits = logits.astype(np.float64)
        expected.append(np.exp(logits[5] - logits.max()) / np.exp(logits - logits.max()).sum())
    result = next(model.iter_embed_lyrics([(clip, 16000)]))
    assert result.ok and result.no_speech_prob == pytest.approx(min(expected), rel=1e-5)
    monkeypatch.setattr(lyrics_module, "NO_SPEECH_THRESHOLD", min(expected) / 2)
    result = next(model.iter_embed_lyrics([(clip, 16000)]))
    assert result.embedding is None and "no speech: Whisper's no-speech probability" in result.error
    assert len(model.decode((clip, 16000))) == 2  # the low-level decode (training caches) is not gated
