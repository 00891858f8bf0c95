"""Fuzz: random bytes as files, mutated real audio files, odd arrays and random text bytes.

Each item must give an embedding or a clear error naming it. The fuzz runs in a child process so a
native crash (libsndfile, soxr, ORT) fails the test instead of killing pytest.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

FUZZ_SCRIPT = textwrap.dedent(r"""
    import io, json, os, sys
    import numpy as np
    import soundfile as sf
    from wavlink_edge.runtime import TextInputError, WavLink

    export_dir, work, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = np.random.default_rng(seed)
    model = WavLink.from_pretrained(export_dir, clip_policy="trim")

    def valid_file(fmt, subtype=None):
        buffer = io.BytesIO()
        rate = int(rng.choice([8000, 16000, 44100]))
        audio = (0.3 * rng.standard_normal((rate // 2, int(rng.integers(1, 3))))).astype(np.float32)
        sf.write(buffer, audio, rate, format=fmt, subtype=subtype)
        return buffer.getvalue()

    def mutated(payload):
        data = bytearray(payload)
        for _ in range(int(rng.integers(1, 20))):
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        if rng.random() < 0.3:
            data = data[: int(rng.integers(0, len(data)))]
        return bytes(data)

    items = []
    templates = [("wav", "WAV", "PCM_16"), ("wav", "WAV", "FLOAT"), ("flac", "FLAC", None),
                 ("ogg", "OGG", None), ("mp3", "MP3", None)]
    for i in range(240):
        ext, fmt, subtype = templates[i % len(templates)]
        if i % 3 == 0:
            payload = rng.bytes(int(rng.integers(0, 4096)))
        elif i % 3 == 1:
            payload = valid_file(fmt, subtype)[:64] + rng.bytes(int(rng.integers(0, 2048)))  # real header, junk body
        else:
            payload = mutated(valid_file(fmt, subtype))
        path = os.path.join(work, f"fuzz_{i:03d}.{ext}")
        with open(path, "wb") as handle:
            handle.write(payload)
        items.append(path)

    def odd_array():
        dtype = rng.choice(["float16", "float32", "float64", "int8", "uint8", "int16", "uint16", "int32",
                            "int64", "bool", "complex64", "object", "str"])
        shape = [(0,), (1,), (int(rng.integers(1, 48000)),), (int(rng.integers(1, 8000)), int(rng.integers(1, 9))),
                 (3, 3, 3), (5, 0), (2, 70), ()][int(rng.integers(0, 8))]
        values = rng.standard_normal(shape) * float(rng.choice([1e-6, 1.0, 1e3, 1e40]))
        if values.size and rng.random() < 0.2:
            values.flat[int(rng.integers(0, values.size))] = rng.choice([np.nan, np.inf, -np.inf])
        try:
            array = values.astype(dtype)
        except (ValueError, OverflowError):
            array = values
        rate = rng.choice([16000, 8000, 96000, 0, -5, 12.5, 44100.0, 10**9, "x", None])
        return (array, rate.item() if hasattr(rate, "item") else rate)

    items += [odd_array() for _ in range(80)]
    ok = failed = 0
    for result in model.iter_embed_audio(items, dim=4, batch_size=8):
        if result.ok:
            assert result.embedding.shape == (4,) and np.isfinite(result.embedding).all(), result
            assert abs(np.linalg.norm(result.embedding) - 1) < 1e-4, result
            ok += 1
        else:
            assert result.error.startswith(result.source.split(" ")[0]), result.error
            failed += 1
    assert ok + failed == len(items)

    texts_ok = texts_failed = 0
    for _ in range(60):
        raw = rng.bytes(int(rng.integers(0, 300)))
        try:
            model.embed_text([raw], dim=4)
            texts_ok += 1
        except TextInputError as exc:
            assert "text[0]" in str(exc)
            texts_failed += 1
    print(json.dumps({"audio_ok": ok, "audio_failed": failed, "text_ok": texts_ok, "text_failed": texts_failed}))
""")


def test_fuzz_never_crashes_and_every_item_gets_a_result(tiny_export, tmp_path):
    done = subprocess.run([sys.executable, "-c", FUZZ_SCRIPT, str(tiny_export), str(tmp_path), "1234"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"fuzz child exited {done.returncode}\n{done.stderr[-4000:]}"
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["audio_ok"] + summary["audio_failed"] == 320
    assert summary["audio_ok"] > 0 and summary["audio_failed"] > 0  # both paths exercised
    assert summary["text_failed"] > 0
