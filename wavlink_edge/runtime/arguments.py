"""Command-line conventions every stage's parser shares, so an option is spelled and checked one way.

`--model DIR` names an export directory everywhere (default `exports/wavlink-base`, where
`wavlink-edge export --size base` writes), `--quick` asks for the CI-sized run, and whole-number options
are refused in one line when out of range.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_MODEL_DIR = Path("exports/wavlink-base")


def int_at_least(minimum: int):
    """An argparse type: a whole number >= minimum, refused in one line otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


positive_int = int_at_least(1)


def add_deprecated_alias(parser: argparse.ArgumentParser, old: str, new: str, **kwargs) -> None:
    """Keep an old spelling working, hidden from --help, stored where the new one is (`dest` of `new`)."""
    parser.add_argument(old, dest=new.lstrip("-").replace("-", "_"), help=argparse.SUPPRESS, **kwargs)


# `wavlink-edge --debug ...` sets it for the command and its child processes; scripts run by path read it too.
DEBUG_ENV = "WAVLINK_EDGE_DEBUG"


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


def printable(text: str) -> str:
    """A message as the terminal can show it: undecodable bytes of file names become backslash escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_exit(exc: BaseException) -> int:
    """What every command does with a refusal (a WavLinkError, or the OS failing a file): one line
    `error: ...` on stderr and exit code 2. With WAVLINK_EDGE_DEBUG=1 (`wavlink-edge --debug`) the exception
    is raised again, so its traceback shows. Anything else is a bug and is never caught into one line."""
    if debug_enabled():
        raise exc
    if isinstance(exc, OSError):  # the disk or a path failing under us: the reason, and the path if known
        message = f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}"
    else:
        message = str(exc)
    print(f"error: {printable(message)}", file=sys.stderr)
    return 2


def add_model_option(parser: argparse.ArgumentParser, dest: str = "model", default: Path | None = DEFAULT_MODEL_DIR,
                     positional: bool = False) -> None:
    """`--model DIR`, the one spelling of an export directory. ``positional``: the older spelling, the
    directory as the first positional argument, keeps working (hidden from --help)."""
    parser.add_argument("--model", dest=dest, type=Path, default=default, metavar="DIR",
                        help=f"export directory (default {default})" if default else "export directory")
    if positional:  # default SUPPRESS: absent, it leaves --model's value alone (argparse passes it through `type`)
        parser.add_argument(dest, nargs="?", type=_path_or_suppress, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _path_or_suppress(text: str):
    return text if text is argparse.SUPPRESS else Path(text)
