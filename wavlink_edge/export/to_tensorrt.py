"""Build TensorRT engines for both towers of an export directory.

    python export/to_tensorrt.py EXPORT_DIR --precision fp16|int8|fp32 [--cache-dir DIR] [--tower audio,text]
        [--batch 1,4,16] [--frames 100,3000,3000] [--seq 1,32,256] [--strongly-typed] [--dry-run]

Each engine is built from the precision-specific ONNX (fp32 `audio.onnx`, fp16 `audio_fp16.onnx`, int8
`audio_int8_static.onnx` = Q/DQ) with one optimisation profile, a persistent timing cache, and lands in
the engine cache under a name keyed by TensorRT version + GPU compute capability + precision + profile
(+ ONNX sha256), with a `.json` sidecar holding the key. An engine already in the cache with a matching
key is reused; a stale or foreign one is rebuilt, never loaded. TensorRT 10.x uses the FP16/INT8 builder
flags (INT8 only with Q/DQ ONNX, never an implicit calibrator); TensorRT 11 builds strongly typed.
The equivalent `trtexec` command line is printed. `--dry-run` prints the plan and trtexec line
without TensorRT (works anywhere). Build logic: export/trt_build.py; loading and key checks: runtime/trt_engine.py.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

if not __package__:  # run by path: run as this checkout's package module (wavlink_edge/run_by_path.py says why)
    import runpy
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "run_by_path.py"))["run"](__file__)

from wavlink_edge.export import trt_build as tb
from wavlink_edge.runtime import trt_engine as te
from wavlink_edge.runtime.arguments import add_model_option
from wavlink_edge.runtime.manifest import sha256_file

TOWERS = ("audio", "text")
LYRICS_NOT_TENSORRT = ("the lyrics graphs get no TensorRT engine: the decoder step is called once per token with a "
                       "self-attention cache one longer each call, bound in place by ORT IO binding; run them with "
                       "Lyrics.from_pretrained(EXPORT, providers=['CUDAExecutionProvider'], precision='fp16') (docs/wealy.md)")
WORKSPACE_MIB = 4096


def _ints(text: str, what: str) -> tuple[int, int, int]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"{what}: give min,opt,max")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def plan_tower(export_dir: Path, tower: str, precision: str, trt_version: str, cc: str, cache_dir: Path,
               batch, frames, seq, strongly_typed: bool | None) -> dict:
    """Everything about one engine build that does not need TensorRT: ONNX, plan, profile, key, paths."""
    manifest = json.loads((export_dir / "manifest.json").read_text())
    plan = tb.build_plan(trt_version, precision, tower, strongly_typed)
    onnx_path = export_dir / plan.onnx_file
    entry = manifest["artifacts"].get(plan.onnx_file)
    if entry is None or not onnx_path.is_file():
        hint = "" if precision == "fp32" else \
            f" (make it with: wavlink-edge quantize --model {export_dir} --precision {precision}; in a checkout: python quantization/quantize.py)"
        raise FileNotFoundError(f"{plan.onnx_file} is not in {export_dir}{hint}")
    if sha256_file(onnx_path) != entry["sha256"]:
        raise ValueError(f"{plan.onnx_file} does not match its manifest sha256")
    if entry.get("fidelity", {}).get("forced"):
        print(f"warning: {plan.onnx_file} was written under its fidelity gate (--force)", file=sys.stderr)
    profile = tb.derive_profile(manifest, tower, batch, frames, seq)
    key = tb.engine_key(trt_version, cc, precision, profile, entry["sha256"], plan.strongly_typed)
    engine = cache_dir / tb.engine_filename(tower, key)
    timing = cache_dir / tb.timing_cache_filename(trt_version, cc)
    return {"tower": tower, "plan": plan, "onnx": onnx_path, "profile": profile, "key": key,
            "engine": engine, "timing_cache": timing,
            "trtexec": tb.trtexec_command(onnx_path, engine, plan, profile, timing, WORKSPACE_MIB)}


def build_engine(job: dict) -> Path:
    """Build (or reuse) one engine with the TensorRT Python API; update the timing cache."""
    trt = te.import_tensorrt()
    engine_path: Path = job["engine"]
    reason = te.stale_reason(engine_path, job["key"], trt.__version__, job["key"]["compute_capability"])
    if reason is None:
        print(f"  {job['tower']}: cached engine {engine_path.name} matches, reused")
        return engine_path
    print(f"  {job['tower']}: building ({reason})")
    plan: tb.BuildPlan = job["plan"]
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if plan.strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(job["onnx"])):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {job['onnx'].name}: {errors}")
    pinned = {getattr(trt.LayerType, name) for name in plan.fp32_layer_types}
    for index in range(network.num_layers if pinned else 0):
        layer = network.get_layer(index)
        if layer.type in pinned:  # kept fp32 under the FP16 flag (OBEY_PRECISION_CONSTRAINTS makes it binding)
            layer.precision = trt.float32
            for output in range(layer.num_outputs):
                layer.set_output_type(output, trt.float32)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_MIB << 20)
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if plan.precision == "fp32" and not plan.strongly_typed and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 engine = fp32 reference, not TF32
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in job["profile"].shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    timing_path: Path = job["timing_cache"]
    cache = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build {engine_path.name}")
    tmp = engine_path.with_suffix(".engine.tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(engine_path)
    tb.write_sidecar(engine_path, job["key"], sha256_file(engine_path))
    timing_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    print(f"  {job['tower']}: built {engine_path.name} in {time.perf_counter() - start:.0f} s")
    return engine_path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_option(p, dest="export_dir", positional=True)
    p.add_argument("--precision", required=True, choices=tb.PRECISIONS)
    p.add_argument("--cache-dir", type=Path, help="engine + timing cache (default EXPORT_DIR/trt_cache)")
    p.add_argument("--tower", default="audio,text")
    p.add_argument("--batch", type=lambda s: _ints(s, "batch"), default=None,
                   help=f"min,opt,max batch (default {tb.DEFAULT_BATCH})")
    p.add_argument("--frames", type=lambda s: _ints(s, "frames"), default=tb.DEFAULT_AUDIO_FRAMES)
    p.add_argument("--seq", type=lambda s: _ints(s, "seq"), default=None,
                   help="text sequence min,opt,max (default 1,32,text_max_length)")
    p.add_argument("--strongly-typed", action="store_true", default=None,
                   help="TensorRT 10.x: build strongly typed like TensorRT 11 (precision from the ONNX)")
    p.add_argument("--dry-run", action="store_true", help="print plan and trtexec lines; do not import TensorRT")
    p.add_argument("--trt-version", help="with --dry-run: plan for this TensorRT version (default 10.3.0)")
    p.add_argument("--compute-capability", help="with --dry-run: plan for this GPU, e.g. 8.7 (Orin)")
    a = p.parse_args(argv)
    cache_dir = a.cache_dir or a.export_dir / "trt_cache"
    seq = a.seq or tb.DEFAULT_TEXT_SEQ
    try:
        if any(t.strip().startswith("lyrics") for t in a.tower.split(",")):
            raise ValueError(LYRICS_NOT_TENSORRT)
        if a.dry_run:
            trt_version, cc = a.trt_version or "10.3.0", a.compute_capability or "8.7"
        else:
            trt = te.import_tensorrt()
            trt_version, cc = trt.__version__, te.compute_capability()
        print(f"TensorRT {trt_version}, compute capability {cc}, precision {a.precision}")
        jobs = [plan_tower(a.export_dir, t.strip(), a.precision, trt_version, cc, cache_dir, a.batch, a.frames, seq,
                           a.strongly_typed) for t in a.tower.split(",")]
        for job in jobs:
            print(f"  {job['tower']}: {job['plan'].note}")
            print(f"  {job['tower']}: equivalent: {shlex.join(job['trtexec'])}")
        if a.dry_run:
            return 0
        cache_dir.mkdir(parents=True, exist_ok=True)
        for job in jobs:
            build_engine(job)
    except (te.TensorRTUnavailable, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
