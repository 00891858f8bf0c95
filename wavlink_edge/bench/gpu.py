"""The GPU path against PyTorch on the same GPU, in one run: encoder shapes, the mixed library, end to end.

    python bench/gpu.py --model EXPORT_DIR [--rounds 20] [--library 128] [--files 400] [--out bench/results]

Needs an export with `audio.onnx` and `audio_fp16.onnx` (`python export/to_onnx.py --size base --precision
fp32,fp16`). Measured, interleaved round-robin in one process (so the GPU's clocks and load move all rows
together), median ms per call:

- encoder shapes (batch x frames) 1x3000, 8x3000, 32x3000, 32x500: the shipped `audio_fp16.onnx` (fused
  attention, per-row key lengths) with numpy in/out, through IO binding, and with the inputs already on the
  device; the unfused fp16 graph made the old way from `audio.onnx` (the "before" row); transformers'
  `WhisperEncoder` at the same shape in fp16 with SDPA (3000 frames only: it refuses others).
- the mixed library: real clips (bench/data/wavlink_eval, trim policy) in length-sorted mixed batches of 32,
  encoder only, files/s.
- end to end: `WavLink.iter_embed_audio` over real files, serial front end, the decode pool, and the pool with
  the waveform-in graph (features="onnx"), files/s, each as a fraction of the encoder-only rate.

On a host without CUDA it says so and exits 0 (nothing to measure). `--provider cpu --shapes 1x200` runs the
same code on the CPU provider at small shapes (a check of the script itself, not a GPU figure).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if not __package__:  # run by path: run as this checkout's package module (wavlink_edge/run_by_path.py says why)
    import runpy
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "run_by_path.py"))["run"](__file__)

from wavlink_edge.bench.machine import describe
from wavlink_edge.runtime import WavLink
from wavlink_edge.runtime.audio import decode_audio
from wavlink_edge.runtime.batching import FRAME_LENGTHS, padded_batch
from wavlink_edge.runtime.features import clip_features
from wavlink_edge.runtime.session import CPU_EP, CUDA_EP, OnnxSession, provider_blocker

HERE = Path(__file__).resolve().parent
CLIPS = HERE / "data" / "wavlink_eval" / "audio" / "test"
SHAPES = ((1, 3000), (8, 3000), (32, 3000), (32, 500))
LIBRARY_BATCH = 32


def cuda_unavailable() -> str | None:
    """Why this host cannot run the GPU benchmark, or None."""
    import onnxruntime as ort

    if CUDA_EP not in ort.get_available_providers():
        return f"this onnxruntime ({ort.__version__}) has no {CUDA_EP} (install onnxruntime-gpu)"
    blocked = provider_blocker(CUDA_EP)
    if blocked:
        return f"{CUDA_EP} cannot start: {blocked}"
    return None


def unfused_fp16(audio_onnx: Path, out: Path) -> Path:
    """The fp16 graph as shipped before issue 29 (attention as MatMul/Softmax, the mask a Where): the "before" row."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from wavlink_edge.quantization.quantize import FP16_OP_BLOCK_LIST  # needs onnx (the [export] extra), like the line above

    model = convert_float_to_float16(str(audio_onnx), keep_io_types=True, op_block_list=FP16_OP_BLOCK_LIST)
    onnx.save(model, str(out))
    return out


class DeviceResident:
    """One ORT session run with its inputs already on the device (bound once): the encoder's own time."""

    def __init__(self, session: OnnxSession, feeds: dict, device: str):
        import onnxruntime as ort

        self.session, self.binding = session._session, session._session.io_binding()
        self.values = {k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v), device, 0) for k, v in feeds.items()}
        for name, value in self.values.items():
            self.binding.bind_ortvalue_input(name, value)
        self.binding.bind_output(session.output_names[0], device, 0)

    def __call__(self):
        self.session.run_with_iobinding(self.binding)
        self.binding.synchronize_outputs()


