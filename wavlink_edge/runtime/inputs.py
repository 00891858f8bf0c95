"""What the command line embeds: files, directories (recursive), path lists and stdin, as one ordered list.

Directories are walked recursively (symbolic links to directories are not followed, so a link loop
cannot recurse), entries sorted by path, and only files with an audio extension kept. ``--ext`` and
``--glob`` filter what directories, lists and stdin bring in; a file named on the command line is kept
as given (the user chose it). Nothing is dropped silently: a directory that cannot be read is reported.
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

    sources: list[str] = []
    for path in list(paths) + ([from_list] if from_list else []):
        from_a_list = path == STDIN or (from_list is not None and path is from_list)
        if from_a_list:
            sources += [p for p in listed(path) if wanted(p)]
        elif os.path.isdir(path):
            sources += [p for p in _walk(path, warn) if wanted(p)]
        else:
            sources.append(path)  # named by the user: kept, and a missing file fails alone, by name
    return sources


def _walk(root: str, warn) -> list[str]:
    found = []

    def report(error: OSError) -> None:
        warn(f"warning: cannot read directory {error.filename}: {error.strerror}; its files are not embedded")

    for directory, subdirs, files in os.walk(root, onerror=report):
        subdirs.sort()
        found += [os.path.join(directory, name) for name in files]
    return sorted(found)
