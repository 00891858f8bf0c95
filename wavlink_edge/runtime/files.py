"""Writing files so a reader sees the old content or the new, never half of one."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """``write(handle)`` into a temporary file beside ``path``, then rename it into place. The file gets
    the permissions an ordinary new file would (mkstemp makes it private). An OSError names ``path``."""
    path = Path(path)
    tmp = _write_temporary(path, write)
    try:
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    return path


def atomic_write_all(contents: dict[Path, bytes]) -> None:
    """Several files as one unit, as far as a file system allows: every temporary file is written in full
    first (a full disk fails here, before anything is replaced), then all are renamed in order."""
    written: list[tuple[Path, Path]] = []
    try:
        for path, data in contents.items():
            written.append((_write_temporary(Path(path), lambda handle, data=data: handle.write(data)), Path(path)))
        for tmp, path in written:
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, str(path)) from None
    finally:
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)


def _write_temporary(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        ordinary_permissions(tmp)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    return tmp


def ordinary_permissions(path: Path) -> None:
    """The mode a plain `open(path, "w")` would have given (mkstemp and ONNX's external-data writer use 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


# Fault injection for the tests of crash safety: a test that must kill a process at a known point (not on a
# timer) sets WAVLINK_EDGE_HOLD_AT to the point's name and WAVLINK_EDGE_HOLD_FILE to a path. The first
# process to reach that point creates the file (holding its pid) and then sleeps until it is killed;
# every other process, and every run without these variables, passes straight through.
HOLD_AT, HOLD_FILE = "WAVLINK_EDGE_HOLD_AT", "WAVLINK_EDGE_HOLD_FILE"


def hold_point(name: str) -> None:
    if os.environ.get(HOLD_AT) != name or not os.environ.get(HOLD_FILE):
        return
    target = os.environ[HOLD_FILE]
    try:
        os.close(os.open(target + ".claimed", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        return  # another process holds already
    with open(target + ".tmp", "w", encoding="ascii") as handle:
        handle.write(str(os.getpid()))
    os.replace(target + ".tmp", target)  # the test sees the pid whole, or nothing
    while True:
        time.sleep(1)
