"""The one place that edits ``sys.path``: a stage script run by its path runs as its package module.

``python export/to_onnx.py`` (the docs' paths) starts Python with the script's own folder on
``sys.path``, not the checkout's root, so ``import wavlink_edge`` would find an installed copy (stale
after an edit in the checkout) or nothing at all (a checkout used without an install). Each script
therefore begins with a two-line hook that hands over to :func:`run` here, loaded by file location::

    if not __package__:  # run by path: run as this checkout's package module (wavlink_edge/run_by_path.py)
        runpy.run_path(str(Path(__file__).resolve().parents[1] / "run_by_path.py"))["run"](__file__)

:func:`run` puts this checkout's root first on ``sys.path`` (and on ``PYTHONPATH``, so benchmark worker
processes started with ``python -m wavlink_edge...`` import the same checkout), then runs the script as
``wavlink_edge.<stage>.<name>`` with ``runpy`` -- one copy of each module, exactly what
``python -m wavlink_edge.<stage>.<name>`` or ``wavlink-edge <command>`` runs. Nothing else in the
package touches ``sys.path`` (tests/test_layers.py checks it).
"""
from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path


def module_name(script: Path, package_dir: Path) -> str:
    """``.../wavlink_edge/export/to_onnx.py`` -> ``wavlink_edge.export.to_onnx``."""
    parts = script.with_suffix("").relative_to(package_dir.parent).parts
    return ".".join(parts[:-1] if parts[-1] == "__main__" else parts)


def run(script: str) -> None:
    package_dir = Path(__file__).resolve().parent
    root = str(package_dir.parent)
    sys.path.insert(0, root)
    os.environ["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
    runpy.run_module(module_name(Path(script).resolve(), package_dir), run_name="__main__", alter_sys=True)
    raise SystemExit(0)  # the module ran to its end without calling sys.exit: so does the script
