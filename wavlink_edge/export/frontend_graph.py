"""The waveform-in front end as an ONNX graph: Whisper's log-mel computed by the execution provider.

    audio_frontend.onnx: waveform float32 [batch, samples] + frame_lengths int64 [batch]
                         -> input_features float32 [batch, n_mels, max(frame_lengths)]

The same recipe as runtime/features.py (the reference it is validated against): reflect padding of
N_FFT/2 at both ends, frames of N_FFT every HOP_LENGTH samples (the last dropped, as Whisper does), a
periodic Hann window, the DFT as one strided Conv whose 2 x (N_FFT/2 + 1) filters are the windowed cosine
and sine rows (a matrix product per frame; cuDNN and every CPU run it), the power spectrum, the Slaney
filterbank as a MatMul, log10(max(x, 1e-10)), the per-clip floor at (max over all of the row's frames - 8),
(x + 4) / 4, and the first max(frame_lengths) frames.

Why a graph: on a Jetson or a GPU host the CPU then only decodes, and the front end stops being the
bottleneck (issue 29: 32 files/s end to end against 300-500 for the encoder alone on an H200).

The caller pads each row with zeros and gives every row the same width S, chosen so that each row equals
its 30 s reference: S = the window (480 000 samples) if any row needs it, else at least the row's samples +
N_FFT and HOP_LENGTH x its frame_lengths (``runtime.features.waveform_width``). Then a row's frames past its
audio read only zeros, as in the zero-padded 30 s window, and the reflect padding at the right edge
reflects zeros (or, at the full window, the same samples the reference reflects).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from wavlink_edge.runtime.features import HOP_LENGTH, N_FFT, WAVEFORM_FRONTEND_FILE, mel_filterbank

FRONTEND_FILE = WAVEFORM_FRONTEND_FILE


def dft_filters(n_fft: int = N_FFT) -> np.ndarray:
    """Conv weights [2 * (n_fft // 2 + 1), 1, n_fft]: periodic-Hann-windowed cos rows, then -sin rows."""
    n = np.arange(n_fft)
    k = np.arange(n_fft // 2 + 1)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)
    angle = 2 * np.pi * k * n / n_fft
    return np.concatenate([np.cos(angle) * window, -np.sin(angle) * window])[:, None, :].astype(np.float32)


def build_frontend(n_mels: int, opset: int = 17) -> onnx.ModelProto:
    """The log-mel graph for ``n_mels`` bins (80 for Whisper base/small, 128 for large-v3)."""
    bins = N_FFT // 2 + 1
    inits = [
        numpy_helper.from_array(dft_filters(), "frontend/dft"),
        numpy_helper.from_array(np.ascontiguousarray(mel_filterbank(n_mels).T, np.float32), "frontend/mel_filters"),
        numpy_helper.from_array(np.array([0, 0, N_FFT // 2, 0, 0, N_FFT // 2], np.int64), "frontend/pads"),
        numpy_helper.from_array(np.array([1], np.int64), "frontend/axis1"),
        numpy_helper.from_array(np.array([2], np.int64), "frontend/axis2"),
        numpy_helper.from_array(np.array([0], np.int64), "frontend/zero"),
        numpy_helper.from_array(np.array([bins], np.int64), "frontend/bins"),
        numpy_helper.from_array(np.array([2 * bins], np.int64), "frontend/bins2"),
        numpy_helper.from_array(np.array([-1], np.int64), "frontend/minus1"),
        numpy_helper.from_array(np.array(1e-10, np.float32), "frontend/eps"),
        numpy_helper.from_array(np.array(1 / np.log(10.0), np.float32), "frontend/inv_ln10"),
        numpy_helper.from_array(np.array(8.0, np.float32), "frontend/eight"),
        numpy_helper.from_array(np.array(4.0, np.float32), "frontend/four"),
        numpy_helper.from_array(np.array(0.25, np.float32), "frontend/quarter"),
    ]
    node = helper.make_node
    nodes = [
        node("Unsqueeze", ["waveform", "frontend/axis1"], ["f/x"], name="frontend/channel"),
        node("Pad", ["f/x", "frontend/pads"], ["f/padded"], mode="reflect", name="frontend/reflect_pad"),
        node("Conv", ["f/padded", "frontend/dft"], ["f/spectrum"], strides=[HOP_LENGTH], kernel_shape=[N_FFT],
             name="frontend/dft"),
        # Whisper drops the last STFT frame
        node("Slice", ["f/spectrum", "frontend/zero", "frontend/minus1", "frontend/axis2"], ["f/frames"],
             name="frontend/drop_last_frame"),
        node("Slice", ["f/frames", "frontend/zero", "frontend/bins", "frontend/axis1"], ["f/real"], name="frontend/real"),
        node("Slice", ["f/frames", "frontend/bins", "frontend/bins2", "frontend/axis1"], ["f/imag"], name="frontend/imag"),
        node("Mul", ["f/real", "f/real"], ["f/real2"], name="frontend/real2"),
        node("Mul", ["f/imag", "f/imag"], ["f/imag2"], name="frontend/imag2"),
        node("Add", ["f/real2", "f/imag2"], ["f/power"], name="frontend/power"),
        node("MatMul", ["frontend/mel_filters", "f/power"], ["f/mel"], name="frontend/mel"),
        node("Max", ["f/mel", "frontend/eps"], ["f/mel_eps"], name="frontend/clip"),
        node("Log", ["f/mel_eps"], ["f/ln"], name="frontend/ln"),
        node("Mul", ["f/ln", "frontend/inv_ln10"], ["f/log10"], name="frontend/log10"),
        # the per-clip floor over every frame of the row (frames of pure padding sit at -10 and never set it)
        node("ReduceMax", ["f/log10"], ["f/row_max"], axes=[1, 2], keepdims=1, name="frontend/row_max"),
        node("Sub", ["f/row_max", "frontend/eight"], ["f/floor"], name="frontend/floor"),
        node("Max", ["f/log10", "f/floor"], ["f/floored"], name="frontend/apply_floor"),
        node("Add", ["f/floored", "frontend/four"], ["f/shifted"], name="frontend/shift"),
        node("Mul", ["f/shifted", "frontend/quarter"], ["f/scaled"], name="frontend/scale"),
        node("ReduceMax", ["frame_lengths"], ["f/longest"], axes=[0], keepdims=1, name="frontend/longest"),
        node("Slice", ["f/scaled", "frontend/zero", "f/longest", "frontend/axis2"], ["input_features"],
             name="frontend/keep_frames"),
    ]
    graph = helper.make_graph(
        nodes, "wavlink_audio_frontend",
        [helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["batch", "samples"]),
         helper.make_tensor_value_info("frame_lengths", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("input_features", TensorProto.FLOAT, ["batch", n_mels, "frames"])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="wavlink-edge export/frontend_graph.py")
    onnx.checker.check_model(model)
    return model
