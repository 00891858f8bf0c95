"""Audio decoding: files or (array, sample_rate) pairs -> 16 kHz mono float32.

Files are read by libsndfile (WAV, FLAC, Ogg, MP3, AIFF, ...) and, where it cannot, by FFmpeg through
PyAV (AAC in .m4a/.mp4/.mov, Opus/Vorbis in .webm, .wma, a video's audio track). Both paths hand native-
rate blocks to the same down-mix and soxr resampler, so a format never changes how samples are resampled.

Audio is produced as a stream of blocks so an hours-long file never sits in memory whole: files are read
``BLOCK_FRAMES`` frames at a time, down-mixed (mean over channels) and resampled with a streaming soxr
resampler. In-memory arrays go through the same path, so a file and the array read from it give the
same samples.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Union

import numpy as np
import soundfile as sf
import soxr

from wavlink_edge.runtime.errors import AudioInputError
from wavlink_edge.runtime.features import SAMPLE_RATE

# Reads are at most 10 s and at most 2**18 frames (2.7 s at 96 kHz; 6 MB for 6-channel float32), so the
# decoder's memory is bounded whatever the file's length, rate or channel count.
BLOCK_SECONDS = 10
BLOCK_FRAMES = 1 << 18
MAX_CHANNELS = 64
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1_000, 768_000
# libsndfile reports exact frame counts for these; fewer frames read than announced means truncation.
# (MP3 lengths are estimates, so a short read there is not an error.)
EXACT_LENGTH_FORMATS = {"WAV", "WAVEX", "RF64", "W64", "FLAC", "AIFF", "CAF", "AU", "OGG"}

AudioInput = Union[str, os.PathLike, tuple]


def is_array_pair(item: object) -> bool:
    """True for one (ndarray, sample_rate) item, as opposed to a tuple of several items."""
    return (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], np.ndarray)
            and isinstance(item[1], (int, float, np.integer, np.floating)) and not isinstance(item[1], bool))


def describe_source(item: object, index: int) -> str:
    """A short, stable name for an input item, used in results and error messages."""
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    if isinstance(item, tuple) and len(item) == 2:
        array, rate = item
        shape = getattr(array, "shape", None)
        return f"array[{index}] (shape {shape}, {rate} Hz)" if shape is not None else f"array[{index}]"
    return f"input[{index}] ({type(item).__name__})"


def iter_audio_blocks(item: AudioInput, source: str | None = None) -> Iterator[np.ndarray]:
    """16 kHz mono float32 blocks of one input item; raises AudioInputError naming it when unusable."""
    source = source or describe_source(item, 0)
    # A generator throughout, so every problem surfaces on iteration, where callers handle item errors.
    if isinstance(item, (str, os.PathLike)):
        yield from _file_blocks(Path(item), source)
    elif isinstance(item, tuple) and len(item) == 2:
        yield from _array_blocks(item[0], item[1], source)
    else:
        raise AudioInputError(f"{source}: expected a file path or an (array, sample_rate) pair")


def decode_audio(item: AudioInput) -> np.ndarray:
    """The whole item as one 16 kHz mono float32 array (convenience for short clips; not for long files)."""
    return np.concatenate(list(iter_audio_blocks(item)))


class _MonoResampler:
    """Down-mix + streaming resample to 16 kHz; counts output samples and checks they are finite."""

    def __init__(self, rate: int, source: str):
        self.source = source
        self.stream = None if rate == SAMPLE_RATE else soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32")
        self.samples_in = 0

    def process(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        """block: float32 [frames, channels]."""
        if block.size and not np.isfinite(block).all():
            bad = int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
            raise AudioInputError(f"{self.source}: NaN or Inf sample at frame {self.samples_in + bad}")
        self.samples_in += block.shape[0]
        mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
        if self.stream is None:
            return np.ascontiguousarray(mono, dtype=np.float32)
        return self.stream.resample_chunk(np.ascontiguousarray(mono, dtype=np.float32), last=last)


def _file_blocks(path: Path, source: str) -> Iterator[np.ndarray]:
    if not path.exists():
        if os.path.lexists(path):
            raise AudioInputError(f"{source}: broken symbolic link or symlink loop")
        raise AudioInputError(f"{source}: file not found")
    if not path.is_file():
        raise AudioInputError(f"{source}: not a regular file")
    if path.stat().st_size == 0:
        raise AudioInputError(f"{source}: empty file (0 bytes)")
    try:
        handle = sf.SoundFile(os.fsencode(path))  # bytes: a name that is not valid UTF-8 still opens
    except Exception as exc:  # libsndfile's errors are RuntimeError/LibsndfileError/TypeError depending on version
        yield from _ffmpeg_blocks(path, source, _sf_reason(exc))
        return
    with handle:
        rate, channels, announced, container = handle.samplerate, handle.channels, handle.frames, handle.format
        _check_rate_and_channels(rate, channels, source)
        _check_wav_data_size(handle, source)
        if container == "OGG":
            _check_ogg_end_of_stream(path, source)
        resampler = _MonoResampler(rate, source)
        block_frames = _block_frames(rate)
        while True:
            try:
                block = handle.read(block_frames, dtype="float32", always_2d=True)
            except Exception as exc:
                raise AudioInputError(
                    f"{source}: decoding failed after {resampler.samples_in} frames ({_sf_reason(exc)})") from None
            if block.shape[0] == 0:
                break
            out = resampler.process(block)
            if out.size:
                yield out
    if resampler.samples_in == 0:
        raise AudioInputError(f"{source}: no audio samples (0 frames)")
    if resampler.samples_in < announced and container in EXACT_LENGTH_FORMATS:
        raise AudioInputError(f"{source}: truncated file: header announces {announced} frames, "
                              f"only {resampler.samples_in} could be read")
    tail = resampler.process(np.zeros((0, 1), np.float32), last=True)
    if tail.size:
        yield tail


# Containers FFmpeg may hold audio in; other files libsndfile refuses are not handed to FFmpeg, whose
# probing would otherwise "decode" some corrupt or non-audio files as a few frames of noise.
FFMPEG_SUFFIXES = {".m4a", ".mp4", ".m4b", ".mov", ".3gp", ".aac", ".webm", ".mkv", ".mka", ".opus", ".wma",
                   ".wmv", ".asf", ".avi", ".flv", ".ac3", ".amr", ".mpg", ".mpeg", ".ts", ".caf"}


def _ffmpeg_blocks(path: Path, source: str, sf_reason: str) -> Iterator[np.ndarray]:
    """Decode with FFmpeg (PyAV): the one audio stream of a container, at its own rate, as float32 blocks."""
    if path.suffix.lower() not in FFMPEG_SUFFIXES:
        raise AudioInputError(f"{source}: not a readable audio file ({sf_reason})")
    try:
        import av
    except ImportError:
        raise AudioInputError(f"{source}: not a readable audio file ({sf_reason}); {path.suffix} files are decoded "
                              "by FFmpeg through PyAV, which is not installed (pip install av)") from None
    _check_matroska_complete(path, source)
    try:
        with open(path, "rb") as raw, av.open(raw, mode="r") as container:  # a file object: any file name opens
            streams = container.streams.audio
            if len(streams) != 1:
                other = ", ".join(f"{s.type}:{s.codec_context.name}" for s in container.streams) or "none"
                raise AudioInputError(f"{source}: {len(streams) or 'no'} audio stream{'s' if len(streams) != 1 else ''} "
                                      f"(streams: {other}); " + ("extract the one to embed, e.g. ffmpeg -i IN -map 0:a:0 "
                                      "OUT.wav" if streams else "nothing to embed"))
            stream = streams[0]
            rate, channels = stream.codec_context.sample_rate, stream.codec_context.channels
            _check_rate_and_channels(rate, channels, source)
            # Packed float32 at the stream's own rate and layout: down-mix and resampling stay ours.
            to_float = av.AudioResampler(format="flt", layout=stream.codec_context.layout, rate=rate)
            resampler, pending, pending_frames = _MonoResampler(rate, source), [], 0
            block_frames = _block_frames(rate)
            try:
                for frame in container.decode(stream):
                    for converted in to_float.resample(frame):
                        pending.append(converted.to_ndarray().reshape(-1, channels))
                        pending_frames += pending[-1].shape[0]
                    if pending_frames >= block_frames:
                        out = resampler.process(np.concatenate(pending))
                        pending, pending_frames = [], 0
                        if out.size:
                            yield out
            except av.FFmpegError as exc:
                raise AudioInputError(f"{source}: decoding failed after {resampler.samples_in + pending_frames} "
                                      f"frames ({exc})") from None
            last = np.concatenate(pending) if pending else np.zeros((0, channels), np.float32)
    except av.FFmpegError as exc:
        raise AudioInputError(f"{source}: not a readable audio file ({sf_reason}; FFmpeg: {exc})") from None
    if resampler.samples_in + last.shape[0] == 0:
        raise AudioInputError(f"{source}: no audio samples (0 frames)")
    out = resampler.process(last, last=True)
    if out.size:
        yield out


def _array_blocks(array: object, rate: object, source: str) -> Iterator[np.ndarray]:
    rate = _check_rate_value(rate, source)
    samples = _as_samples_by_channels(array, source)
    _check_rate_and_channels(rate, samples.shape[1], source)
    if samples.shape[0] == 0:
        raise AudioInputError(f"{source}: no audio samples (0 frames)")
    resampler = _MonoResampler(rate, source)
    n, step = samples.shape[0], _block_frames(rate)
    for start in range(0, n, step):
        block = _pcm_to_float32(samples[start:start + step])
        out = resampler.process(block, last=start + step >= n)
        if out.size:
            yield out


# libsndfile clamps a WAV whose data chunk claims more bytes than the file holds, and only notes it in its
# log ("data : 64000 (should be 31978)"); a cut-off download would otherwise embed silently.
_WAV_DATA_SIZE = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Streaming writers (ffmpeg to a pipe) leave 0 or 0xFFFFFFFF as the size: a placeholder, not a truncation.
_PLACEHOLDER_SIZES = {0, 0xFFFFFFFF, 0x7FFFFFFF}


def _check_wav_data_size(handle: sf.SoundFile, source: str) -> None:
    match = _WAV_DATA_SIZE.search(handle.extra_info or "")
    if match:
        declared, present = int(match.group(1)), int(match.group(2))
        if declared > present and declared not in _PLACEHOLDER_SIZES:
            raise AudioInputError(f"{source}: truncated file: header announces {declared} bytes of audio data, "
                                  f"the file holds {present}")


def _check_ogg_end_of_stream(path: Path, source: str) -> None:
    """libsndfile takes an Ogg file's length from its last page, so a cut-off file reads as a shorter clip.
    A complete stream's last page carries the end-of-stream flag (header byte 5, bit 2) and holds exactly
    the bytes its segment table announces: check both (a cut inside the last page keeps its flag)."""
    with open(path, "rb") as raw:
        raw.seek(max(0, path.stat().st_size - _OGG_TAIL_BYTES))
        tail = raw.read()
    last_page = tail.rfind(b"OggS")
    header_end = last_page + 27
    if last_page < 0 or header_end > len(tail) or not tail[last_page + 5] & 0x04:
        raise AudioInputError(f"{source}: truncated file: the Ogg stream ends without its end-of-stream page")
    segments = tail[last_page + 26]
    table = tail[header_end:header_end + segments]
    if len(table) < segments or header_end + segments + sum(table) != len(tail):
        raise AudioInputError(f"{source}: truncated file: the Ogg stream's last page is incomplete")


_OGG_TAIL_BYTES = 1 << 16  # an Ogg page is at most ~64 kB, so the last page header lies in this tail

_EBML_MAGIC, _MATROSKA_SEGMENT, _MATROSKA_CLUSTER = 0x1A45DFA3, 0x18538067, 0x1F43B675


def _check_matroska_complete(path: Path, source: str) -> None:
    """FFmpeg decodes a cut-off WebM/Matroska file as a shorter clip, silently (the Ogg check's counterpart).
    Every element declares its size, so the file must hold all the bytes the Segment declares and, walking
    the Segment's top-level children (SeekHead, Info, Tracks, Clusters ...: a few bytes read per element,
    not the audio), each child's declared end. A size the writer left unknown (live recording) ends the
    walk: nothing more can be told. Files that are not EBML pass untouched."""
    size = path.stat().st_size
    with open(path, "rb") as raw:
        if _read_ebml_id(raw) != _EBML_MAGIC:
            return
        header_size = _read_ebml_size(raw)
        if header_size is None:
            return
        raw.seek(header_size, os.SEEK_CUR)
        if _read_ebml_id(raw) != _MATROSKA_SEGMENT:
            return
        segment_size = _read_ebml_size(raw)
        segment_start = raw.tell()
        if segment_size is not None and segment_start + segment_size > size:
            raise AudioInputError(f"{source}: truncated file: the WebM/Matroska segment announces "
                                  f"{segment_start + segment_size} bytes, the file holds {size}")
        end = size if segment_size is None else segment_start + segment_size
        position = segment_start
        while position < end:
            raw.seek(position)
            element, length = _read_ebml_id(raw), _read_ebml_size(raw)
            if element is None or length is None:
                return  # unreadable id or a size left unknown: the decoder is the judge from here
            position = raw.tell() + length
            if position > size:
                what = "a cluster of audio" if element == _MATROSKA_CLUSTER else f"element 0x{element:X}"
                raise AudioInputError(f"{source}: truncated file: {what} announces {length} bytes, the file ends "
                                      f"{position - size} bytes short")


def _read_ebml_vint(raw) -> tuple[int, int] | None:
    first = raw.read(1)
    if not first or first[0] == 0:
        return None
    length = 9 - first[0].bit_length()
    rest = raw.read(length - 1)
    if len(rest) != length - 1:
        return None
    return int.from_bytes(first + rest, "big"), length


def _read_ebml_id(raw) -> int | None:
    vint = _read_ebml_vint(raw)
    return None if vint is None else vint[0]  # an ID keeps its length marker


def _read_ebml_size(raw) -> int | None:
    """A data size, or None when unreadable or "unknown" (every value bit set)."""
    vint = _read_ebml_vint(raw)
    if vint is None:
        return None
    value, length = vint
    bits = 7 * length
    value &= (1 << bits) - 1
    return None if value == (1 << bits) - 1 else value


def _block_frames(rate: int) -> int:
    return min(BLOCK_FRAMES, BLOCK_SECONDS * rate)


def _check_rate_value(rate: object, source: str) -> int:
    if isinstance(rate, (bool, np.bool_)) or not isinstance(rate, (int, np.integer, float, np.floating)):
        raise AudioInputError(f"{source}: sample rate must be a number, got {type(rate).__name__}")
    if not np.isfinite(rate) or float(rate) != int(rate):
        raise AudioInputError(f"{source}: sample rate must be a whole number of Hz, got {rate!r}")
    return int(rate)


def _check_rate_and_channels(rate: int, channels: int, source: str) -> None:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioInputError(f"{source}: sample rate {rate} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz")
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioInputError(f"{source}: {channels} channels (expected 1..{MAX_CHANNELS}; arrays are "
                              "[samples] or [samples, channels] -- transpose a [channels, samples] array)")


def _as_samples_by_channels(array: object, source: str) -> np.ndarray:
    try:
        samples = np.asarray(array)
    except Exception as exc:
        raise AudioInputError(f"{source}: not an array ({exc})") from None
    if samples.dtype.kind not in "iuf":
        raise AudioInputError(f"{source}: audio dtype {samples.dtype} is not integer or float PCM")
    if samples.ndim == 1:
        return samples[:, None]
    if samples.ndim == 2:
        return samples
    raise AudioInputError(f"{source}: audio must be 1-D [samples] or 2-D [samples, channels], got shape {samples.shape}")


def _pcm_to_float32(block: np.ndarray) -> np.ndarray:
    """Integer PCM to [-1, 1) the way libsndfile scales it; floats pass through unscaled."""
    if block.dtype.kind == "f":
        with np.errstate(over="ignore"):  # float64 beyond float32 range becomes Inf and is reported as such
            return block.astype(np.float32)
    bits = block.dtype.itemsize * 8
    scale = np.float64(2.0 ** (bits - 1))
    offset = scale if block.dtype.kind == "u" else 0.0  # unsigned PCM (e.g. 8-bit WAV) is centred on 2**(bits-1)
    return ((block.astype(np.float64) - offset) / scale).astype(np.float32)


def _sf_reason(exc: Exception) -> str:
    text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
    text = re.sub(r"^Error opening .*?: ", "", text)  # the path is already in our message
    if "File does not exist or is not a regular file" in text:  # what libsndfile says of a corrupt MP3
        text = "unrecognised or corrupt data"
    return text[:200]
