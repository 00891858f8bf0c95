"""Shared fixtures. The real base export takes ~20 s on 2 cores and is made once per session.

On a runtime-only install (`pip install '.[test-runtime]'`: no torch, no build stages) test modules
whose top-level imports are missing are not collected, and the run says which and why.
"""
from __future__ import annotations

import ast
import importlib
import os
from pathlib import Path

import pytest

from wavlink_edge.runtime import bundled

_NOT_COLLECTED: dict[str, str] = {}
# The runtime's own tests: they need nothing beyond `pip install ".[test-runtime]"` (no torch), and the
# runtime-only CI step (WAVLINK_EDGE_RUNTIME_ONLY=1) fails if any of them is not collected.
RUNTIME_TEST_MODULES = ("test_runtime.py", "test_cli.py", "test_features.py", "test_bad_input.py", "test_fuzz.py",
                        "test_layers.py", "test_formats_inputs.py", "test_output_safety.py", "test_batching_mixed.py")


def _missing_import(path: Path) -> str | None:
    """The first top-level import of a test module that fails here, or None."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        try:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    importlib.import_module(alias.name)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                module = importlib.import_module(node.module)
                for alias in node.names:  # `from package import submodule` imports the submodule too
                    if not hasattr(module, alias.name):
                        importlib.import_module(f"{node.module}.{alias.name}")
        except ImportError as exc:
            return str(exc)
    return None


def pytest_ignore_collect(collection_path, config):
    if collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        missing = _missing_import(collection_path)
        if missing:
            _NOT_COLLECTED[collection_path.name] = missing
            return True
    return None


SLOW_FIXTURES = {"base_model", "base_export"}  # the real Whisper-base + MiniLM model, built once per session
GPU_FIXTURES = {"gpu_trt"}


def pytest_collection_modifyitems(config, items):
    """`slow` and `gpu` follow from the fixtures a test uses, so a new test is marked without remembering to."""
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & SLOW_FIXTURES:
            item.add_marker(pytest.mark.slow)
        if used & GPU_FIXTURES:
            item.add_marker(pytest.mark.gpu)


def pytest_sessionfinish(session, exitstatus):
    missing = sorted(set(RUNTIME_TEST_MODULES) & set(_NOT_COLLECTED))
    if os.environ.get("WAVLINK_EDGE_RUNTIME_ONLY") == "1" and missing:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    missing = sorted(set(RUNTIME_TEST_MODULES) & set(_NOT_COLLECTED))
    if os.environ.get("WAVLINK_EDGE_RUNTIME_ONLY") == "1" and missing:
        terminalreporter.write_line("FAILED: runtime test modules not collected on a runtime-only install: "
                                    + "; ".join(f"{m}: {_NOT_COLLECTED[m]}" for m in missing))
    if _NOT_COLLECTED:
        terminalreporter.write_line("not collected, their imports are not installed (the [test] extra has them): "
                                    + "; ".join(f"{k}: {v}" for k, v in sorted(_NOT_COLLECTED.items())))



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
    return bundled.sample_clips()


TINY_EXPORT = Path(__file__).resolve().parent / "data" / "tiny_export"


@pytest.fixture(scope="session")
def tiny_export() -> Path:
    """A random tiny export (tests/data/make_tiny_export.py): the runtime's tests run on it without torch.
    Read-only for tests: copy before editing. 32 dims (32/16/8/4), 1 s windows, trim policy."""
    return TINY_EXPORT


@pytest.fixture
def tiny_hf_backbones(tmp_path) -> tuple[Path, Path]:
    """Local Hugging Face directories of a tiny random Whisper (80 mels, d_model 64) and a tiny BERT with
    MiniLM's tokenizer: what `export/assemble.py` reads, in milliseconds."""
    pytest.importorskip("torch")
    from transformers import BertConfig, BertModel, WhisperConfig, WhisperModel

    from wavlink_edge.export.backbones import minilm_dir

    whisper = WhisperConfig(num_mel_bins=80, d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
                            decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=64, max_source_positions=50,
                            vocab_size=100, max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                            decoder_start_token_id=1)
    WhisperModel(whisper).save_pretrained(tmp_path / "whisper", safe_serialization=True)
    bert = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                      max_position_embeddings=64)
    BertModel(bert, add_pooling_layer=False).save_pretrained(tmp_path / "bert", safe_serialization=True)
    (tmp_path / "bert" / "tokenizer.json").write_bytes((minilm_dir() / "tokenizer.json").read_bytes())
    return tmp_path / "whisper", tmp_path / "bert"


@pytest.fixture(scope="session")
def write_clip():
    """write_clip(path, seed, seconds=0.7) -> str: a 16 kHz WAV, a distinct sound per seed (a tone at its own
    pitch plus seeded noise), so a random tiny model still tells the clips apart."""
    import numpy as np
    import soundfile as sf

    def write(path, seed: int, seconds: float = 0.7) -> str:
        rng = np.random.default_rng(seed)
        t = np.arange(int(16000 * seconds)) / 16000
        wave = 0.4 * np.sin(2 * np.pi * (150 + 97 * seed) * t) + 0.1 * rng.standard_normal(t.size)
        sf.write(path, wave.astype(np.float32), 16000)
        return str(path)

    return write
