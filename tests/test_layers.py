"""The layering rule, checked on the source: runtime is the base layer and imports no other stage (and
never torch); each later stage imports only earlier ones. The one sanctioned exception is export's
`--precision` pipeline entry point into quantization."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "wavlink_edge"
ORDER = ["runtime", "export", "quantization", "train", "bench"]  # each may import those before it
ALLOWED_UPWARD = {("export/to_onnx.py", "wavlink_edge.quantization.quantize")}
HEAVY = ("torch", "transformers", "optimum", "ctranslate2", "onnx", "sentence_transformers", "matplotlib")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def _stage_files():
    for stage in ORDER:
        for path in sorted((ROOT / stage).rglob("*.py")):
            yield stage, path


def test_no_stage_imports_a_later_one():
    wrong = []
    for stage, path in _stage_files():
        rel = str(path.relative_to(ROOT))
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] != "wavlink_edge" or len(parts) < 2 or parts[1] not in ORDER:
                continue
            if ORDER.index(parts[1]) > ORDER.index(stage) and (rel, name) not in ALLOWED_UPWARD:
                wrong.append(f"{rel} imports {name}")
    assert not wrong, "later-stage imports:\n" + "\n".join(wrong)


def test_runtime_imports_nothing_heavy():
    wrong = [f"{path.relative_to(ROOT)} imports {name}" for stage, path in _stage_files() if stage == "runtime"
             for name in _imports(path) if name.split(".")[0] in HEAVY]
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_a_violation(tmp_path):
    """A control: the parser does find imports in the forms the code uses."""
    sample = tmp_path / "x.py"
    sample.write_text("import torch\nfrom wavlink_edge.bench import latency\ndef f():\n    import wavlink_edge.train.train\n")
    assert _imports(sample) == ["torch", "wavlink_edge.bench", "wavlink_edge.train.train"]


@pytest.mark.parametrize("stage", ORDER)
def test_every_stage_is_a_package(stage):
    assert (ROOT / stage / "__init__.py").is_file()
