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


# -- one place per concept: a second copy of any of these fails here -------------------------------------
AUDIO_SUFFIX_HOMES = {"runtime/audio.py", "runtime/inputs.py"}  # FFmpeg's suffixes + libsndfile's = AUDIO_SUFFIXES
# Not "what can be decoded" but recorded selections: widening them would change a published data set.
AUDIO_SUFFIX_SELECTIONS = {
    "train/corpus/events.py": "which files of a Debian sound package the corpus takes",
    "train/corpus/real.py": "which files of a Debian sound package the corpus takes",
    "bench/scale.py": "the clip set behind bench/results/scale_mixed.md",
}
SAMPLE_AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus", ".webm", ".aac", ".wma", ".aiff"}


def _package_files():
    for path in sorted(ROOT.rglob("*.py")):
        yield str(path.relative_to(ROOT)), ast.parse(path.read_text(encoding="utf-8"), str(path))


def _is_sys_path(node) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name) \
        and node.value.id == "sys"


def sys_path_edits(tree: ast.AST) -> int:
    """Calls like sys.path.insert/append/extend/remove and assignments to sys.path or sys.path[...]."""
    count = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and _is_sys_path(node.func.value):
            count += 1
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            count += sum(_is_sys_path(t) or (isinstance(t, ast.Subscript) and _is_sys_path(t.value)) for t in targets)
    return count


def audio_suffix_literals(tree: ast.AST) -> int:
    """Set/list/tuple literals naming two or more audio file suffixes."""
    return sum(1 for node in ast.walk(tree) if isinstance(node, (ast.Set, ast.List, ast.Tuple)) and sum(
        isinstance(e, ast.Constant) and isinstance(e.value, str) and e.value.lower() in SAMPLE_AUDIO_SUFFIXES
        for e in node.elts) >= 2)


def session_constructions(tree: ast.AST) -> int:
    """onnxruntime InferenceSession(...) calls: the runtime's OnnxSession is the one builder."""
    return sum(1 for node in ast.walk(tree) if isinstance(node, ast.Call) and (
        (isinstance(node.func, ast.Attribute) and node.func.attr == "InferenceSession")
        or (isinstance(node.func, ast.Name) and node.func.id == "InferenceSession")))


def test_one_place_edits_sys_path():
    places = {rel: n for rel, tree in _package_files() if (n := sys_path_edits(tree))}
    assert places == {"run_by_path.py": 1}, f"sys.path is edited outside wavlink_edge/run_by_path.py: {places}"


def test_one_audio_suffix_list():
    places = {rel for rel, tree in _package_files() if audio_suffix_literals(tree)} - set(AUDIO_SUFFIX_SELECTIONS)
    assert places <= AUDIO_SUFFIX_HOMES, f"a second audio-suffix list (import runtime.inputs.AUDIO_SUFFIXES): {places - AUDIO_SUFFIX_HOMES}"


def test_one_session_builder():
    places = {rel for rel, tree in _package_files() if session_constructions(tree)}
    assert places == {"runtime/session.py"}, f"InferenceSession built outside runtime/session.py's OnnxSession: {places}"


def test_function_local_first_party_imports_say_why():
    """A first-party import inside a function is there for a cycle or an optional dependency, and says which
    in a comment on its line (ruff's PLC0415 stays off: third-party heavy imports are local by design)."""
    silent = []
    for path in sorted(ROOT.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").split("\n")
        for fn in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                first_party = (isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").startswith("wavlink_edge"))) \
                    or (isinstance(node, ast.Import) and any(a.name.startswith("wavlink_edge") for a in node.names))
                if first_party and "#" not in lines[node.lineno - 1]:
                    silent.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not silent, "function-local first-party imports without a reason: " + ", ".join(silent)


def test_the_duplicate_checkers_see_duplicates():
    """Controls: each checker counts the forms it is meant to catch."""
    sample = ast.parse("import sys\nsys.path.insert(0, 'x')\nsys.path = []\nS = {'.wav', '.FLAC'}\n"
                       "import onnxruntime as ort\nort.InferenceSession(b'')\n")
    assert sys_path_edits(sample) == 2 and audio_suffix_literals(sample) == 1 and session_constructions(sample) == 1
