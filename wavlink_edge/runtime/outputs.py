"""Embedding outputs that never lose or corrupt a file: .jsonl (streamed, resumable), .npy + sidecar, .npz.

- An ``--out`` that resolves to one of the inputs (symlinks and hard links included) is refused.
- One writer per output file, whatever name it is reached by: an exclusive lock (``.<name>.lock``
  beside the resolved path, plus a lock on the existing file's inode for hard links) makes a second run refuse.
- A file output starts with a header row naming the model, the export's digest, dim, precision, clip
  policy and tower; ``--resume`` reads that header before changing anything (a file without it is
  refused untouched), appends only to a file whose header matches, repairs a row cut by an interrupt
  (truncating back to the last complete row) and refuses anything else, by line number.
- .jsonl rows are written and flushed as they finish; when the run completes, the file is rewritten
  (atomically) in input order with one row per source if resuming or retries disturbed it.
- .npy + its ``.sources.jsonl`` sidecar are written as one unit: both go to temporary files first (a
  full disk fails there, replacing nothing), then are renamed; the sidecar's header carries the .npy's
  sha256, so a pair from different runs is detectable.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import stat
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from wavlink_edge.runtime.errors import WavLinkError
from wavlink_edge.runtime.files import atomic_write_all

OUTPUT_SUFFIXES = (".npy", ".npz", ".jsonl")
HEADER_KEY = "wavlink_edge"
# Fields of the header a resumed file must share with this run.
MATCHING_FIELDS = ("model", "model_digest", "dim", "precision", "clip_policy", "tower")
# Characters that str.splitlines() and some JSON-lines readers treat as line ends, though JSON allows them raw.
_LINE_BREAKS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


class OutputError(WavLinkError):
    """An output that cannot be written safely: refused before any work, naming the path."""


def json_row(row: dict) -> str:
    """One JSON line; a name that is not valid UTF-8 (a non-UTF-8 file name) is kept exactly by \\u escapes."""
    text = json.dumps(row, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(row)
    for char, escape in _LINE_BREAKS.items():
        text = text.replace(char, escape)
    return text


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + ".sources.jsonl")


def check_output(out: Path | None, resume: bool, inputs: Iterable[str] = ()) -> None:
    """Every problem with ``out`` found before any work is done."""
    if out is None:
        if resume:
            raise OutputError("--resume needs --out FILE.jsonl")
        return
    if out.is_dir():
        raise OutputError(f"--out {out} is a directory")
    if out.suffix not in OUTPUT_SUFFIXES:
        raise OutputError(f"--out {out}: unsupported extension; use one of {', '.join(OUTPUT_SUFFIXES)}")
    if resume and out.suffix != ".jsonl":
        raise OutputError(f"--resume works with .jsonl outputs (rows are appended); {out} is {out.suffix}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"--out {out}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise OutputError(f"--out {out}: not writable")
    written = [out] + ([sidecar_path(out)] if out.suffix == ".npy" else [])
    targets = {os.path.realpath(path): path for path in written}
    for source in inputs:
        if not isinstance(source, str) or not os.path.lexists(source):
            continue
        real = os.path.realpath(source)
        for target_real, target in targets.items():
            if real == target_real or (os.path.exists(target) and _same_file(source, target)):
                raise OutputError(f"--out {out}: {target} is the input {source}; refusing to overwrite an input")


def _same_file(a: str, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def lock_file_for(path: Path) -> Path:
    """The lock file of ``path``: ``.<name>.lock`` beside the file the name resolves to, so a symbolic link
    (or a link to its folder) and the file itself share one lock."""
    real = Path(os.path.realpath(path))
    return real.parent / f".{real.name}.lock"


@contextlib.contextmanager
def exclusive_lock(path: Path, what: str, wait: bool = False, hint: str = "") -> Iterator[Path]:
    """Hold the lock of ``path`` for the block, or raise OutputError if another process holds it (``wait``:
    block until it is free; ``hint`` is added to the refusal, e.g. how to wait). Every name of one file shares the lock: the lock file sits beside the
    resolved path (symbolic links), and an existing regular file is also locked itself, by its inode, so a
    hard link under another name finds it taken. The lock file is removed afterwards; a process that locked
    a lock file someone just removed retries."""
    import fcntl

    lock_path = lock_file_for(path)
    busy = f"another wavlink-edge run is writing {what} (it holds {lock_path}); wait for it to finish{hint} or choose another path"
    mode = fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"{lock_path}: cannot create the lock file ({exc.strerror})") from None
        try:
            fcntl.flock(fd, mode)
        except BlockingIOError:
            os.close(fd)
            raise OutputError(busy) from None
        try:
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder removed it between our open and our lock: take the new one
    inode_fd = None
    try:
        inode_fd = _lock_inode(path, mode)
    except BlockingIOError:
        os.close(fd)  # the lock file stays: if it is ours alone, the next run reuses it
        raise OutputError(busy.replace(f"(it holds {lock_path})", "(through another name of this file)")) from None
    try:
        yield lock_path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        if inode_fd is not None:
            os.close(inode_fd)
        os.close(fd)


def _lock_inode(path: Path, mode: int) -> int | None:
    """flock on the existing regular file itself (its inode): what its hard links have in common."""
    import fcntl

    try:
        fd = os.open(os.path.realpath(path), os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: a FIFO must not hang us
    except OSError:
        return None  # not there yet (a new output): the name's lock is all there is to take
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        fcntl.flock(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _io_error(exc: OSError, path: Path) -> OSError:
    return OSError(exc.errno or errno.EIO, exc.strerror or str(exc), str(path))


class RowWriter:
    """Rows in input order, each naming its source; see the module docstring for the guarantees.

    ``header``: the run's identity (model, model_digest, dim, precision, clip_policy, tower); written
    first into file outputs and compared on ``resume``.
    """

    def __init__(self, out: Path | None, dim: int, source_key: str, header: dict, resume: bool = False,
                 notify=lambda message: print(message, file=sys.stderr)):
        self.out, self.dim, self.source_key, self.header = out, dim, source_key, dict(header, dim=dim)
        self.notify = notify
        self.rows = 0
        self.sources, self.embeddings, self.errors = [], [], []
        self.done: set[str] = set()
        self.stream = None
        self.reorder_needed = False
        if out is None:
            self.stream = sys.stdout
        elif out.suffix == ".jsonl":
            fresh = not (resume and out.is_file())
            if not fresh:
                self.done = self._validate_for_resume(out)
            try:
                self.stream = open(out, "w" if fresh else "a", encoding="utf-8", errors="surrogateescape")
                if fresh:
                    self._emit(json_row({HEADER_KEY: self.header}))
            except OSError as exc:
                raise _io_error(exc, out) from None

    # -- resume ------------------------------------------------------------------------------------

    def _validate_for_resume(self, out: Path) -> set[str]:
        data = out.read_bytes()
        if not data.strip():
            raise OutputError(f"--resume: {out} is empty; run without --resume")
        # The header first, before anything is changed: a file this package did not write (no header row)
        # is refused untouched, whatever its last line looks like.
        first_end = data.find(b"\n")
        header_row = self._parse(out, 1, data if first_end < 0 else data[:first_end])
        header = header_row.get(HEADER_KEY)
        if first_end < 0 or not isinstance(header, dict):
            raise OutputError(f"--resume: {out} has no wavlink-edge header on line 1 (not written by `wavlink-edge "
                              "--out`, or by an older version); it was left untouched; choose another --out or run "
                              "without --resume")
        different = [f"{k} {header.get(k)!r} vs this run's {self.header.get(k)!r}" for k in MATCHING_FIELDS
                     if header.get(k) != self.header.get(k)]
        if different:
            raise OutputError(f"--resume: {out} was written by another run ({'; '.join(different)}); "
                              "choose another --out or run without --resume")
        end = data.rfind(b"\n") + 1
        if end < len(data):
            # Our own file, a row cut by an interrupt or a full disk: drop the partial tail so it is whole rows again.
            self.notify(f"--resume: {out} ended inside a row ({len(data) - end} bytes after the last complete "
                        "row); that partial row was removed and will be redone")
            try:
                with open(out, "r+b") as handle:
                    handle.truncate(end)
            except OSError as exc:
                raise _io_error(exc, out) from None
            data = data[:end]
        lines = data.split(b"\n")[:-1]
        rows = [header_row] + [self._parse(out, number, line) for number, line in enumerate(lines[1:], 2)]
        done, seen = set(), set()
        for number, row in enumerate(rows[1:], 2):
            source = row.get(self.source_key)
            embedding = row.get("embedding")
            if not isinstance(source, str) or not (isinstance(row.get("error"), str) or
                                                   (isinstance(embedding, list) and len(embedding) == self.dim)):
                raise OutputError(f"--resume: {out} line {number} is not a {self.source_key} row of this run "
                                  f"(expected {self.source_key!r} and an {self.dim}-wide embedding or an error)")
            self.reorder_needed |= source in seen
            seen.add(source)
            if embedding is not None:
                done.add(source)
        self.reorder_needed |= len(seen) != len(done)  # error rows to be replaced by their retry
        return done

    @staticmethod
    def _parse(out: Path, number: int, line: bytes) -> dict:
        try:
            row = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise OutputError(f"--resume: {out} line {number} is not a JSON row (not a wavlink-edge output?)") from None
        if not isinstance(row, dict):
            raise OutputError(f"--resume: {out} line {number} is not a JSON object")
        return row

    # -- writing -----------------------------------------------------------------------------------

    def _emit(self, line: str) -> None:
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except OSError as exc:
            raise _io_error(exc, self.out or Path("<stdout>")) from None

    def write(self, source: str, embedding: np.ndarray | None, error: str | None) -> None:
        self.rows += 1
        if self.stream is not None:
            row = {self.source_key: source}
            row.update({"error": error} if error else {"embedding": [round(float(v), 7) for v in embedding]})
            self._emit(json_row(row))
            return
        self.sources.append(source)
        self.embeddings.append(embedding)
        self.errors.append(error)

    def close(self, order: list[str] | None = None) -> None:
        """Finish the output: .jsonl is put in input order (``order``) if resuming disturbed it; .npy/.npz
        are written now, atomically."""
        if self.stream is not None:
            if self.stream is not sys.stdout:
                self.stream.close()
                if self.reorder_needed and order is not None:
                    self._rewrite_in_order(order)
            return
        matrix = np.full((len(self.sources), self.dim), np.nan, np.float32)
        for row, embedding in enumerate(self.embeddings):
            if embedding is not None:
                matrix[row] = embedding
        buffer = io.BytesIO()
        if self.out.suffix == ".npz":
            np.savez(buffer, embeddings=matrix, sources=np.array(self.sources, dtype=str),
                     errors=np.array([e or "" for e in self.errors], dtype=str),
                     header=np.array(json.dumps(self.header)))
            atomic_write_all({self.out: buffer.getvalue()})
            return
        np.save(buffer, matrix)
        header = dict(self.header, npy_sha256=hashlib.sha256(buffer.getvalue()).hexdigest())
        # Line 1 the header; line i + 1 names row i of the .npy (and its error): any name round-trips.
        sidecar = json_row({HEADER_KEY: header}) + "\n" + "".join(
            json_row({self.source_key: s, **({"error": e} if e else {})}) + "\n" for s, e in zip(self.sources, self.errors))
        atomic_write_all({sidecar_path(self.out): sidecar.encode("utf-8", "surrogateescape"), self.out: buffer.getvalue()})

    def _rewrite_in_order(self, order: list[str]) -> None:
        """One row per source, the last one written winning, in input order; sources from earlier runs that
        are not inputs now keep their rows, after the inputs'."""
        lines = self.out.read_bytes().split(b"\n")[:-1]
        latest: dict[str, tuple[bool, bytes]] = {}
        for line in lines[1:]:
            row = json.loads(line.decode("utf-8"))
            ok, source = "embedding" in row, row.get(self.source_key)
            if ok or not latest.get(source, (False,))[0]:  # an ok row is never replaced by an error
                latest[source] = (ok, line)
        latest = {source: line for source, (_, line) in latest.items()}
        ordered = [latest.pop(s) for s in order if s in latest] + list(latest.values())
        atomic_write_all({self.out: b"\n".join([lines[0], *ordered]) + b"\n"})

    def abandon(self) -> None:
        """After an interrupt: JSON lines keep what finished; nothing half-written is left behind."""
        if self.stream is not None and self.stream is not sys.stdout:
            self.stream.close()


def read_rows(path: Path) -> tuple[dict | None, list[dict]]:
    """(header, rows) of a .jsonl output or .npy sidecar written here; header None if the file has none."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8", errors="surrogateescape").split("\n") if line]
    if rows and isinstance(rows[0], dict) and HEADER_KEY in rows[0]:
        return rows[0][HEADER_KEY], rows[1:]
    return None, rows
