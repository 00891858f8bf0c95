"""Fuzz: random bytes as files, mutated real audio files, odd arrays, random text bytes, random call
parameters and random manifests -- 1000 generated bad (or odd) inputs in all.

Each item must give an embedding or a clear error naming it, exactly once, in input order. The fuzz runs in a child process so a
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
    for i in range(400):
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

    items += [odd_array() for _ in range(200)]
    ok = failed = 0
    order = []
    for result in model.iter_embed_audio(items, dim=4, batch_size=8):
        order.append(result.index)
        if result.ok:
            assert result.embedding.shape == (4,) and np.isfinite(result.embedding).all(), result
            assert abs(np.linalg.norm(result.embedding) - 1) < 1e-4, result
            ok += 1
        else:
            assert result.error.startswith(result.source.split(" ")[0]), result.error
            failed += 1
    assert ok + failed == len(items) and order == list(range(len(items)))

    texts_ok = texts_failed = 0
    for _ in range(200):
        raw = rng.bytes(int(rng.integers(0, 300)))
        try:
            model.embed_text([raw], dim=4)
            texts_ok += 1
        except TextInputError as exc:
            assert "text[0]" in str(exc)
            texts_failed += 1

    # Call parameters: wrong types and values give ValueError/TypeError-free, clear ValueErrors.
    from wavlink_edge.runtime import InputError, ModelFilesError, WavLinkError
    odd = [None, 0, -1, 2.5, "8", True, 10**9, [], float("nan"), 4]
    params_ok = params_refused = 0
    for _ in range(100):
        kwargs = {key: odd[int(rng.integers(0, len(odd)))] for key in ("dim", "batch_size")
                  if rng.random() < 0.7}
        call = rng.choice(["audio", "text"])
        try:
            if call == "audio":
                model.embed_audio([(np.zeros(1600, np.float32), 16000)], **kwargs)
            else:
                model.embed_text(["x"], **kwargs)
            params_ok += 1
        except (ValueError, InputError) as exc:
            assert str(exc), kwargs
            params_refused += 1

    # Manifests: random edits of a valid one are refused with ModelFilesError, or load.
    import copy, shutil
    manifest = json.load(open(os.path.join(export_dir, "manifest.json")))
    values = [None, 0, -1, "", "x", [], {}, "../x", "/etc/passwd", 1e30, "a" * 300, {"tower": "audio"}]
    manifests_ok = manifests_refused = 0
    for i in range(100):
        edited = copy.deepcopy(manifest)
        section = edited if rng.random() < 0.3 else edited["model"] if rng.random() < 0.5 else edited["artifacts"]
        key = list(section)[int(rng.integers(0, len(section)))] if section and rng.random() < 0.8 else "../evil"
        section[key] = values[int(rng.integers(0, len(values)))]
        target = os.path.join(work, f"manifest_{i:03d}")
        shutil.copytree(export_dir, target)
        with open(os.path.join(target, "manifest.json"), "w") as handle:
            json.dump(edited, handle)
        try:
            WavLink.from_pretrained(target)
            manifests_ok += 1
        except (ModelFilesError, WavLinkError, ValueError) as exc:
            assert str(exc)
            manifests_refused += 1
        shutil.rmtree(target)
    print(json.dumps({"audio_ok": ok, "audio_failed": failed, "text_ok": texts_ok, "text_failed": texts_failed,
                      "params": params_ok + params_refused, "manifests": manifests_ok + manifests_refused,
                      "manifests_refused": manifests_refused}))
""")


def test_fuzz_never_crashes_and_every_item_gets_a_result(tiny_export, tmp_path):
    done = subprocess.run([sys.executable, "-c", FUZZ_SCRIPT, str(tiny_export), str(tmp_path), "1234"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"fuzz child exited {done.returncode}\n{done.stderr[-4000:]}"
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["audio_ok"] + summary["audio_failed"] == 600
    assert summary["text_ok"] + summary["text_failed"] == 200
    assert summary["params"] == 100 and summary["manifests"] == 100 and summary["manifests_refused"] > 50
    assert summary["audio_ok"] > 0 and summary["audio_failed"] > 0  # both paths exercised
    assert summary["text_failed"] > 0
