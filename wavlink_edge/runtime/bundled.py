"""The audio clips that ship inside the package (runtime/samples: a chime, a phone ring, English speech).

The export validates on them, the quantization gates and the benchmarks read them, the README's first
command embeds one: every stage takes their location from here, so it is computed once, and the same
in a checkout and in an installed wheel.
"""
from __future__ import annotations

from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"


def sample_clips() -> list[Path]:
    """The bundled clips, sorted by name."""
    return sorted(SAMPLES_DIR.glob("*.flac"))
