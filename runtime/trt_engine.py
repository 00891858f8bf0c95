"""TensorRT backend: engine cache keys, optimisation profiles, and a session that runs a built engine.

Torch-free and self-contained (imports nothing from other wavlink_edge folders); `tensorrt` and the
CUDA binding (cuda-python: `cuda.bindings.runtime`, or the older `cuda.cudart`) are imported lazily
so the pure logic here works, and is unit-tested, where TensorRT is not installed.

Engines are not portable across TensorRT versions or GPU architectures (REFERENCE.md §7): an engine
file is accompanied by `<engine>.json` holding its key (TensorRT version, compute capability,
precision, optimisation profile, sha256 of the source ONNX). A session refuses an engine whose
sidecar is missing or does not match the running TensorRT / GPU; export/to_tensorrt.py rebuilds it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wavlink_edge.runtime.manifest import sha256_file

PRECISIONS = ("fp32", "fp16", "int8")
# Which ONNX each precision is built from (files of the export directory, export/FORMAT.md).
ONNX_FOR_PRECISION = {"fp32": "{tower}.onnx", "fp16": "{tower}_fp16.onnx", "int8": "{tower}_int8_static.onnx"}
DEFAULT_BATCH = (1, 4, 16)  # min / opt / max
DEFAULT_AUDIO_FRAMES = (100, 3000, 3000)  # trim policy's 1 s minimum .. padded 30 s (the default policy)
DEFAULT_TEXT_SEQ = (1, 32, None)  # None: the manifest's text_max_length
KEY_SCHEMA = 1


class TensorRTUnavailable(ImportError):
    pass


class StaleEngineError(RuntimeError):
    """The engine file was built for another TensorRT version / GPU / precision / profile / ONNX."""


# ----------------------------------------------------------------------------- pure logic

def parse_version(version: str) -> tuple[int, int, int]:
    parts = [int("".join(ch for ch in p if ch.isdigit()) or 0) for p in str(version).split(".")[:3]]
    while len(parts) < 3:
        parts.append(0)
    return tuple(parts)  # type: ignore[return-value]


@dataclass(frozen=True)
class BuildPlan:
    """How to build for a TensorRT version and precision (REFERENCE.md §7)."""
    trt_version: str
    precision: str
    onnx_file: str
    strongly_typed: bool
    builder_flags: tuple[str, ...]  # names in trt.BuilderFlag
    note: str


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


@dataclass(frozen=True)
class Profile:
    """One optimisation profile: input name -> (min, opt, max) shapes."""
    shapes: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {name: [list(s) for s in mm] for name, mm in sorted(self.shapes.items())}

    def covers(self, feeds_shapes: dict) -> bool:
        for name, shape in feeds_shapes.items():
            lo, _, hi = self.shapes[name]
            if len(shape) != len(lo) or any(not (a <= s <= b) for a, s, b in zip(lo, shape, hi)):
                return False
        return True


def _triple(values, what: str) -> tuple[int, int, int]:
    lo, opt, hi = (int(v) for v in values)
    if not (1 <= lo <= opt <= hi):
        raise ValueError(f"{what}: need 1 <= min <= opt <= max, got {lo}/{opt}/{hi}")
    return lo, opt, hi


def derive_profile(manifest: dict, tower: str, batch=DEFAULT_BATCH, frames=DEFAULT_AUDIO_FRAMES,
                   seq=DEFAULT_TEXT_SEQ) -> Profile:
    """Profile shapes from the export manifest: audio [batch, n_mels, frames] (frames even, <= max_frames);
    text [batch, seq] for input_ids and attention_mask (seq <= text_max_length)."""
    model = manifest["model"]
    b = _triple(batch, "batch")
    if tower == "audio":
        max_frames = int(model["max_frames"])
        f = _triple([max_frames if v is None else v for v in frames], "frames")
        if f[2] > max_frames:
            raise ValueError(f"frames max {f[2]} exceeds the model's max_frames {max_frames}")
        f = tuple(v + v % 2 for v in f)  # the encoder's stride-2 conv wants even frame counts
        n_mels = int(model["n_mels"])
        return Profile({"input_features": ((b[0], n_mels, f[0]), (b[1], n_mels, f[1]), (b[2], n_mels, f[2]))})
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


def sidecar_path(engine_path: Path) -> Path:
    return Path(str(engine_path) + ".json")


def write_sidecar(engine_path: Path, key: dict, engine_sha256: str) -> Path:
    path = sidecar_path(engine_path)
    path.write_text(json.dumps({"key": key, "engine_sha256": engine_sha256}, indent=2, sort_keys=True) + "\n")
    return path


def stale_reason(engine_path: Path, expected: dict | None = None, running_trt: str | None = None,
                 running_cc: str | None = None) -> str | None:
    """None if the engine may be loaded, else why not (missing, corrupted, or built for something else)."""
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        return f"no engine file {engine_path.name}"
    side = sidecar_path(engine_path)
    if not side.is_file():
        return f"no sidecar {side.name}: unknown TensorRT version / GPU"
    try:
        meta = json.loads(side.read_text())
        key = meta["key"]
    except (ValueError, KeyError):
        return f"unreadable sidecar {side.name}"
    if key.get("schema") != KEY_SCHEMA:
        return f"key schema {key.get('schema')} != {KEY_SCHEMA}"
    if sha256_file(engine_path) != meta.get("engine_sha256"):
        return "engine file does not match its sidecar sha256 (truncated or replaced)"
    if running_trt is not None and key["tensorrt"] != running_trt:
        return f"built with TensorRT {key['tensorrt']}, running {running_trt}"
    if running_cc is not None and key["compute_capability"] != running_cc:
        return f"built for compute capability {key['compute_capability']}, this GPU is {running_cc}"
    if expected is not None:
        diff = sorted(k for k in set(expected) | set(key) if expected.get(k) != key.get(k))
        if diff:
            return "key differs in " + ", ".join(diff)
    return None


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


# ----------------------------------------------------------------------------- hardware side

def import_tensorrt():
    try:
        import tensorrt as trt  # noqa: PLC0415
    except ImportError as exc:
        raise TensorRTUnavailable(
            "the TensorRT backend needs the `tensorrt` Python package (on Jetson: JetPack's python3-libnvinfer; "
            "on x86 GPU hosts: NVIDIA's wheels, `pip install tensorrt` from pypi.nvidia.com) and cuda-python "
            f"(`pip install cuda-python`): {exc}") from exc
    return trt


def import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as exc:
            raise TensorRTUnavailable("the TensorRT backend needs cuda-python (`pip install cuda-python`) "
                                      f"for device memory and streams: {exc}") from exc
    return cudart


def _check(result):
    """cuda-python returns (err, *values); raise on error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else values


