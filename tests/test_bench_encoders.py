"""bench/encoders.py: goal table and report from measured rows (no timing asserted here)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
from wavlink_edge.bench import encoders as E  # noqa: E402
from wavlink_edge.bench import run_all  # noqa: E402


def _rows(int8_ms: dict, ct2_ms: dict) -> list[dict]:
    rows = []
    for (b, f), ms in int8_ms.items():
        rows.append({"backend": "ORT int8_dynamic", "kind": "ours", "batch": b, "frames": f, "p50_ms": ms})
        rows.append({"backend": "ORT fp32", "kind": "ours", "batch": b, "frames": f, "p50_ms": 2 * ms})
        rows.append({"backend": "CTranslate2 encode int8", "kind": "peer", "batch": b, "frames": f, "p50_ms": ct2_ms[(b, f)]})
        rows.append({"backend": "transformers WhisperEncoder SDPA", "kind": "peer", "batch": b, "frames": f,
                     "p50_ms": 3 * ct2_ms[(b, f)]})
    return rows


def test_goals_report_met_and_missed_with_the_ratio():
    int8 = {(1, 3000): 300.0, (4, 3000): 1100.0, (1, 500): 50.0, (4, 500): 180.0}
    ct2 = {(1, 3000): 500.0, (4, 3000): 2000.0, (1, 500): 40.0, (4, 500): 150.0}
    goals = {g["goal"]: g for g in E.goals(_rows(int8, ct2), {"ratio": 0.2}, {"hours": 2, "peak_rss_mb": 3200})}
    g = goals["int8 time / CT2 int8 time, b1 3000 frames"]
    assert g["value"] == pytest.approx(0.6) and not g["met"]
    assert not goals["int8 time / CT2 int8 time, b4 3000 frames"]["met"]  # 0.55 > 0.5: missed
    assert not goals["int8 time / CT2 int8 time, b1 500 frames"]["met"]
    assert goals["int8 speed-up vs ORT fp32, b1 3000 frames"]["value"] == pytest.approx(2.0)
    assert goals["int8 batching pays: b4 per item / b1, 3000 frames"]["met"]
    assert goals["front end: 5 s trim / 30 s"]["met"]
    assert not goals["peak RSS, 2 h file, defaults (MB)"]["met"]
    fastest = [k for k in goals if k.startswith("int8 time / fastest peer") and "b1 500" in k]
    assert fastest and "CTranslate2 encode int8" in fastest[0]


def test_markdown_and_readme_goal_lines():
    int8 = {s: 60.0 for s in E.SHAPES}
    rows = _rows(int8, {s: 150.0 for s in E.SHAPES})
    doc = {"command": "x", "threads": 2, "encoders": rows, "front_end": {"trim_5s_ms": 5.0, "trim_30s_ms": 30.0, "ratio": 1 / 6,
           "rounds": 3}, "end_to_end": [{"pipeline": "p", "clip_seconds": 5, "files_per_s": 3.0}], "long_file": None,
           "goals": E.goals(rows, None, None), "load_average": {"start": [1, 1, 1], "end": [1, 1, 1]}}
    md = E.markdown(doc)
    assert "| ORT int8_dynamic | 60 | 60 | 60 | 60 |" in md and "files/s" in md
    lines = run_all.goal_lines(doc)
    assert any("int8 time / CT2 int8 time, b1 3000 frames" in line and "yes" in line for line in lines)


def test_front_end_measure_runs():
    fe = E.front_end(rounds=1)
    assert fe["trim_5s_ms"] > 0 and fe["trim_30s_ms"] > 0 and np.isfinite(fe["ratio"])


def test_round_robin_runs_interleaved_bursts_and_keeps_cold_calls_apart():
    calls = []

    def runner(name):
        return lambda x: calls.append((name, x.shape))

    runners = {name: (runner(name), "ours") for name in ("a", "b")}
    rows = E.round_robin(runners, [(1, 3000)], rounds=2, burst=3, log=lambda *_: None)
    order = [name for name, _ in calls]
    assert order == ["a", "b"] + (["a"] * 4 + ["b"] * 4) * 2  # warm-up, then per round: 1 cold + 3 warm each
    assert [(r["backend"], r["burst"], r["rounds"]) for r in rows] == [("a", 3, 2), ("b", 3, 2)]
    assert all("p50_cold_ms" in r and r["p50_ms"] >= 0 for r in rows)
