"""TensorRT backend, load side: engine-key verification and a session that runs a built engine.

Building engines (plans, profiles, trtexec lines) is export's job (export/trt_build.py). `tensorrt`
and the CUDA binding (cuda-python: `cuda.bindings.runtime`, or the older `cuda.cudart`) are imported
lazily so the pure logic here works, and is unit-tested, where TensorRT is not installed.

Engines are not portable across TensorRT versions or GPU architectures: an engine file is accompanied
by `<engine>.json` holding its key (TensorRT version, compute capability, precision, optimisation
profile, sha256 of the source ONNX) and the engine's own sha256. A session refuses an engine whose
sidecar is missing, whose bytes do not match it, or that was built for another TensorRT / GPU.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wavlink_edge.runtime.batching import with_frame_lengths
from wavlink_edge.runtime.errors import BackendUnavailableError, WavLinkError
from wavlink_edge.runtime.manifest import sha256_file

KEY_SCHEMA = 1


class TensorRTUnavailable(BackendUnavailableError, ImportError):
    """TensorRT or its CUDA bindings are not installed here (an ImportError too, for callers that test for one)."""


class StaleEngineError(WavLinkError):
    """The engine file was built for another TensorRT version / GPU / precision / profile / ONNX."""


# ----------------------------------------------------------------------------- pure logic

def parse_version(version: str) -> tuple[int, int, int]:
    parts = [int("".join(ch for ch in p if ch.isdigit()) or 0) for p in str(version).split(".")[:3]]
    while len(parts) < 3:
        parts.append(0)
    return tuple(parts)  # type: ignore[return-value]


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


def sidecar_path(engine_path: Path) -> Path:
    return Path(str(engine_path) + ".json")


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
        # One context, stream and buffer set: concurrent runs would overwrite each other's inputs.
        self._lock = threading.Lock()
        self.max_batch = min(shapes[2][0] for shapes in self.profile.shapes.values())
        self.providers = ["tensorrt"]

    def io_shapes(self) -> dict[str, tuple]:
        """Declared shapes (-1 for dynamic axes) of the inputs and the first output, like OnnxSession's."""
        shapes = {n: tuple(self.engine.get_tensor_shape(n)) for n in self.inputs}
        shapes["output"] = tuple(self.engine.get_tensor_shape(self.outputs[0]))
        return shapes

    def _device_buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _check(self.cudart.cudaFree(ptr))
            ptr = _check(self.cudart.cudaMalloc(max(nbytes, 1)))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Batches beyond the profile's max batch run in chunks, so callers need not know the profile."""
        feeds = with_frame_lengths(feeds, self.inputs)
        rows = len(next(iter(feeds.values())))
        with self._lock:
            if rows <= self.max_batch:
                return self._run_locked(feeds)
            return np.concatenate([self._run_locked({n: a[i:i + self.max_batch] for n, a in feeds.items()})
                                   for i in range(0, rows, self.max_batch)])

    def _run_locked(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
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
