"""Lyrics-model latency: the exported lyrics graphs (fp32 and, when written, int8) against CTranslate2
int8's greedy transcription (what faster-whisper runs: encode once, detect the language, decode
greedily), on the same log-mel windows, and the decoder's step cost.

    python bench/wealy.py --model exports/wavlink-base [--baseline-decoder OLD/lyrics_decoder.onnx]
                          [--out bench/results/wealy.json]

Inputs (named in the output): short real speech clips in several languages (the bundled sample, a
calibration clip, the Asterisk prompts "vm-intro" in English, French, Spanish and Italian from the Debian
packages asterisk-core-sounds-en-wav / -fr-wav / -es-wav and asterisk-prompt-it-menardi-wav) and full
30 s windows dense with words (the first 30 s of the Asterisk "demo-instruct" prompt in English, French
and Spanish). Clips that are not installed are skipped, and said so.

Each timed call is from the log-mel window to the result: ours to the L2-normalised embedding
(encoder + cross K/V, greedy decoding with the KV cache, head), CTranslate2 to the token ids. Systems are
run round-robin (input by input, repeat by repeat), so on a shared machine they see the same load;
compare the ratios. `--baseline-decoder` adds the decoder step of an export written before the per-layer
cache layout (stacked past / cross K/V inputs, fed through numpy: the runtime's loop until then), timed
at the same positions as the current fp32 and int8 steps, interleaved.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if not __package__:  # run by path: run as this checkout's package module (wavlink_edge/run_by_path.py says why)
    import runpy
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "run_by_path.py"))["run"](__file__)

from wavlink_edge.export.backbones import ct2_whisper_base_dir
from wavlink_edge.runtime.audio import decode_audio
from wavlink_edge.runtime.features import SAMPLE_RATE
from wavlink_edge.runtime.lyrics import Lyrics
from wavlink_edge.runtime.session import OnnxSession

ROOT = Path(__file__).resolve().parent.parent
CALIBRATION = ROOT / "quantization" / "calibration"
ASTERISK = Path("/usr/share/asterisk/sounds")
VOICES = {"en": "en_US_f_Allison", "fr": "fr_CA_f_June", "es": "es_MX_f_Allison", "it": "it_IT_f_Menardi"}
SHORT = [ROOT / "runtime" / "samples" / "speech_en_female.flac", CALIBRATION / "speech_10_ru.ogg"] + [
    ASTERISK / VOICES[lang] / "vm-intro.wav" for lang in ("en", "fr", "es", "it")]
DENSE = [ASTERISK / VOICES[lang] / "demo-instruct.wav" for lang in ("en", "fr", "es")]
WINDOW = 30 * SAMPLE_RATE


def inputs() -> tuple[list[tuple[str, str, np.ndarray]], list[str]]:
    """(kind, name, audio) for every installed clip; and the names of those skipped."""
    found, skipped = [], []
    for kind, paths in (("short", SHORT), ("dense_30s", DENSE)):
        for path in paths:
            name = f"{path.parent.name}/{path.name}" if path.parent.parent == ASTERISK else path.name
            if not path.is_file():
                skipped.append(name)
                continue
            audio = decode_audio(path)
            found.append((kind, name, audio[:WINDOW] if kind == "dense_30s" else audio))
    return found, skipped


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _embed(model: Lyrics, features: np.ndarray):
    decoded = model.decode_windows(features)[0]
    return model.embed_states(decoded.states), decoded


class StackedStep:
    """Today's decoder step before the per-layer layout: stacked caches and cross K/V through numpy."""

    def __init__(self, path: Path, threads: int):
        self.session = OnnxSession(path, threads=threads)

    def __call__(self, tokens, past_k, past_v, cross_k, cross_v):
        return self.session.run_all({"tokens": tokens, "past_k": past_k, "past_v": past_v, "cross_k": cross_k,
                                     "cross_v": cross_v})


