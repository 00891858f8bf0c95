"""Shared fixtures. The real base export takes ~20 s on 2 cores and is made once per session."""
from __future__ import annotations

from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parent.parent / "runtime" / "samples"


@pytest.fixture(scope="session")
def base_model():
    """The built-in default base model (real Whisper-base + MiniLM weights) in PyTorch."""
    pytest.importorskip("torch")
    from wavlink_edge.export.backbones import build_default_base

    return build_default_base()


@pytest.fixture(scope="session")
def base_export(base_model, tmp_path_factory) -> Path:
    """An fp32 export directory of the default base model (read-only for tests: copy before editing)."""
    from wavlink_edge.export.to_onnx import export_model

    model, tokenizer = base_model
    out = tmp_path_factory.mktemp("wavlink-base")
    export_model(model, tokenizer, out)
    return out


@pytest.fixture(scope="session")
def sample_clips() -> list[Path]:
    return sorted(SAMPLES.glob("*.flac"))


TINY_EXPORT = Path(__file__).resolve().parent / "data" / "tiny_export"


@pytest.fixture(scope="session")
def tiny_export() -> Path:
    """A random tiny export (tests/data/make_tiny_export.py): the runtime's tests run on it without torch.
    Read-only for tests: copy before editing. 32 dims (32/16/8/4), 1 s windows, trim policy."""
    return TINY_EXPORT
