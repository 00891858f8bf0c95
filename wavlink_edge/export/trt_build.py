"""TensorRT engine building, pure logic: build plans per TensorRT version, optimisation profiles, engine
keys and file names, sidecars, and the equivalent trtexec command. export/to_tensorrt.py drives it;
the runtime only verifies and loads what this wrote (runtime/trt_engine.py).

TensorRT 10.x keeps the FP16/INT8 builder flags (implicit INT8 calibrators are deprecated since 10.1:
INT8 comes from an explicit Q/DQ ONNX); TensorRT 11 removes them: networks are strongly typed and the
precision comes from the ONNX. JetPack 6 ships TensorRT 10.3.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from wavlink_edge.runtime.batching import FRAME_LENGTHS
from wavlink_edge.runtime.trt_engine import KEY_SCHEMA, Profile, parse_version, sidecar_path

PRECISIONS = ("fp32", "fp16", "int8")
# Which ONNX each precision is built from (files of the export directory, export/FORMAT.md).
ONNX_FOR_PRECISION = {"fp32": "{tower}.onnx", "fp16": "{tower}_fp16.onnx", "int8": "{tower}_int8_static.onnx"}
# min / opt / max batch; text goes to 32, the runtime's default text batch (larger batches run in chunks)
DEFAULT_BATCH = {"audio": (1, 4, 16), "text": (1, 8, 32)}
DEFAULT_AUDIO_FRAMES = (100, 3000, 3000)  # trim policy's 1 s minimum .. padded 30 s (the default policy)
DEFAULT_TEXT_SEQ = (1, 32, None)  # None: the manifest's text_max_length
@dataclass(frozen=True)
class BuildPlan:
    """How to build for a TensorRT version and precision ."""
    trt_version: str
    precision: str
    onnx_file: str
    strongly_typed: bool
    builder_flags: tuple[str, ...]  # names in trt.BuilderFlag
    note: str
    fp32_layer_types: tuple[str, ...] = ()  # names in trt.LayerType pinned to fp32 (with OBEY_PRECISION_CONSTRAINTS)


# fp16 audio for TensorRT: audio_fp16.onnx carries onnxruntime's com.microsoft.MultiHeadAttention (fused for
# its CUDA kernels, quantization/quantize.py), which TensorRT's ONNX parser does not implement. TensorRT gets
# the standard-op graph instead -- the fp32 audio.onnx with the FP16 flag -- because its own MHA fusion works
# on exactly that form (MatMul -> masked scores -> Softmax -> MatMul), and the LayerNorms (and the final L2
# reduction) are pinned to fp32 as the fp16 ONNX keeps them. Not measured on a GPU yet (docs/gpu.md).
AUDIO_FP16_FP32_LAYERS = ("NORMALIZATION", "REDUCE")


def build_plan(trt_version: str, precision: str, tower: str, strongly_typed: bool | None = None) -> BuildPlan:
    """TRT 11+: strongly typed, no precision flags, precision from the ONNX. TRT 10.x: the precision-specific
    ONNX with the FP16 / INT8 builder flags (INT8 only for the Q/DQ ONNX: explicit quantization, never an
    implicit calibrator), or strongly typed when asked. TRT < 10 is refused."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    major = parse_version(trt_version)[0]
    if major < 10:
        raise ValueError(f"TensorRT {trt_version} is not supported: need 10.x (JetPack 6 ships 10.3) or 11.x")
    onnx_file = ONNX_FOR_PRECISION[precision].format(tower=tower)
    if tower == "audio" and precision == "fp16":
        if major >= 11 or strongly_typed:
            raise ValueError("fp16 audio: a strongly typed build takes its precision from the ONNX, and audio_fp16.onnx "
                             "holds onnxruntime's fused MultiHeadAttention, which TensorRT cannot parse; build with "
                             "TensorRT 10.x without --strongly-typed (fp32 graph + FP16 flag), or run audio_fp16.onnx "
                             "on onnxruntime's CUDA provider")
        return BuildPlan(trt_version, precision, "audio.onnx", False, ("FP16", "OBEY_PRECISION_CONSTRAINTS"),
                         "TensorRT 10.x, fp16 audio: the standard-op fp32 graph with the FP16 flag (TensorRT fuses "
                         "its attention itself), LayerNorm and the L2 reduction pinned to fp32",
                         AUDIO_FP16_FP32_LAYERS)
    if major >= 11:
        if strongly_typed is False:
            raise ValueError("TensorRT 11 removed the FP16/INT8 builder flags: networks are strongly typed")
        return BuildPlan(trt_version, precision, onnx_file, True, (),
                         "TensorRT >= 11: strongly typed network; precision comes from the ONNX")
    if strongly_typed:
        return BuildPlan(trt_version, precision, onnx_file, True, (),
                         "TensorRT 10.x, strongly typed on request: precision comes from the ONNX")
    flags = {"fp32": (), "fp16": ("FP16",), "int8": ("INT8",)}[precision]
    note = {"fp32": "TensorRT 10.x: fp32 ONNX, no precision flags (TF32 disabled for fidelity)",
            "fp16": "TensorRT 10.x: fp16 ONNX (LayerNorm/Softmax kept fp32 by Casts) with the FP16 builder flag",
            "int8": "TensorRT 10.x: explicit Q/DQ ONNX with the INT8 flag (no implicit calibrator); "
                    "non-quantized layers stay fp32"}[precision]
    return BuildPlan(trt_version, precision, onnx_file, False, flags, note)


