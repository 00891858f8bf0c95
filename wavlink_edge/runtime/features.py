"""Whisper log-mel front end in numpy (no torch), equal to transformers' WhisperFeatureExtractor.

Recipe: 16 kHz mono, pad/trim to 30 s, periodic Hann(400), centred STFT with reflect
padding, hop 160, drop the last frame, |X|^2, Slaney mel filterbank 0-8 kHz, log10(max(x, 1e-10)),
floor at (max - 8) per clip, (x + 4) / 4.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from wavlink_edge.runtime.errors import UsageError

SAMPLE_RATE = 16_000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_SECONDS = 30
CHUNK_SAMPLES = SAMPLE_RATE * CHUNK_SECONDS  # 480 000
CHUNK_FRAMES = CHUNK_SAMPLES // HOP_LENGTH  # 3000
MIN_TRIM_FRAMES = 100  # 1 s: the shortest input the "trim" policy hands to the encoder
# The same log-mel as an ONNX graph (export/frontend_graph.py): waveform + frame_lengths -> input_features
WAVEFORM_FRONTEND_FILE = "audio_frontend.onnx"
FEATURE_ENGINES = ("numpy", "onnx")  # where the runtime computes log-mel: this module, or that graph


def _hz_to_mel(freq: np.ndarray) -> np.ndarray:
    # Slaney scale: linear below 1 kHz, logarithmic above (librosa htk=False).
    freq = np.asarray(freq, dtype=np.float64)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    mels = freq / f_sp
    log_region = freq >= min_log_hz
    mels = np.where(log_region, min_log_hz / f_sp + np.log(np.maximum(freq, 1e-10) / min_log_hz) / logstep, mels)
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(mels >= min_log_mel, min_log_hz * np.exp(logstep * (mels - min_log_mel)), f_sp * mels)


@lru_cache(maxsize=4)
def mel_filterbank(n_mels: int, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Slaney-normalised triangular filters, shape [n_freqs, n_mels] (float64, read-only)."""
    fft_freqs = np.linspace(0, sample_rate / 2, 1 + n_fft // 2)
    mel_points = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(8000.0), n_mels + 2))
    fdiff = np.diff(mel_points)
    slopes = mel_points[None, :] - fft_freqs[:, None]  # [n_freqs, n_mels + 2]
    down = -slopes[:, :-2] / fdiff[:-1]
    up = slopes[:, 2:] / fdiff[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    filters *= (2.0 / (mel_points[2:] - mel_points[:-2]))[None, :]
    filters.setflags(write=False)
    return filters


@lru_cache(maxsize=1)
def _periodic_hann(n: int = N_FFT) -> np.ndarray:
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)
    window.setflags(write=False)
    return window


def _mel_power(padded: np.ndarray, n_frames: int, n_mels: int) -> np.ndarray:
    """Mel power [n_frames, n_mels] of the first n_frames STFT frames of an already centre-padded signal."""
    frames = np.lib.stride_tricks.as_strided(
        padded, shape=(n_frames, N_FFT), strides=(padded.strides[0] * HOP_LENGTH, padded.strides[0])
    )
    spectrum = np.fft.rfft(frames * _periodic_hann(N_FFT), axis=-1)
    power = spectrum.real**2 + spectrum.imag**2  # [frames, n_freqs]
    return power @ mel_filterbank(n_mels)


def _finish(mel: np.ndarray, keep: int) -> np.ndarray:
    """log10, per-clip floor (max over every row of `mel`), scaling; the first `keep` frames as [n_mels, keep]."""
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec[:keep], log_spec.max() - 8.0)
    return np.ascontiguousarray(((log_spec + 4.0) / 4.0).T, dtype=np.float32)