def torch_encoder(n_mels: int, d_model: int, layers: int, heads: int, ffn: int):
    """transformers' WhisperEncoder at the export's shape, fp16, SDPA, on the GPU (random weights: same work)."""
    import torch
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = WhisperConfig(num_mel_bins=n_mels, d_model=d_model, encoder_layers=layers, encoder_attention_heads=heads,
                           encoder_ffn_dim=ffn, max_source_positions=1500, attn_implementation="sdpa")
    encoder = WhisperEncoder(config).half().cuda().eval()

    def numpy_in_out(features: np.ndarray):
        with torch.inference_mode():
            x = torch.from_numpy(features).cuda().half()
            return encoder(x).last_hidden_state.float().cpu().numpy()

    def resident(features: np.ndarray):
        x = torch.from_numpy(features).cuda().half()

        def call():
            with torch.inference_mode():
                encoder(x)
            torch.cuda.synchronize()

        return call

    return numpy_in_out, resident


def round_robin(calls: dict, rounds: int, warmup: int = 3) -> dict:
    """Median ms per call of each named callable, interleaved: one call of each per round."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: round(statistics.median(t), 3) for name, t in times.items()}


def encoder_shapes(model_dir: Path, providers: list, device: str, shapes, rounds: int, with_torch: bool, dims: dict) -> list:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        before = unfused_fp16(model_dir / "audio.onnx", Path(tmp) / "audio_fp16_unfused.onnx")
        fused = OnnxSession(model_dir / "audio_fp16.onnx", providers, "audio_fp16.onnx", io_binding=False)
        unfused = OnnxSession(before, providers, "audio_fp16_unfused.onnx", io_binding=False)
        torch_numpy = torch_resident = None
        if with_torch:
            torch_numpy, torch_resident = torch_encoder(dims["n_mels"], dims["d_model"], dims["n_layers"],
                                                        dims["n_heads"], dims["ffn_dim"])
        rows = []
        for batch, frames in shapes:
            features = rng.standard_normal((batch, dims["n_mels"], frames)).astype(np.float32)
            feeds = {"input_features": features, FRAME_LENGTHS: np.full(batch, frames, np.int64)}
            calls = {
                "fp16 fused, numpy in/out": lambda f=feeds: fused.run(f),
                "fp16 fused, IO binding": lambda f=feeds: fused.run_bound(f),
                "fp16 fused, inputs on device": DeviceResident(fused, feeds, device),
                "fp16 unfused (before), numpy in/out": lambda f=feeds: unfused.run(f),
            }
            if torch_numpy is not None and frames == 3000:
                calls["PyTorch SDPA fp16, numpy in/out"] = lambda f=features: torch_numpy(f)
                calls["PyTorch SDPA fp16, inputs on device"] = torch_resident(features)
            rows.append({"batch": batch, "frames": frames, "ms": round_robin(calls, rounds)})
            print(f"  {batch} x {frames}: {rows[-1]['ms']}", file=sys.stderr)
    return rows


def library(model_dir: Path, providers: list, clips: list, n_mels: int, rounds: int) -> dict:
    """Encoder-only files/s over real clips in length-sorted mixed batches of 32 (features precomputed)."""
    session = OnnxSession(model_dir / "audio_fp16.onnx", providers, "audio_fp16.onnx")
    windows = sorted((clip_features(audio, n_mels, "trim") for audio in clips), key=lambda w: w.shape[-1])
    batches = [padded_batch(windows[i:i + LIBRARY_BATCH]) for i in range(0, len(windows), LIBRARY_BATCH)]

    def run_all():
        for features, lengths in batches:
            session.run({"input_features": features, FRAME_LENGTHS: lengths})

    ms = round_robin({"library": run_all}, max(3, rounds // 4))["library"]
    return {"clips": len(windows), "batch": LIBRARY_BATCH, "ms": ms, "files_per_second": round(len(windows) / ms * 1e3, 1)}


def end_to_end(model_dir: Path, providers: list, paths: list, rounds: int) -> dict:
    """WavLink files/s over real files: serial front end, the decode pool, the pool + waveform-in graph."""
    numpy_model = WavLink.from_pretrained(model_dir, precision="fp16", providers=providers)
    onnx_model = WavLink.from_pretrained(model_dir, precision="fp16", providers=providers, features="onnx")
    pool = numpy_model.decode_workers

    def job(model, workers):
        def call():
            results = list(model.iter_embed_audio(paths, batch_size=LIBRARY_BATCH, decode_workers=workers))
            bad = [r.error for r in results if not r.ok]
            if bad:
                raise RuntimeError(bad[0])
        return call

    calls = {"serial front end": job(numpy_model, 0), f"decode pool ({pool} threads)": job(numpy_model, pool),
             f"decode pool ({pool} threads) + waveform-in graph": job(onnx_model, pool)}
    ms = round_robin(calls, max(2, rounds // 10), warmup=1)
    return {"files": len(paths), "files_per_second": {k: round(len(paths) / v * 1e3, 1) for k, v in ms.items()}}


def write_tables(result: dict, out: Path) -> Path:
    lines = [f"# GPU path: {result['device']}", "", f"`{result['command']}`; {result['rounds']} interleaved rounds, "
             "median ms per call.", "", "| shape | " + " | ".join(result["columns"]) + " |",
             "|---|" + "---|" * len(result["columns"])]
    for row in result["shapes"]:
        cells = [f"{row['ms'][c]:.2f}" if c in row["ms"] else "–" for c in result["columns"]]
        lines.append(f"| {row['batch']} × {row['frames']} | " + " | ".join(cells) + " |")
    lib = result["library"]
    lines += ["", f"Mixed library ({lib['clips']} real clips, trim, length-sorted batches of {lib['batch']}, encoder "
              f"only, fp16 fused): **{lib['files_per_second']} files/s**.", "",
              f"End to end (`iter_embed_audio`, {result['end_to_end']['files']} real files, batch {LIBRARY_BATCH}):", "",
              "| front end | files/s | of encoder-only |", "|---|---|---|"]
    for name, rate in result["end_to_end"]["files_per_second"].items():
        lines.append(f"| {name} | {rate} | {rate / lib['files_per_second']:.0%} |")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"gpu_{result['tag']}.md"
    path.write_text("\n".join(lines) + "\n")
    (out / f"gpu_{result['tag']}.json").write_text(json.dumps(result, indent=2, default=str))
    print("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("exports/wavlink-base"))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--library", type=int, default=128, help="real clips in the mixed library")
    parser.add_argument("--files", type=int, default=400, help="real files for the end-to-end rate")
    parser.add_argument("--shapes", default=",".join(f"{b}x{f}" for b, f in SHAPES), help="comma list of BATCHxFRAMES")
    parser.add_argument("--provider", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: a check of this script at small shapes, not a GPU figure")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    if args.provider == "cuda":
        reason = cuda_unavailable()
        if reason:
            print(f"bench/gpu.py needs CUDA: {reason}. Nothing measured.")
            return 0
    for name in ("audio.onnx", "audio_fp16.onnx", "config.json"):
        if not (args.model / name).is_file():
            print(f"error: {args.model / name} is missing: export with `python export/to_onnx.py --size base "
                  "--precision fp32,fp16`", file=sys.stderr)
            return 2
    dims = json.loads((args.model / "config.json").read_text())["audio"]
    providers = [CUDA_EP, CPU_EP] if args.provider == "cuda" else [CPU_EP]
    device = "cuda" if args.provider == "cuda" else "cpu"
    with_torch = False
    if args.provider == "cuda":
        try:
            import torch

            with_torch = torch.cuda.is_available()
        except ImportError:
            pass
        if not with_torch:
            print("warning: PyTorch with CUDA is not installed: the PyTorch columns stay empty", file=sys.stderr)
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    paths = sorted(CLIPS.glob("*.ogg"))
    clips = [decode_audio(p) for p in paths[: args.library]]
    files = (paths * (1 + args.files // max(1, len(paths))))[: args.files]
    machine = describe()
    device_name = (machine["gpus"][0]["name"] if machine["gpus"] and args.provider == "cuda"
                   else f"CPU provider ({machine['cpu_model']}), a check of the script, not a GPU figure")
    result = {"device": device_name, "tag": "cuda" if args.provider == "cuda" else "cpu_check",
              "command": "python bench/gpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "rounds": args.rounds, "machine": machine}
    result["shapes"] = encoder_shapes(args.model, providers, device, shapes, args.rounds, with_torch, dims)
    result["columns"] = list(dict.fromkeys(c for row in result["shapes"] for c in row["ms"]))
    result["library"] = library(args.model, providers, clips, dims["n_mels"], args.rounds)
    result["end_to_end"] = end_to_end(args.model, providers, files, args.rounds)
    write_tables(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