def _triple(values, what: str) -> tuple[int, int, int]:
    lo, opt, hi = (int(v) for v in values)
    if not (1 <= lo <= opt <= hi):
        raise ValueError(f"{what}: need 1 <= min <= opt <= max, got {lo}/{opt}/{hi}")
    return lo, opt, hi


def derive_profile(manifest: dict, tower: str, batch=None, frames=DEFAULT_AUDIO_FRAMES,
                   seq=DEFAULT_TEXT_SEQ) -> Profile:
    """Profile shapes from the export manifest: audio [batch, n_mels, frames] (frames even, <= max_frames)
    and frame_lengths [batch] if the graph takes it;
    text [batch, seq] for input_ids and attention_mask (seq <= text_max_length)."""
    model = manifest["model"]
    b = _triple(batch or DEFAULT_BATCH.get(tower, DEFAULT_BATCH["audio"]), "batch")
    if tower == "audio":
        max_frames = int(model["max_frames"])
        f = _triple([max_frames if v is None else v for v in frames], "frames")
        if f[2] > max_frames:
            raise ValueError(f"frames max {f[2]} exceeds the model's max_frames {max_frames}")
        f = tuple(v + v % 2 for v in f)  # the encoder's stride-2 conv wants even frame counts
        n_mels = int(model["n_mels"])
        shapes = {"input_features": ((b[0], n_mels, f[0]), (b[1], n_mels, f[1]), (b[2], n_mels, f[2]))}
        if model.get(FRAME_LENGTHS):  # mixed-length batches: one length per row
            shapes[FRAME_LENGTHS] = ((b[0],), (b[1],), (b[2],))
        return Profile(shapes)
    if tower == "text":
        max_len = int(model["text_max_length"])
        s = _triple([max_len if v is None else min(v, max_len) for v in seq], "sequence length")
        shape = ((b[0], s[0]), (b[1], s[1]), (b[2], s[2]))
        return Profile({"input_ids": shape, "attention_mask": shape})
    raise ValueError(f"unknown tower {tower!r}")


def engine_key(trt_version: str, compute_capability: tuple[int, int] | str, precision: str, profile: Profile,
               onnx_sha256: str, strongly_typed: bool) -> dict:
    """Everything an engine depends on. Two engines are interchangeable only if these are equal."""
    cc = compute_capability if isinstance(compute_capability, str) else f"{compute_capability[0]}.{compute_capability[1]}"
    return {"schema": KEY_SCHEMA, "tensorrt": str(trt_version), "compute_capability": cc, "precision": precision,
            "strongly_typed": bool(strongly_typed), "profile": profile.as_dict(), "onnx_sha256": onnx_sha256}


def engine_key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def engine_filename(tower: str, key: dict) -> str:
    sm = key["compute_capability"].replace(".", "")
    return f"{tower}_{key['precision']}_trt{key['tensorrt']}_sm{sm}_{engine_key_digest(key)}.engine"


def timing_cache_filename(trt_version: str, compute_capability: str) -> str:
    # timing caches are only valid for one TRT version and GPU architecture as well
    return f"timing_trt{trt_version}_sm{compute_capability.replace('.', '')}.cache"


def write_sidecar(engine_path: Path, key: dict, engine_sha256: str) -> Path:
    path = sidecar_path(engine_path)
    path.write_text(json.dumps({"key": key, "engine_sha256": engine_sha256}, indent=2, sort_keys=True) + "\n")
    return path


def trtexec_command(onnx_path: Path, engine_path: Path, plan: BuildPlan, profile: Profile,
                    timing_cache: Path | None = None, workspace_mib: int = 4096) -> list[str]:
    """The equivalent trtexec invocation (for users building by hand, e.g. on a Jetson)."""
    def fmt(i):
        return ",".join(f"{name}:{'x'.join(str(d) for d in shapes[i])}" for name, shapes in sorted(profile.shapes.items()))

    cmd = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}",
           f"--minShapes={fmt(0)}", f"--optShapes={fmt(1)}", f"--maxShapes={fmt(2)}",
           f"--memPoolSize=workspace:{workspace_mib}M"]
    if plan.strongly_typed:
        cmd.append("--stronglyTyped")
    else:
        cmd += [f"--{flag.lower()}" for flag in plan.builder_flags]
        if plan.precision == "fp32":
            cmd.append("--noTF32")
    if timing_cache is not None:
        cmd.append(f"--timingCacheFile={timing_cache}")
    return cmd
