"""WEALY training pieces: version-matching metrics, NT-Xent, the head trainer, the versions corpus plan."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from wavlink_edge.train.wealy.corpus import VOICES, plan, render_voice, song_lines  # noqa: E402
from wavlink_edge.train.wealy.train import nt_xent, rank_metrics, train_head, version_metrics  # noqa: E402


def test_rank_metrics_by_hand():
    songs = np.array([0, 0, 1, 1])
    sim = np.array([[9, 1, 5, 0],    # clip 0: its version ranks 2nd of 3 -> AP 1/2, rank 2
                    [1, 9, 0, 5],    # clip 1: clip 0 ranks 2nd (after clip 3) -> AP 1/2
                    [5, 0, 9, 4],    # clip 2: clip 3 ranks 2nd (after clip 0) -> AP 1/2
                    [0, 5, 4, 9]], float)  # clip 3: clip 2 ranks 2nd -> AP 1/2
    out = rank_metrics(sim, songs)
    assert out == {"MAP": 0.5, "MR1": 2.0, "P@1": 0.0}
    perfect = version_metrics(np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1]]), songs)
    assert perfect == {"MAP": 1.0, "MR1": 1.0, "P@1": 1.0}


def test_nt_xent_prefers_matching_pairs():
    a = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    aligned = nt_xent(a, a)
    shuffled = nt_xent(a, a[torch.randperm(8)])
    assert aligned < shuffled
    assert nt_xent(a, a, tau=0.05) < aligned  # sharper temperature, same perfect pairs -> lower loss


def test_head_learns_song_identity_from_noisy_states():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((12, 512)).astype(np.float32)
    states = {s: [centres[s] + 1.5 * rng.standard_normal((int(rng.integers(4, 9)), 512)).astype(np.float32)
                  for _ in range(3)] for s in range(12)}
    flat = [x for s in range(12) for x in states[s]]
    songs = np.repeat(np.arange(12), 3)
    calls = []

    def evaluate(head):
        from wavlink_edge.train.wealy.train import embed

        calls.append(version_metrics(embed(head, flat), songs)["MAP"])
        return {"MAP": calls[-1]}

    torch.set_num_threads(1)  # tiny matrices: spinning OpenMP threads cost minutes on a loaded machine
    head, history = train_head(states, steps=24, songs_per_batch=8, eval_every=12, eval_fn=evaluate)
    assert [h["step"] for h in history] == [12, 24]
    assert calls[-1] > 0.9


def test_plan_holds_out_whole_songs_and_varies_versions():
    versions = plan(n_songs=10, versions=4, n_test=3, seed=1)
    splits = {}
    for v in versions:
        splits.setdefault(v.song, set()).add(v.split)
    assert all(len(s) == 1 for s in splits.values()) and sum(s == {"test"} for s in splits.values()) == 3
    for song in range(10):
        mine = [v for v in versions if v.song == song]
        assert len({v.voice for v in mine}) == 4 and len({v.lyrics for v in mine}) == 1
    assert song_lines(0, 1) != song_lines(1, 1) and song_lines(0, 1) == song_lines(0, 1)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng (Debian package espeak-ng) is not installed")
def test_a_version_renders_as_speech():
    v = next(v for v in plan(2, 2, 1) if v.engine == "espeak-ng")
    audio = render_voice(v)
    assert 1.0 < len(audio) / 16000 < 20 and np.abs(audio).max() > 0.05
    assert any(engine == "festival" for engine, _ in VOICES)
