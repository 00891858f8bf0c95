"""Shared audio helpers: the runtime's sample rate and decoder (what users' audio goes through), float32
mono everywhere, loudness in dB."""
from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np

from wavlink_edge.runtime.audio import decode_audio  # 16 kHz mono float32, as served
from wavlink_edge.runtime.features import SAMPLE_RATE as SR

__all__ = ["SR", "run_to_wav", "rms_db", "set_rms_db", "trim_silence", "fade", "fit_length"]


def run_to_wav(cmd_with_placeholder: list[str], stdin: str | None = None) -> np.ndarray:
    """Run a renderer that writes a WAV to `{out}` and return its audio at 16 kHz.

    Every external tool writes to its own temp file, so parallel workers never share output paths.
    """
    with tempfile.TemporaryDirectory(prefix="wlcorpus_") as tmp:
        out = Path(tmp) / "out.wav"
        cmd = [c.replace("{out}", str(out)).replace("{tmp}", tmp) for c in cmd_with_placeholder]
        subprocess.run(cmd, input=stdin, text=True, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        return decode_audio(out)


def rms_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-12))


def set_rms_db(x: np.ndarray, target_db: float) -> np.ndarray:
    return (x * 10 ** ((target_db - rms_db(x)) / 20)).astype(np.float32)


def trim_silence(x: np.ndarray, thresh_db: float = -45.0) -> np.ndarray:
    """Drop leading/trailing near-silence so event positions and lengths mean what the caption says."""
    if not len(x):
        return x
    frame = 160
    n = len(x) // frame
    if n == 0:
        return x
    e = 10 * np.log10(np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(e > max(thresh_db, e.max() - 50))
    if not len(loud):
        return x
    return x[loud[0] * frame: (loud[-1] + 1) * frame]


def fade(x: np.ndarray, ms: float = 20.0) -> np.ndarray:
    n = min(len(x) // 2, int(SR * ms / 1000))
    if n > 0:
        x = x.copy()
        ramp = np.linspace(0, 1, n, dtype=np.float32)
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    return x


def fit_length(x: np.ndarray, n: int, rng: np.random.Generator, loop: bool = True) -> np.ndarray:
    """Crop a random window of n samples, or loop/zero-pad when the source is shorter."""
    if len(x) >= n:
        start = int(rng.integers(0, len(x) - n + 1))
        return x[start: start + n]
    if loop and len(x) > 0:
        reps = int(np.ceil(n / len(x)))
        return np.tile(x, reps)[:n]
    return np.pad(x, (0, n - len(x)))
