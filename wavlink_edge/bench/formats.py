"""Do compressed copies of a recording embed like the original? AAC (phone/camera .m4a), Opus (browser
.webm) and WMA copies of real clips, made with FFmpeg through PyAV, against the lossless file.

    python bench/formats.py --model exports/wavlink-base [--precision fp32] [--bitrate 64000]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf

if not __package__:  # run by path: run as this checkout's package module (wavlink_edge/run_by_path.py says why)
    import runpy
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "run_by_path.py"))["run"](__file__)

from wavlink_edge.runtime import WavLink
from wavlink_edge.runtime.bundled import sample_clips

# (suffix, codec, container format, sample rate): what phones, browsers and old Windows recorders write.
COPIES = [(".m4a", "aac", None, None), (".webm", "libopus", None, 48000), (".wma", "wmav2", "asf", 22050)]


def encode_with_ffmpeg(wav: Path, out: Path, codec: str | None, container: str | None = None, rate: int | None = None,
                       video: bool = False, audio_streams: int = 1, bitrate: int = 64000) -> Path:
    """A copy of ``wav`` in another container/codec, written by FFmpeg through PyAV."""
    import av
    data, sr = sf.read(wav, dtype="float32", always_2d=True)
    rate = rate or sr
    with av.open(str(out), "w", format=container) as muxer:
        picture = None
        if video:
            picture = muxer.add_stream("mpeg4", rate=10)
            picture.width, picture.height, picture.pix_fmt = 64, 48, "yuv420p"
        streams = [muxer.add_stream(codec, rate=rate, layout="mono") for _ in range(audio_streams)] if codec else []
        if picture is not None:
            for _ in range(5):
                frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
                for packet in picture.encode(frame):
                    muxer.mux(packet)
            for packet in picture.encode():
                muxer.mux(packet)
        for stream in streams:
            stream.bit_rate = bitrate
            frame = av.AudioFrame.from_ndarray(data[:, :1].T.copy(), format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = sr, 0, Fraction(1, sr)  # timed: priming gets an edit list
            convert = av.AudioResampler(format=stream.codec_context.format.name, layout="mono", rate=rate,
                                        frame_size=stream.codec_context.frame_size or None)
            for converted in convert.resample(frame) + convert.resample(None):
                for packet in stream.encode(converted):
                    muxer.mux(packet)
            for packet in stream.encode(None):
                muxer.mux(packet)
    return out



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("exports/wavlink-base"))
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--bitrate", type=int, default=64000)
    args = parser.parse_args(argv)
    model = WavLink.from_pretrained(args.model, precision=args.precision)
    clips = sample_clips()
    print(f"| clip | {' | '.join(f'{s[1:]} ({c}, {args.bitrate // 1000} kb/s)' for s, c, _, _ in COPIES)} |")
    print("|---|" + "---|" * len(COPIES))
    worst = 1.0
    with tempfile.TemporaryDirectory() as tmp:
        for clip in clips:
            copies = [encode_with_ffmpeg(clip, Path(tmp) / (clip.stem + s), c, f, r, bitrate=args.bitrate)
                      for s, c, f, r in COPIES]
            original, *encoded = model.embed_audio([clip, *copies])
            cosines = [float(original @ e) for e in encoded]
            worst = min(worst, *cosines)
            print(f"| {clip.name} | {' | '.join(f'{c:.4f}' for c in cosines)} |")
    print(f"worst cosine {worst:.4f} ({model.spec.name}, {args.precision})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
