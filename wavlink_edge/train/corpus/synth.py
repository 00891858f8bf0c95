"""Synthesised sounds: noise colours, tones, sweeps and click rhythms, with an amplitude envelope."""
from __future__ import annotations

import numpy as np

from .audio import SR

KINDS = {  # kind -> caption phrase
    "white noise": "white noise", "pink noise": "pink noise", "brown noise": "a low brown-noise rumble",
    "low tone": "a low hum", "high tone": "a high-pitched beep tone", "rising sweep": "a rising sine sweep",
    "falling sweep": "a falling sine sweep", "slow clicks": "slow rhythmic clicks", "fast clicks": "rapid ticking clicks",
}
ENVELOPES = ("steady", "pulsing", "fading in", "fading out")
NOISES = ("white noise", "pink noise", "brown noise")


def coloured_noise(colour: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Shape white noise in the frequency domain: 1/f power for pink, 1/f^2 for brown."""
    power = {"white noise": 0.0, "pink noise": 1.0, "brown noise": 2.0}[colour]
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.fft.rfftfreq(n, 1 / SR), 20.0)
    x = np.fft.irfft(spec / f ** (power / 2), n)
    return (x / (np.abs(x).max() + 1e-9)).astype(np.float32)


def envelope(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.linspace(0, 1, n, dtype=np.float32)
    if kind == "pulsing":
        rate = rng.uniform(1.0, 4.0) * n / SR
        return (0.5 + 0.5 * np.sign(np.sin(2 * np.pi * rate * t))).astype(np.float32) * 0.95 + 0.05
    if kind == "fading in":
        return t ** 1.5
    if kind == "fading out":
        return (1 - t) ** 1.5
    return np.ones(n, dtype=np.float32)


def render(kind: str, env: str, n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n, dtype=np.float64) / SR
    if kind in NOISES:
        x = coloured_noise(kind, n, rng)
    elif kind.endswith("tone"):
        f0 = rng.uniform(70, 180) if kind == "low tone" else rng.uniform(1500, 4000)
        x = np.sin(2 * np.pi * f0 * t) + 0.2 * np.sin(4 * np.pi * f0 * t)
    elif kind.endswith("sweep"):
        f_lo, f_hi = rng.uniform(100, 300), rng.uniform(2000, 6000)
        a, b = (f_lo, f_hi) if kind == "rising sweep" else (f_hi, f_lo)
        # exponential sweep: phase is the integral of a*(b/a)^(t/T)
        T = n / SR
        k = np.log(b / a) / T
        x = np.sin(2 * np.pi * a * (np.exp(k * t) - 1) / k)
    else:
        period = int(SR / (rng.uniform(1.5, 3) if kind == "slow clicks" else rng.uniform(8, 14)))
        x = np.zeros(n)
        click = np.exp(-np.arange(200) / 25.0) * rng.standard_normal(200)
        for s in range(0, n - 200, period):
            x[s: s + 200] += click
    return (x / (np.abs(x).max() + 1e-9) * envelope(env, n, rng)).astype(np.float32)