def log_mel_spectrogram(audio: np.ndarray, n_mels: int = 80, pad_to_seconds: float | None = CHUNK_SECONDS) -> np.ndarray:
    """Log-mel features [n_mels, frames] (float32) of one 16 kHz mono clip.

    With ``pad_to_seconds=30`` (the default and the paper's input) the clip is zero-padded or cut to
    30 s and 3000 frames come back. ``None`` keeps the clip's own length (frames = len // 160).
    """
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if pad_to_seconds is not None:
        n = int(round(pad_to_seconds * SAMPLE_RATE))
        audio = audio[:n] if audio.size >= n else np.pad(audio, (0, n - audio.size))
    if audio.size < N_FFT // 2 + 1:
        raise ValueError(f"audio too short for an STFT: {audio.size} samples (need > {N_FFT // 2})")
    padded = np.pad(audio.astype(np.float64), N_FFT // 2, mode="reflect")
    n_frames = (padded.size - N_FFT) // HOP_LENGTH  # 1 + that, minus the last frame, as Whisper drops it
    return _finish(_mel_power(padded, n_frames, n_mels), n_frames)


def _trimmed_prefix(audio: np.ndarray, n_mels: int, window_samples: int = CHUNK_SAMPLES) -> np.ndarray | None:
    """The first trim_frames(len) frames of the 30 s padded features, computing only the frames needed.

    Frame i of the centred STFT reads padded samples [160 i - 200, 160 i + 200). So the kept frames need
    only the clip plus its zero padding, and the per-clip floor (max - 8) needs the max over every frame
    that sees any audio (up to 200 samples past the clip's end): frames made only of padding sit at the
    1e-10 floor and can never set it (an all-silent clip is the floor everywhere either way). None when
    those frames reach the right edge of the 30 s window, where the reflect padding of the full
    computation would matter: the caller then computes all 3000 frames.
    """
    n = audio.size
    keep = trim_frames(n, window_samples // HOP_LENGTH)
    sees_audio = (n + N_FFT // 2 - 1) // HOP_LENGTH + 1  # frames i with 160 i - 200 < n
    n_frames = max(keep, sees_audio)
    end = HOP_LENGTH * (n_frames - 1) + N_FFT // 2  # last sample (exclusive) the last frame reads
    if end > window_samples:
        return None
    signal = np.zeros(end, np.float64)
    signal[:n] = audio
    padded = np.pad(signal, (N_FFT // 2, 0), mode="reflect")  # left edge exactly as the full computation
    return _finish(_mel_power(padded, n_frames, n_mels), keep)


def trim_frames(n_samples: int, window_frames: int = CHUNK_FRAMES) -> int:
    """Frames the "trim" policy keeps for a clip of n_samples: those holding audio, even, 1 s up to the
    window (30 s for Whisper)."""
    frames = -(-n_samples // HOP_LENGTH)
    frames += frames % 2  # the encoder's stride-2 conv halves it
    return int(min(window_frames, max(min(MIN_TRIM_FRAMES, window_frames), frames)))


CLIP_POLICIES = ("pad", "trim")
MIN_WINDOW_SAMPLES = SAMPLE_RATE  # a trailing partial window shorter than 1 s adds noise, not content


def clip_features(audio: np.ndarray, n_mels: int, policy: str, window_frames: int = CHUNK_FRAMES) -> np.ndarray:
    """Encoder input for one window (``window_frames``: the model's ``max_frames``, 3000 = 30 s for
    Whisper) under a clip policy.

    ``pad``: the paper's input, log-mel of the window padded to its full length. ``trim``: the same
    features cut to ``trim_frames`` -- a prefix of the padded ones (same per-clip log floor), never
    re-padded, so results do not depend on how inputs are batched. Only the kept frames (and the few
    past them that see audio) are computed: a 5 s clip costs a sixth of a 30 s one.
    """
    if policy not in CLIP_POLICIES:
        raise UsageError(f"unknown clip policy {policy!r}; choose one of {', '.join(CLIP_POLICIES)}")
    if not 1 <= window_frames <= CHUNK_FRAMES:
        raise UsageError(f"window_frames must be in 1..{CHUNK_FRAMES}, got {window_frames}")
    window_samples = window_frames * HOP_LENGTH
    if policy == "trim":
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        prefix = _trimmed_prefix(audio, n_mels, window_samples) if audio.size <= window_samples else None
        if prefix is not None:  # only the frames the clip keeps (and those that set its floor)
            return prefix
        full = log_mel_spectrogram(audio, n_mels, window_samples / SAMPLE_RATE)
        return np.ascontiguousarray(full[:, : trim_frames(audio.size, window_frames)])
    return log_mel_spectrogram(audio, n_mels, window_samples / SAMPLE_RATE)


def clip_frames(n_samples: int, policy: str, window_frames: int = CHUNK_FRAMES) -> int:
    """Frames ``clip_features`` returns for a window of n_samples under a policy."""
    return window_frames if policy == "pad" else trim_frames(n_samples, window_frames)


def waveform_width(n_samples: int, frames: int, window_samples: int = CHUNK_SAMPLES) -> int:
    """Samples a row of the waveform-in graph (export/frontend_graph.py) must hold, zero-padded, for its first
    ``frames`` log-mel frames and its per-clip floor to equal ``clip_features``: every frame that sees audio plus
    one more of zeros (samples + N_FFT), at least ``frames`` hops, in whole hops; the whole window when that is
    more (then the graph's reflect padding reads what the reference's does)."""
    need = max(HOP_LENGTH * frames, n_samples + N_FFT)
    need = -(-need // HOP_LENGTH) * HOP_LENGTH
    return window_samples if need >= window_samples else need


def waveform_batch(windows: list[np.ndarray], frames: list[int], window_samples: int = CHUNK_SAMPLES) -> np.ndarray:
    """Windows zero-padded to one width (the widest ``waveform_width`` of them): the graph's ``waveform`` input."""
    width = max(waveform_width(w.size, f, window_samples) for w, f in zip(windows, frames))
    batch = np.zeros((len(windows), width), np.float32)
    for row, window in zip(batch, windows):
        row[: window.size] = window
    return batch


def iter_windows(blocks, hop_samples: int = CHUNK_SAMPLES, window_samples: int = CHUNK_SAMPLES,
                 min_samples: int = MIN_WINDOW_SAMPLES):
    """Split a stream of 16 kHz blocks into 30 s windows starting every ``hop_samples``.

    Windowing stops at the first window that reaches the end of the audio. That last window may be
    partial; it is kept if it holds >= ``min_samples`` or is the only window. Holds at most one window
    plus one block, whatever the stream's length.
    """
    if not 0 < hop_samples <= window_samples:
        raise UsageError(f"window hop must be in (0, {window_samples / SAMPLE_RATE:g} s], "
                         f"got {hop_samples / SAMPLE_RATE:g} s")
    buffer = np.zeros(0, np.float32)
    emitted = False
    for block in blocks:
        buffer = np.concatenate([buffer, block]) if buffer.size else block
        # Strictly more than a window: only then is it certain this window does not reach the end.
        while buffer.size > window_samples:
            yield buffer[:window_samples].copy()
            emitted = True
            buffer = buffer[hop_samples:]
    if buffer.size and (buffer.size >= min_samples or not emitted):
        yield buffer.copy()
