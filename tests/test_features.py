"""The numpy Whisper front end against transformers' WhisperFeatureExtractor, plus windowing rules."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from wavlink_edge.runtime.features import (
    CHUNK_FRAMES,
    CHUNK_SAMPLES,
    MIN_TRIM_FRAMES,
    SAMPLE_RATE,
    clip_features,
    iter_windows,
    log_mel_spectrogram,
    trim_frames,
)

TOLERANCE = 1e-4


def _synthetic(kind: str) -> np.ndarray:
    rng = np.random.default_rng(7)
    if kind == "silence":
        return np.zeros(5 * SAMPLE_RATE, np.float32)
    if kind == "clipping":  # a tone driven far past full scale, hard-clipped
        t = np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
        return np.clip(8 * np.sin(2 * np.pi * 220 * t), -1, 1).astype(np.float32)
    seconds = {"1s": 1.0, "29.99s": 29.99, "30s": 30.0, "31s": 31.0}[kind]
    n = int(round(seconds * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)


@pytest.fixture(scope="module")
def extractors():
    transformers = pytest.importorskip("transformers")
    return {n: transformers.WhisperFeatureExtractor(feature_size=n) for n in (80, 128)}


def _reference(extractors, audio: np.ndarray, n_mels: int) -> np.ndarray:
    return extractors[n_mels](audio, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0]


@pytest.mark.parametrize("n_mels", [80, 128])
@pytest.mark.parametrize("kind", ["silence", "clipping", "1s", "29.99s", "30s", "31s"])
def test_log_mel_matches_whisper_feature_extractor_on_synthetic_audio(extractors, kind, n_mels):
    audio = _synthetic(kind)
    ours = log_mel_spectrogram(audio, n_mels)
    assert ours.shape == (n_mels, CHUNK_FRAMES) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, _reference(extractors, audio, n_mels), atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_whisper_feature_extractor_on_real_clips(extractors, sample_clips, n_mels):
    assert sample_clips
    for path in sample_clips:
        audio, rate = sf.read(path, dtype="float32")
        assert rate == SAMPLE_RATE
        np.testing.assert_allclose(log_mel_spectrogram(audio, n_mels), _reference(extractors, audio, n_mels),
                                   atol=TOLERANCE, rtol=0, err_msg=str(path))


def test_trim_frames_is_even_and_between_one_and_thirty_seconds():
    assert trim_frames(1) == MIN_TRIM_FRAMES
    assert trim_frames(SAMPLE_RATE * 5 + 1) == 502  # 500 full frames + 1 partial, rounded up to even
    assert trim_frames(CHUNK_SAMPLES * 3) == CHUNK_FRAMES
    assert all(trim_frames(n) % 2 == 0 for n in range(1, 50_000, 997))


def test_trim_features_are_a_prefix_of_pad_features():
    audio = _synthetic("1s")[: int(2.5 * SAMPLE_RATE)]
    pad, trim = clip_features(audio, 80, "pad"), clip_features(audio, 80, "trim")
    assert pad.shape == (80, CHUNK_FRAMES) and trim.shape == (80, trim_frames(audio.size))
    np.testing.assert_array_equal(trim, pad[:, : trim.shape[1]])
    with pytest.raises(ValueError, match="clip policy"):
        clip_features(audio, 80, "stretch")


def _window_lengths(seconds: float, hop_seconds: float = 30, block_seconds: float = 7) -> list[float]:
    audio = np.ones(int(seconds * SAMPLE_RATE), np.float32)
    step = int(block_seconds * SAMPLE_RATE)
    blocks = (audio[i:i + step] for i in range(0, audio.size, step))
    return [w.size / SAMPLE_RATE for w in iter_windows(blocks, int(hop_seconds * SAMPLE_RATE))]


@pytest.mark.parametrize("seconds, hop, expected", [
    (0.5, 30, [0.5]),                   # the only window is kept however short
    (30, 30, [30]),
    (60, 30, [30, 30]),                 # a window ending exactly at the end is the last one
    (60.5, 30, [30, 30]),               # a 0.5 s tail after other windows is dropped
    (65, 30, [30, 30, 5]),              # tails >= 1 s are kept
    (65, 10, [30, 30, 30, 30, 25]),     # overlapping windows stop at the first reaching the end
])
def test_windows_cover_long_audio(seconds, hop, expected):
    assert _window_lengths(seconds, hop) == pytest.approx(expected)


def test_window_hop_must_be_positive_and_at_most_a_window():
    with pytest.raises(ValueError, match="hop"):
        list(iter_windows([np.zeros(10, np.float32)], hop_samples=CHUNK_SAMPLES + 1))


# --- the trim policy computes only the frames a clip keeps ------------------------------------------

_PREFIX_LENGTHS = [0, 1, 150, 201, 399, 1000, SAMPLE_RATE - 1, SAMPLE_RATE, SAMPLE_RATE + 1, 5 * SAMPLE_RATE + 37,
                   12 * SAMPLE_RATE, CHUNK_SAMPLES - 1000, CHUNK_SAMPLES - 300, CHUNK_SAMPLES - 201,
                   CHUNK_SAMPLES - 1, CHUNK_SAMPLES, CHUNK_SAMPLES + 500]


@pytest.mark.parametrize("n", _PREFIX_LENGTHS)
def test_trim_is_exactly_the_prefix_of_the_padded_features(n):
    """Computed from the clip alone (plus the frames past its end that see audio and so can set the
    per-clip floor), yet equal to cutting the full 3000-frame padded features."""
    rng = np.random.default_rng(n)
    # a loud burst at the very end: the frames just past the kept ones hold the clip's max
    audio = (0.01 * rng.standard_normal(n)).astype(np.float32)
    audio[-min(n, 300):] *= 80
    full = log_mel_spectrogram(audio, 80)[:, : trim_frames(n)]
    got = clip_features(audio, 80, "trim")
    assert got.shape == full.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, full, atol=1e-6, rtol=0)


def test_trim_prefix_of_silence_and_of_a_tone():
    for audio in (np.zeros(3 * SAMPLE_RATE, np.float32), _synthetic("clipping")):
        np.testing.assert_allclose(clip_features(audio, 128, "trim"),
                                   log_mel_spectrogram(audio, 128)[:, : trim_frames(audio.size)], atol=1e-6, rtol=0)


@pytest.mark.parametrize("seconds", [0.5, 5.0, 12.3])
def test_trim_matches_whisper_feature_extractor(extractors, seconds):
    n = int(seconds * SAMPLE_RATE)
    audio = _synthetic("30s")[:n]
    keep = trim_frames(n)
    np.testing.assert_allclose(clip_features(audio, 80, "trim"), _reference(extractors, audio, 80)[:, :keep],
                               atol=TOLERANCE, rtol=0)


def test_the_window_comes_from_the_model():
    """A model with a shorter window (the manifest's max_frames) gets features of that window, not 30 s sliced."""
    audio = (0.1 * np.random.default_rng(3).standard_normal(SAMPLE_RATE * 3)).astype(np.float32)
    pad = clip_features(audio, 80, "pad", window_frames=100)
    assert pad.shape == (80, 100)
    np.testing.assert_array_equal(pad, log_mel_spectrogram(audio[:SAMPLE_RATE], 80, pad_to_seconds=1.0))
    assert clip_features(audio[:8000], 80, "trim", window_frames=100).shape == (80, 100)
    np.testing.assert_array_equal(clip_features(audio, 80, "trim"), clip_features(audio, 80, "trim", CHUNK_FRAMES))
    with pytest.raises(ValueError, match="window_frames"):
        clip_features(audio, 80, "pad", window_frames=3001)
