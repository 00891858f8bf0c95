"""What the command line embeds: files, directories (recursive), path lists and stdin, as one ordered list.

Directories are walked recursively (symbolic links to directories are not followed, so a link loop
cannot recurse), entries sorted by path, and only files with an audio extension kept. ``--ext`` and
``--glob`` filter what directories, lists and stdin bring in; a file named on the command line is kept
as given (the user chose it). Nothing is dropped silently: a directory that cannot be read is reported,
a list line that is filtered out is counted in one line (with examples), a line naming a directory is
walked like a directory argument, and a line whose surrounding spaces are not part of any file name
(``a.wav `` when only ``a.wav`` exists) is used without them, said in a line.
"""
from __future__ import annotations

import fnmatch
import os
import sys
from collections.abc import Iterable, Sequence
from typing import TextIO

from wavlink_edge.runtime.audio import FFMPEG_SUFFIXES
from wavlink_edge.runtime.errors import UsageError

# What libsndfile reads, plus the containers FFmpeg decodes for us.
SNDFILE_SUFFIXES = {".wav", ".wave", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".snd",
                    ".w64", ".rf64", ".voc", ".sf", ".htk", ".mat", ".pvf", ".xi", ".sd2", ".nist", ".paf", ".iff"}
AUDIO_SUFFIXES = frozenset(SNDFILE_SUFFIXES | FFMPEG_SUFFIXES)
STDIN = "-"


def normalise_suffixes(exts: Iterable[str] | None) -> frozenset[str] | None:
    """``["wav", ".FLAC"]`` -> {".wav", ".flac"}; None keeps the default audio set."""
    if not exts:
        return None
    return frozenset("." + e.strip().lower().lstrip(".") for part in exts for e in part.split(",") if e.strip())


def read_path_list(handle: TextIO) -> list[str]:
    """One path per line; blank lines are skipped; a path keeps its spaces (only the line end is cut)."""
    return [line.rstrip("\r\n") for line in handle if line.strip()]


def expand_inputs(paths: Sequence[str], from_list: str | None = None, exts: Iterable[str] | None = None,
                  glob: str | None = None, stdin: TextIO | None = None,
                  warn=lambda message: print(message, file=sys.stderr)) -> list[str]:
    """The ordered list of sources to embed. ``-`` (a positional or ``from_list``) reads paths from stdin."""
    suffixes = normalise_suffixes(exts) or AUDIO_SUFFIXES

    def wanted(path: str) -> bool:
        return os.path.splitext(path)[1].lower() in suffixes and (
            glob is None or fnmatch.fnmatch(path, glob) or fnmatch.fnmatch(os.path.basename(path), glob))

    def listed(name: str) -> list[str]:
        if name == STDIN:
            return read_path_list(stdin or sys.stdin)
        try:
            with open(name, encoding="utf-8", errors="surrogateescape") as handle:
                return read_path_list(handle)
        except OSError as exc:
            raise UsageError(f"--from-list {name}: {exc.strerror or exc}") from None

    def from_lines(name: str, lines: list[str]) -> list[str]:
        kept, skipped = [], []
        for line in lines:
            path = line
            if not os.path.lexists(path) and path.strip() != path and os.path.lexists(path.strip()):
                warn(f"warning: {_where(name)}: {path!r} has spaces around it and no such file exists; "
                     f"using {path.strip()!r}, which does")
                path = path.strip()
            if os.path.isdir(path):
                kept += [p for p in _walk(path, warn) if wanted(p)]  # a folder in a list is walked, as on the command line
            elif wanted(path):
                kept.append(path)
            else:
                skipped.append(path)
        if skipped:
            shown = ", ".join(repr(p) for p in skipped[:3]) + (f" and {len(skipped) - 3} more" if len(skipped) > 3 else "")
            why = "--ext/--glob" if (exts or glob) else "not an audio extension; see --ext"
            warn(f"warning: {_where(name)}: {len(skipped)} line{'s' if len(skipped) != 1 else ''} skipped ({why}): {shown}")
        return kept

    sources: list[str] = []
    for path in list(paths) + ([from_list] if from_list else []):
        from_a_list = path == STDIN or (from_list is not None and path is from_list)
        if from_a_list:
            sources += from_lines(path, listed(path))
        elif os.path.isdir(path):
            sources += [p for p in _walk(path, warn) if wanted(p)]
        else:
            sources.append(path)  # named by the user: kept, and a missing file fails alone, by name
    return sources


def _where(name: str) -> str:
    return "the paths on stdin" if name == STDIN else f"--from-list {name}"


def _walk(root: str, warn) -> list[str]:
    found = []

    def report(error: OSError) -> None:
        warn(f"warning: cannot read directory {error.filename}: {error.strerror}; its files are not embedded")

    for directory, subdirs, files in os.walk(root, onerror=report):
        subdirs.sort()
        found += [os.path.join(directory, name) for name in files]
    return sorted(found)