def compute_capability(device: int = 0) -> str:
    cudart = import_cudart()
    major = _check(cudart.cudaDeviceGetAttribute(cudart.cudaDeviceAttr.cudaDevAttrComputeCapabilityMajor, device))
    minor = _check(cudart.cudaDeviceGetAttribute(cudart.cudaDeviceAttr.cudaDevAttrComputeCapabilityMinor, device))
    return f"{major}.{minor}"


class TensorRTSession:
    """Run one serialized engine: `run(feeds) -> first output` (the tower's `embedding`).

    The engine's sidecar is checked first against the running TensorRT version and GPU (and against
    `expected_key` if given); a stale or foreign engine raises StaleEngineError and is never deserialized.
    """

    def __init__(self, engine_path, expected_key: dict | None = None, device: int = 0):
        self.trt = trt = import_tensorrt()
        self.cudart = cudart = import_cudart()
        _check(cudart.cudaSetDevice(device))
        self.engine_path = Path(engine_path)
        reason = stale_reason(self.engine_path, expected_key, trt.__version__, compute_capability(device))
        if reason:
            raise StaleEngineError(f"{self.engine_path}: {reason}; rebuild it with export/to_tensorrt.py")
        self.key = json.loads(sidecar_path(self.engine_path).read_text())["key"]
        self.profile = Profile({n: tuple(tuple(s) for s in v) for n, v in self.key["profile"].items()})
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise StaleEngineError(f"{self.engine_path}: TensorRT could not deserialize it")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.stream = _check(cudart.cudaStreamCreate())
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device ptr, bytes)

    def _device_buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _check(self.cudart.cudaFree(ptr))
            ptr = _check(self.cudart.cudaMalloc(max(nbytes, 1)))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        cudart = self.cudart
        missing = set(self.inputs) - set(feeds)
        if missing:
            raise ValueError(f"missing inputs {sorted(missing)}")
        shapes = {n: tuple(feeds[n].shape) for n in self.inputs}
        if not self.profile.covers(shapes):
            raise ValueError(f"input shapes {shapes} are outside the engine's profile {self.profile.as_dict()}")
        host = {}
        for name in self.inputs:
            arr = np.ascontiguousarray(feeds[name], dtype=self._dtypes[name])
            host[name] = arr
            self.context.set_input_shape(name, arr.shape)
            ptr = self._device_buffer(name, arr.nbytes)
            _check(cudart.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes,
                                          cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
            self.context.set_tensor_address(name, ptr)
        results = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            results[name] = np.empty(shape, dtype=self._dtypes[name])
            self.context.set_tensor_address(name, self._device_buffer(name, results[name].nbytes))
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execution failed")
        for name, arr in results.items():
            _check(cudart.cudaMemcpyAsync(arr.ctypes.data, self._buffers[name][0], arr.nbytes,
                                          cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
        _check(cudart.cudaStreamSynchronize(self.stream))
        del host  # host inputs must stay alive until the copies finished
        return results[self.outputs[0]].astype(np.float32, copy=False)

    def close(self) -> None:
        for ptr, _ in self._buffers.values():
            self.cudart.cudaFree(ptr)
        self._buffers.clear()
        if getattr(self, "stream", None) is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001  (interpreter shutdown)
            pass