def step_costs(models: dict[str, Lyrics], features: np.ndarray, sequence: list[int], baseline: Path | None,
               threads: int) -> dict:
    """Per-token decoder step at the same positions (the prompt, then `sequence` token by token), each
    system's step timed in turn at every position."""
    steps, states = {}, {}
    for name, model in models.items():
        cross = model.decoder.cross(features)
        _, _, k, v = model.step(np.array([sequence[:4]], np.int64), *model.decoder.empty_cache(1), *cross)
        steps[name], states[name] = model.step, [k, v, *cross]
    if baseline is not None:
        step = StackedStep(baseline, threads)
        ref = next(iter(models.values()))
        cross = [np.stack([c.numpy() for c in layers]).astype(np.float32) for layers in ref.decoder.cross(features)]
        empty = [np.stack(e).astype(np.float32) for e in ref.decoder.empty_cache(1)]
        _, _, k, v = step(np.array([sequence[:4]], np.int64), *empty, *cross)
        steps["baseline_fp32"], states["baseline_fp32"] = step, [k, v, *cross]
    times = {name: [] for name in steps}
    for t in range(4, len(sequence)):
        token = np.array([[sequence[t]]], np.int64)
        for name, step in steps.items():
            k, v, ck, cv = states[name]
            start = time.perf_counter()
            _, _, k, v = step(token, k, v, ck, cv)
            times[name].append(time.perf_counter() - start)
            states[name][:2] = [k, v]
    out = {"positions": len(sequence) - 4, "mean_ms": {n: 1e3 * statistics.mean(t) for n, t in times.items()},
           "median_ms": {n: 1e3 * statistics.median(t) for n, t in times.items()}}
    if "baseline_fp32" in times:
        out["ratio_to_baseline"] = {n: out["mean_ms"][n] / out["mean_ms"]["baseline_fp32"] for n in times}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="exports/wavlink-base")
    parser.add_argument("--out", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: the fp16 lyrics graphs on ORT's CUDA provider (caches bound on the GPU) against "
                             "CTranslate2 int8_float16 on the GPU")
    parser.add_argument("--baseline-decoder", type=Path, default=None,
                        help="lyrics_decoder.onnx of an export with stacked caches (before the per-layer layout)")
    args = parser.parse_args(argv)
    import ctranslate2

    if args.device == "cuda":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers() or not ctranslate2.get_cuda_device_count():
            print("skipped: --device cuda needs onnxruntime-gpu with the CUDA provider and a CUDA device for "
                  "CTranslate2; this host has neither", file=sys.stderr)
            return 0
        models = {"fp16": Lyrics.from_pretrained(args.model, providers=["CUDAExecutionProvider"], precision="fp16")}
        ct2_device, ct2_compute = "cuda", "int8_float16"
    else:
        models = {"fp32": Lyrics.from_pretrained(args.model, threads=args.threads)}
        if "int8" in models["fp32"].manifest.precisions("lyrics_decoder"):
            models["int8"] = Lyrics.from_pretrained(args.model, threads=args.threads, precision="int8")
        ct2_device, ct2_compute = "cpu", "int8"
    first = next(iter(models))
    clips, skipped = inputs()
    ct2_tmp = tempfile.TemporaryDirectory()  # the CTranslate2 model files, kept until the run ends
    whisper = ctranslate2.models.Whisper(str(ct2_whisper_base_dir(ct2_tmp.name)), device=ct2_device,
                                         compute_type=ct2_compute, intra_threads=args.threads)
    ct2 = f"ctranslate2_{ct2_compute}"

    def transcribe(features):
        mel = ctranslate2.StorageView.from_array(features)
        encoded = whisper.encode(mel)  # once: language detection and decoding both read it (faster-whisper)
        language = whisper.detect_language(encoded)[0][0][0]
        return whisper.generate(encoded, [["<|startoftranscript|>", language, "<|transcribe|>", "<|notimestamps|>"]],
                                beam_size=1)[0].sequences_ids[0]

    systems = {f"lyrics_{p}": (lambda f, m=m: _embed(m, f)) for p, m in models.items()}
    systems[ct2] = transcribe
    rows = []
    for kind, name, audio in clips:
        features = next(models[first].windows((audio, SAMPLE_RATE), name))
        times, outputs = {s: [] for s in systems}, {}
        for _ in range(args.repeats):
            for system, fn in systems.items():
                seconds, outputs[system] = _timed(lambda fn=fn, f=features: fn(f))
                times[system].append(seconds)
        row = {"kind": kind, "clip": name, "seconds_of_audio": round(len(audio) / SAMPLE_RATE, 1),
               "best_s": {s: min(t) for s, t in times.items()}}
        ct2_ids = outputs[ct2]
        row["tokens"] = {s: len(o[1].tokens) for s, o in outputs.items() if s.startswith("lyrics")}
        row["tokens"][ct2] = len(ct2_ids)
        row[f"{first}_tokens_equal"] = {s: o[1].tokens == outputs[f"lyrics_{first}"][1].tokens
                                        for s, o in outputs.items() if s.startswith("lyrics")}
        row[f"{first}_tokens_equal"][ct2] = ct2_ids == outputs[f"lyrics_{first}"][1].tokens
        row[f"ratio_to_{ct2}"] = {s: row["best_s"][s] / row["best_s"][ct2] for s in systems}
        if "lyrics_int8" in outputs:
            e8, e32 = outputs["lyrics_int8"][0], outputs["lyrics_fp32"][0]
            row["int8_embedding_cosine"] = float(np.dot(e8, e32))
        rows.append(row)
        print(json.dumps(row), flush=True)

    def total(kind, system):
        return sum(r["best_s"][system] for r in rows if r["kind"] == kind)

    summary = {kind: {s: {"sum_best_s": total(kind, s), f"ratio_to_{ct2}": total(kind, s) / total(kind, ct2)}
                      for s in systems} for kind in ("short", "dense_30s") if any(r["kind"] == kind for r in rows)}
    dense = next((r for r in rows if r["kind"] == "dense_30s"), rows[-1])
    features = next(models[first].windows((dict((n, a) for _, n, a in clips)[dense["clip"]], SAMPLE_RATE), "dense"))
    decoded = models[first].decode_windows(features)[0]
    v = models[first].vocab
    sequence = [v.sot, decoded.language, v.transcribe, v.no_timestamps] + decoded.tokens
    results = {"machine": platform.processor() or platform.machine(), "device": args.device, "threads": args.threads,
               "repeats": args.repeats, "skipped_clips": skipped, "rows": rows, "summary": summary,
               "decoder_step": {"clip": dense["clip"], **step_costs(models, features, sequence, args.baseline_decoder,
                                                                     args.threads)}}
    text = json.dumps(results, indent=1)
    print(json.dumps({"summary": summary, "decoder_step": results["decoder_step"]}, indent=1))
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
