"""Command-line conventions every stage's parser shares, so an option is spelled and checked one way.

`--model DIR` names an export directory everywhere (default `exports/wavlink-base`, where
`wavlink-edge export --size base` writes), `--quick` asks for the CI-sized run, and whole-number options
are refused in one line when out of range.
"""
from __future__ import annotations

import argparse
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
