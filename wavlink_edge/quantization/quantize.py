"""Write fp16, dynamic-INT8 and static-INT8 artifacts into an export directory, each gated on fidelity.

    python quantization/quantize.py EXPORT_DIR --precision fp16,int8 [--calibration-dir DIR]
        [--calibration-method percentile|minmax|entropy] [--calibration-limit N] [--static-set NAME] [--force]

For each tower (audio, text) and precision this writes `<tower>_fp16.onnx`, `<tower>_int8_dynamic.onnx`
and `<tower>_int8_static.onnx`, measures cosine vs the fp32 ONNX at every Matryoshka dim on held-out
clips and sentences (evaluate.py), and adds the file to manifest.json `artifacts` with its sha256,
size, fidelity and recipe. An artifact whose mean cosine is under the gate at any dim (fp16 0.999,
int8 0.99) is not written unless --force, and then it is marked `"forced": true`.
Recipes and why: docs/quantization.md.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import onnx

if not __package__:  # run by path: run as this checkout's package module (wavlink_edge/run_by_path.py says why)
    import runpy
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "run_by_path.py"))["run"](__file__)

from wavlink_edge.quantization import evaluate as ev
from wavlink_edge.quantization import graph, recipes
from wavlink_edge.runtime.arguments import add_deprecated_alias, add_model_option, int_at_least
from wavlink_edge.runtime.batching import with_frame_lengths
from wavlink_edge.runtime.errors import WavLinkError
from wavlink_edge.runtime.manifest import INT8_VARIANTS, Manifest, sha256_file
from wavlink_edge.runtime.outputs import exclusive_lock

TOWERS = ("audio", "text")
GATES = {"fp16": 0.999, "int8": 0.99}
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# fp16: ops kept fp32. LayerNorm (Whisper's pre-norm residual stream reaches |x| > 1e3 and the variance
# overflows fp16), Softmax (exp/sum precision), and the L2-normalisation tail (ReduceL2 of a 512-d
# vector). The final global-token LayerNorm is a LayerNormalization op and is covered by the op list.
FP16_OP_BLOCK_LIST = ["LayerNormalization", "Softmax", "ReduceL2"]
# fused fp16 audio graph: each clip in a mixed-length batch must equal itself alone (fp32 copy, CPU provider)
MIXED_BATCH_MAX_ABS = 1e-5
# dynamic INT8: weights int8 per output channel (per-tensor loses ~0.035 mean cosine on the text
# tower), activations uint8 with 7-bit range so u8 x s8 pairs cannot saturate the 16-bit intermediate
# of AVX2 without VNNI (vpmaddubsw); on VNNI / ARM dot-product CPUs it costs < 0.001 cosine (measured,
# docs/quantization.md), so one artifact serves every CPU.
DYNAMIC_PER_CHANNEL, DYNAMIC_REDUCE_RANGE = True, True
# Gather: the text tower's token-embedding table (47 MB of its 91 MB) stored int8, dequantized after the
# lookup: no activation scales involved, -0.0002 cosine, 2.5x smaller file.
DYNAMIC_OPS = ("MatMul", "Gemm", "Gather")
# audio dynamic INT8, the shipped recipe (graph.matmul_nbits_int8): every weight MatMul a MatMulNBits with
# int8 weights per (output channel, block of AUDIO_BLOCK_SIZE input rows) and int8 compute (accuracy level
# 4: activations quantized per row and per block at run time, so no statistic crosses rows and batches stay
# exact). Measured on real recordings that are not the calibration set (docs/quantization.md): the
# per-token u8 x s8 recipe it replaces reached 0.988 / 0.963 (trim mean / min) with every MatMul int8,
# block-wise reaches 0.997 / 0.987; SmoothQuant's fold lowers the block-wise worst clip (0.982), so it is
# not applied. Weights are kept within 7 bits, stored around zero point 64 (1..127): no pair of
# products of any int8 kernel (u8 x s8 vpmaddubsw on AVX2 without VNNI included) can leave int16, so the
# gate measured here holds on every CPU. AUDIO_DYNAMIC_TARGET is the gate of the audio artifacts (mean
# and min cosine at every dim, met by each clip policy on its own): under it nothing is written unless
# --force, and then it is marked.
AUDIO_BLOCK_SIZE = 16
AUDIO_ACCURACY_LEVEL = 4
AUDIO_WEIGHT_BITS = 7
AUDIO_SEARCH_SCALE = False
# The audio dynamic artifacts, one per CPU class: (file, weight bits, CPU kinds it is made for (runtime.cpu_features;
# None = every CPU), required). The runtime picks by this CPU's flags (runtime/model.py int8_for_this_cpu).
# The 7-bit AVX2-safe one measured 0.9945 / 0.9845 under trim (block 16), just under the target: when no rung
# reaches it, it is not written (not an error: it is optional), and a CPU without VNNI / dot product then
# runs fp32 rather than an INT8 graph that would saturate or miss the target.
AUDIO_DYNAMIC_BUILDS = (("audio_int8_dynamic.onnx", 8, ("vnni", "arm_dotprod"), True),
                        ("audio_int8_dynamic_avx2.onnx", 7, None, False))
AUDIO_DYNAMIC_LADDER = ("blockwise_int8", "blockwise_first_layer_fp32")
# per-token rungs (the previous recipe, graph.per_token_int8): still buildable by name for the sweep
PER_TOKEN_RUNGS = ("weight_matmuls", "first_attention_fp32", "first_attention_front_end_fp32", "first_layer_fp32",
                   "fc2_edges_fp32")
SMOOTH_ALPHA = 0.5  # SmoothQuant alpha of the per-token and static recipes (0.5 measured best)
AUDIO_DYNAMIC_TARGET = (0.995, 0.98)
# audio static Q/DQ: one activation scale per tensor, fixed at calibration. The earlier ladder's rungs that
# quantize more (docs/quantization.md) stay under 0.99 mean; ln_fed_middle (q/k/v and fc1 of the middle
# layers, 16 MatMuls) reached 0.989 / 0.965 under trim, short of the target, so the shipped static artifact
# has int8 weights and float activations, which is what meets it (and needs no calibration pass).
# weights_only forms no integer product (nothing to saturate on any CPU), so its weights keep all 8 bits, with one
# scale per block of 16 input rows (DequantizeLinear's blocked form, opset 21). Per output channel the gate
# measured 0.9887 / 0.9545 with 7 bits and 0.9963 / 0.9736 with 8: the weights are most of the error.
STATIC_WEIGHT_ONLY_BITS = 8
STATIC_WEIGHT_ONLY_BLOCK = 16
AUDIO_STATIC_LADDER = ("weights_only",)  # --static-set ln_fed_middle still builds (and gates) the int8-compute one
# first that passes the gate is written; "edges" = first and last layer + projector kept fp32 (the demo
# model's trained last layer is the pooler whose single-token MLP input has no batch of rows to average)
DYNAMIC_LADDER = ("weight_matmuls", "fc2_fp32", "fc2_edges_fp32", "mlp_edges_fp32")
# Static calibration: percentile (99.999) over every calibration clip, padded to 30 s (ORT's histograms need
# one shape). Measured on the demo heads against minmax over 16 clips x 2 policies, worst-dim mean / min:
# audio 0.9931 / 0.9714 vs 0.9912 / 0.9616, text 0.9933 / 0.9636 vs 0.991 / 0.952 (docs/quantization.md).
DEFAULT_CALIBRATION_METHOD = "percentile"
CALIBRATION_CLIPS_DEFAULT = None  # all; --calibration-limit N takes N spread evenly
# SmoothQuant statistics (max |x| per channel, both policies) come from at most this many calibration clips:
# with all 41 the dynamic rung first_attention_fp32 measured 0.9944 / 0.9770, with 16 0.9952 / 0.9861.
SMOOTHING_CLIPS = 16
FAST_CALIBRATION_CLIPS = 6  # --fast (CI)


class QuantizationError(WavLinkError):
    pass


def quiet_ort_logging() -> None:
    # onnxruntime.quantization logs one INFO line per tensor; keep the CLI readable
    logging.getLogger().setLevel(logging.ERROR)
    for name in ("onnxruntime", "onnxruntime.quantization", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)


# ---------------------------------------------------------------- artifacts (one function each)

def make_fp16(src: Path, dst: Path) -> dict:
    """fp16 weights and compute, fp32 inputs/outputs; blocked ops stay fp32 (GPU / TensorRT artifact).

    audio (`audio.onnx`): attention first fused into one com.microsoft.MultiHeadAttention per layer (graph.fuse_attention)
    with the padding as per-row key lengths, the form onnxruntime's CUDA flash / memory-efficient kernels
    take, so full-length and mixed-length batches both run fused (a 2-D mask or the exported MatMul/
    Softmax chain send every batch to the unfused path). LayerNorm stays fp32: fp16 LayerNorm was ~5 %
    faster in issue 29's GPU probe, but it was not measured for fidelity here (no GPU), and Whisper's
    residual stream reaches |x| > 1e3, where fp16 variance overflows.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    recipe = {"method": "onnxruntime.transformers.float16.convert_float_to_float16", "keep_io_types": True,
              "kept_fp32_ops": FP16_OP_BLOCK_LIST}
    source: str | onnx.ModelProto = str(src)
    if Path(src).name == "audio.onnx":
        fused, recipe["attention"] = fused_audio_graph(onnx.load(str(src)), Path(src).parent)
        source = fused
    # by path: ORT then runs shape inference on the file (infer_shapes_path), which works past protobuf's 2 GB
    model = convert_float_to_float16(source, keep_io_types=True, op_block_list=FP16_OP_BLOCK_LIST)
    onnx.save(model, str(dst))
    return recipe


def fused_audio_graph(model: onnx.ModelProto, export_dir: Path) -> tuple[onnx.ModelProto, dict]:
    """The fp32 audio graph with fused attention for GPUs: per-row key lengths where the key mask is a prefix
    of ones (global token first, right padding), else the [B, T] mask. Returns (graph, recipe entry)."""
    import json

    try:
        config = json.loads((Path(export_dir) / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise QuantizationError(f"{export_dir}/config.json: unreadable ({exc})") from None
    key_lengths = config.get("global_token_position", "first") == "first"
    fused, blocks = graph.fuse_attention(model, audio_heads(Path(export_dir) / "audio.onnx"), key_lengths=key_lengths)
    mask = ("key_padding_mask [batch]: real keys per row (right padding), from frame_lengths in the graph"
            if key_lengths else "key_padding_mask [batch, keys] (the global token is last: keys are not right-padded)")
    return fused, {"fused_blocks": blocks, "op": "com.microsoft.MultiHeadAttention", "mask": mask,
                   "layernorm": "fp32 (fp16 not measured for fidelity: no GPU in the session that built this)"}


def make_int8_dynamic(src: Path, dst: Path, tower: str, exclusion_set: str = "weight_matmuls",
                      absmax: dict | None = None, weight_bits: int = AUDIO_WEIGHT_BITS) -> dict:
    """CPU INT8 with activation scales computed at run time, never shared between batch rows.

    audio: fused attention (graph.fuse_attention: one MultiHeadAttention node per layer) and every weight
    MatMul as an int8 GEMM with one activation scale per token (graph.per_token_int8): batch-exact
    without a Scan, so batching still batches. text: ORT quantize_dynamic wrapped in a per-row Scan
    (rows also cut to their own length). exclusion_set keeps MatMuls fp32: "fc2_fp32" the second MLP
    matmuls, "edges" the first and last layer + projector.
    """
    model = onnx.load(str(src))
    exclude = recipes.dynamic_exclusions(model, tower, exclusion_set)
    if tower == "audio" and exclusion_set.startswith("blockwise_"):
        quantized, n_attention, n_int8, n_fp32 = audio_blockwise_int8_graph(model, audio_heads(src), exclude, weight_bits)
        onnx.save(quantized, str(dst))
        return {"method": "wavlink_edge.quantization.graph.matmul_nbits_int8 (com.microsoft.MatMulNBits)",
                "exclusion_set": exclusion_set, "nodes_kept_fp32": n_fp32, "int8_matmuls": n_int8,
                "attention": f"{n_attention} blocks fused into com.microsoft.MultiHeadAttention (fp32)",
                "weights": f"int{weight_bits} symmetric per output channel and block of {AUDIO_BLOCK_SIZE} input rows"
                           + (" (zero point 64: stored 1..127, int16-safe on every int8 kernel)" if weight_bits < 8 else
                              " (u8 x s8 pairs can saturate AVX2 without VNNI: made for VNNI / AMX / ARM dot-product CPUs)"),
                "activations": f"int8 per row and block of {AUDIO_BLOCK_SIZE}, computed at run time "
                               f"(accuracy_level {AUDIO_ACCURACY_LEVEL})",
                "front_end": "conv1/conv2 as im2col MatMuls (graph.conv_front_end_as_matmuls), int8 like the other weight MatMuls",
                "smoothing": None,
                "not_quantized": "attention act x act, LayerNorm, Softmax, Add",
                "batch_exact": "no statistic crosses rows: each row (and block) has its own scale; no Scan",
                "search_scale": AUDIO_SEARCH_SCALE}
    if tower == "audio":
        quantized, n_attention, smoothed, n_int8, n_fp32 = audio_int8_graph(model, audio_heads(src), exclude, absmax)
        onnx.save(quantized, str(dst))
        return {"method": "wavlink_edge.quantization.graph.per_token_int8 (MatMulIntegerToFloat)",
                "exclusion_set": exclusion_set, "nodes_kept_fp32": n_fp32, "int8_matmuls": n_int8,
                "smoothing": (f"SmoothQuant alpha {SMOOTH_ALPHA} folded into {smoothed} LayerNorms and the weights "
                              "reading them (per-channel max |x| from the calibration clips)") if smoothed else None,
                "attention": f"{n_attention} blocks fused into com.microsoft.MultiHeadAttention (fp32)",
                "weights": f"int{AUDIO_WEIGHT_BITS} symmetric, per output channel",
                "activations": "uint8 (zero point 128), one symmetric scale per token, computed at run time",
                "front_end": "conv1/conv2 as im2col MatMuls (graph.conv_front_end_as_matmuls), int8 like the other weight MatMuls",
                "not_quantized": "attention act x act, LayerNorm, Softmax, Add",
                "batch_exact": "no statistic crosses rows: each token has its own scale; no Scan"}
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        flat = Path(tmp) / "dyn.onnx"
        quantize_dynamic(str(src), str(flat), op_types_to_quantize=list(DYNAMIC_OPS), nodes_to_exclude=exclude,
                         per_channel=DYNAMIC_PER_CHANNEL, reduce_range=DYNAMIC_REDUCE_RANGE,
                         weight_type=QuantType.QInt8)
        # each row is also cut to its own length, so a sentence's pad tokens (which depend on its
        # batch-mates' lengths) never enter its activation scales
        model = recipes.per_row_scan(onnx.load(str(flat)), "attention_mask")
    onnx.save(model, str(dst))
    return {"method": "onnxruntime.quantization.quantize_dynamic", "op_types": list(DYNAMIC_OPS),
            "exclusion_set": exclusion_set, "nodes_kept_fp32": len(exclude),
            "weights": "int8 symmetric, per output channel" if DYNAMIC_PER_CHANNEL else "int8 per tensor",
            "activations": "uint8 dynamic (per row), reduce_range" if DYNAMIC_REDUCE_RANGE else "uint8 dynamic (per row)",
            "not_quantized": "attention act x act MatMuls, LayerNorm, Softmax, Add",
            "gather": "embedding tables int8 (weight only)",
            "batch_exact": "graph wrapped in a Scan over the batch axis: each row gets its own activation scales; "
                           "rows cut to their own length (right padding removed)"}


def smoothing_stats(model: onnx.ModelProto, feeds, front_end: bool = False) -> dict:
    """Per-channel max |x| for the SmoothQuant folds: the smoothable LayerNorm outputs (by tensor name) and,
    with front_end, the window inputs of the im2col front-end MatMuls (by node name, graph.FRONT_END_MATMULS;
    only the measured, unshipped front-end smoothing reads them, so the shipped recipe skips that pass)."""
    stats = graph.activation_absmax(model, graph.layernorm_outputs(model), feeds)
    if front_end:
        im2col, _ = graph.conv_front_end_as_matmuls(model)
        stats.update(graph.matmul_input_absmax(im2col, list(graph.FRONT_END_MATMULS), feeds))
    return stats


def audio_int8_graph(model: onnx.ModelProto, heads: int, exclude, absmax: dict | None = None,
                     front_end_alpha: float | None = None):
    """The audio dynamic INT8 graph: SmoothQuant folded into the LayerNorms (if absmax), fused attention, im2col
    front end (smoothed by an explicit scale only with front_end_alpha: measured, not shipped), per-token
    int8 GEMMs for every weight MatMul not in `exclude`. Returns (model, attention blocks, inputs smoothed,
    int8 MatMuls, weight MatMuls kept fp32)."""
    smoothed = 0
    if absmax:  # SmoothQuant fold of LayerNorm -> q/k/v/fc1 (exact in fp32)
        model, smoothed = graph.smooth_layernorms(model, absmax, SMOOTH_ALPHA)
    fused, n_attention = graph.fuse_attention(model, heads)
    fused, _ = graph.conv_front_end_as_matmuls(fused)
    if absmax and front_end_alpha is not None:  # windows come from a GELU: an explicit Mul, graph.smooth_matmul_inputs
        fused, n_front = graph.smooth_matmul_inputs(fused, {n: absmax[n] for n in graph.FRONT_END_MATMULS if n in absmax},
                                                    front_end_alpha)
        smoothed += n_front
    quantized, n_int8 = graph.per_token_int8(fused, exclude=set(exclude), weight_bits=AUDIO_WEIGHT_BITS)
    return quantized, n_attention, smoothed, n_int8, len(graph.per_token_candidates(fused)) - n_int8


def audio_blockwise_int8_graph(model: onnx.ModelProto, heads: int, exclude=(), weight_bits: int = AUDIO_WEIGHT_BITS):
    """The shipped audio dynamic INT8 graph: fused attention, im2col front end, every weight MatMul not in
    `exclude` a block-wise MatMulNBits with int8 compute. Returns (model, attention blocks, int8 MatMuls,
    weight MatMuls kept fp32)."""
    fused, n_attention = graph.fuse_attention(model, heads)
    fused, _ = graph.conv_front_end_as_matmuls(fused)
    quantized, n_int8 = graph.matmul_nbits_int8(fused, exclude=set(exclude), block_size=AUDIO_BLOCK_SIZE,
                                                accuracy_level=AUDIO_ACCURACY_LEVEL, weight_bits=weight_bits,
                                                search_scale=AUDIO_SEARCH_SCALE)
    return quantized, n_attention, n_int8, len(graph.per_token_candidates(fused)) - n_int8


def audio_heads(src: Path) -> int:
    """Attention heads of the audio tower, from the export's config.json."""
    import json

    try:
        return int(json.loads((Path(src).parent / "config.json").read_text())["audio"]["n_heads"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise QuantizationError(f"{Path(src).parent}/config.json: no audio.n_heads ({exc})") from None


def prepare_for_static(src: Path, dst: Path, absmax: dict | None = None) -> Path:
    """Constant nodes -> initializers (recipes.constants_to_initializers); node names are unchanged. With
    absmax (audio), the SmoothQuant fold first: static per-tensor activation scales gain the most from it."""
    model = onnx.load(str(src))
    if absmax:
        model, _ = graph.smooth_layernorms(model, absmax, SMOOTH_ALPHA)
    onnx.save(recipes.constants_to_initializers(model), str(dst))
    return dst


def make_int8_static(src: Path, dst: Path, tower: str, exclusion_set: str, calibration_cache: Path,
                     method: str = "minmax") -> dict:
    """Static Q/DQ INT8 (symmetric int8 activations and per-channel weights, as TensorRT wants them).

    Ranges come from `calibration_cache` (calibrate() wrote it), so trying several exclusion sets
    costs one calibration pass.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    model = onnx.load(str(src))
    if exclusion_set == "weights_only":
        quantized, n = graph.weight_only_qdq(model, STATIC_WEIGHT_ONLY_BITS, STATIC_WEIGHT_ONLY_BLOCK)
        onnx.save(quantized, str(dst))
        return {"method": "wavlink_edge.quantization.graph.weight_only_qdq", "format": "QDQ (weights only)",
                "exclusion_set": exclusion_set, "int8_weights": n,
                "weights": f"int{STATIC_WEIGHT_ONLY_BITS} symmetric per (block of {STATIC_WEIGHT_ONLY_BLOCK} input rows, "
                           "output channel), blocked DequantizeLinear (opset 21)",
                "activations": "float (not quantized): int8 storage, float compute"}
    # audio: 7-bit weights (reduce_range). ORT's CPU provider runs s8 x s8 Q/DQ MatMuls through its u8 x s8
    # kernels (activations shifted by 128), which saturate on AVX2 without VNNI with 8-bit weights.
    reduce_range = tower == "audio"
    ops, include, exclude = recipes.static_selection(exclusion_set, model, tower)
    quantize_static(str(src), str(dst), calibration_data_reader=None, quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=ops, nodes_to_quantize=include, nodes_to_exclude=exclude,
                    per_channel=True, reduce_range=reduce_range, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
                    calibrate_method=_ort_method(method), calibration_cache_path=str(calibration_cache))
    return {"method": "onnxruntime.quantization.quantize_static", "format": "QDQ",
            "exclusion_set": exclusion_set, "op_types": ops or "all",
            "nodes_quantized_listed": len(include) if include is not None else "all",
            "nodes_kept_fp32": len(exclude),
            "weights": "int7 symmetric per channel (reduce_range)" if reduce_range else "int8 symmetric per channel",
            "activations": "int8 symmetric per tensor (static)"}


# ---------------------------------------------------------------- calibration

class _Reader:
    """onnxruntime CalibrationDataReader over a list of feeds (completed with frame_lengths where the graph takes it)."""

    def __init__(self, feeds, input_names=()):
        self._feeds = [with_frame_lengths(f, input_names) for _, f in feeds]
        self._it = iter(self._feeds)

    def get_next(self):
        return next(self._it, None)

    def __len__(self):
        return len(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:  # ORT's strided calibration
        self._it = iter(self._feeds[start_index:end_index])


def calibration_feeds(export_dir: Path, tower: str, calibration_dir: Path | None, limit: int | None,
                      method: str = "minmax") -> tuple[list, dict]:
    """Calibration inputs. minmax takes any shapes; ORT's histogram calibrators (entropy, percentile)
    stack each tensor across inputs, so for them every input must have the same shape: audio uses the
    padded 30 s policy only, text goes in as one padded batch."""
    histogram = method != "minmax"
    manifest = ev.load_manifest(export_dir)
    folder = Path(calibration_dir) if calibration_dir else ev.CALIBRATION_DIR
    if tower == "audio":
        paths = ev.audio_files(folder, limit=limit or None)
        if not paths:
            raise QuantizationError(f"no audio ({', '.join(sorted(ev.AUDIO_SUFFIXES))}) in calibration dir {folder}")
        held = {p.resolve() for p in ev.heldout_audio_paths()}
        if any(p.resolve() in held for p in paths):
            raise QuantizationError(f"calibration dir {folder} overlaps the held-out evaluation clips")
        # both input policies: the runtime serves padded 30 s clips and trimmed clips
        policies = ("pad",) if histogram else ("pad", "trim")
        try:
            feeds = ev.audio_feeds(paths, manifest["model"]["n_mels"], policies)
        except (WavLinkError, ValueError) as exc:  # unreadable / garbage calibration audio: one line, no traceback
            raise QuantizationError(f"calibration audio: {exc}") from None
        return feeds, {"audio_dir": _rel(folder), "clips": len(paths), "inputs": len(feeds), "policies": list(policies)}
    sentences_file = folder / "sentences.txt"
    if not sentences_file.is_file():
        sentences_file = ev.CALIBRATION_DIR / "sentences.txt"  # user audio dir without text: bundled sentences
    sentences = ev.read_sentences(sentences_file)
    overlap = set(sentences) & set(ev.heldout_sentences())
    if overlap:
        raise QuantizationError(f"calibration sentences overlap the held-out ones: {sorted(overlap)[:3]}")
    info = {"sentences": _rel(sentences_file), "inputs": len(sentences)}
    if histogram:
        return [("all", ev.text_batch(sentences, Path(export_dir) / "tokenizer.json"))], {**info, "batched": True}
    return ev.text_feeds(sentences, Path(export_dir) / "tokenizer.json"), info


def _ort_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[method]


def calibrate(src: Path, feeds: list, method: str, cache: Path) -> None:
    """One calibration pass over every tensor; the ranges land in `cache` (ORT's calibration cache)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    # Flush collected activations every k inputs to bound memory (a padded 30 s clip has ~1 GB of
    # intermediate tensors). ORT raises "No data is collected" when the last flush leaves nothing, i.e.
    # when k divides the number of inputs, so k is chosen not to. The histogram calibrators ignore that
    # option and hold every input's tensors (all 41 bundled clips: killed for memory at 24 GB), so they
    # get ORT's strided collection instead: one input at a time, histograms merged.
    k = next((k for k in (3, 4, 5, 2) if len(feeds) % k), 1)
    stride = {"CalibMaxIntermediateOutputs": k} if method == "minmax" else {"CalibStridedMinMax": 1}
    with tempfile.TemporaryDirectory() as tmp:
        # quantize_static with no op-type filter calibrates all tensors and writes the cache; the model
        # it writes is thrown away.
        # Histogram methods calibrate only MatMul/Gemm/Conv inputs: ORT's histogram fails on the
        # constant-valued tensors elsewhere in the graph ("Too many bins for data range").
        ops = list(recipes.FLOAT_COMPUTE_OPS) if method == "minmax" else ["MatMul", "Gemm", "Conv"]
        # ORT prints a line per strided step ("Collecting tensor data and making histogram ...")
        with contextlib.redirect_stdout(io.StringIO()):
            inputs = [i.name for i in onnx.load(str(src), load_external_data=False).graph.input]
            quantize_static(str(src), str(Path(tmp) / "throwaway.onnx"), calibration_data_reader=_Reader(feeds, inputs),
                            quant_format=QuantFormat.QDQ, op_types_to_quantize=ops, per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=_ort_method(method),
                            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, **stride},
                            calibration_cache_path=str(cache))


def _rel(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ev.REPO)) if path.is_relative_to(ev.REPO) else str(path)


# ---------------------------------------------------------------- gate and manifest

def gate(fidelity: dict, precision: str, tower: str = "text") -> tuple[float, bool]:
    """(threshold, passed). Audio INT8 is gated on its target, AUDIO_DYNAMIC_TARGET: mean and min cosine at every
    dim, over all inputs *and* for each clip policy on its own (by_policy), so the short trimmed clips -- the
    worst case and the runtime's default policy -- cannot hide behind the padded ones. Others: mean at every dim."""
    threshold = GATES[precision]
    if tower == "audio" and precision == "int8":
        mean, low = AUDIO_DYNAMIC_TARGET
        figures = [fidelity] + list((fidelity.get("by_policy") or {}).values())
        return mean, all(ev.min_mean(f) >= mean and ev.min_min(f) >= low for f in figures)
    return threshold, ev.min_mean(fidelity) >= threshold


def artifact_name(tower: str, precision: str, variant: str | None = None) -> str:
    return f"{tower}_{precision}{'_' + variant if variant else ''}.onnx"


class _Run:
    """State of one quantize_export call: held-out sets (fp32 references computed once) and results."""

    def __init__(self, export_dir: Path, force: bool, eval_dir, eval_limit: int, log, fast: bool = False):
        self.export_dir, self.force, self.log, self.fast = Path(export_dir), force, log, fast
        self.eval_dir, self.eval_limit = eval_dir, eval_limit
        self._held: dict[str, ev.HeldOut] = {}
        self.results: dict[str, dict] = {}
        self.refused: list[str] = []
        self.skipped: list[str] = []  # optional artifacts under their gate: not written, not an error

    def absmax(self, src: Path, tower: str, calibration_dir, limit: int | None) -> dict | None:
        """Per-channel max |x| of the smoothable LayerNorm outputs over the calibration clips (audio; once)."""
        if tower != "audio":
            return None
        if not hasattr(self, "_absmax"):
            feeds, _ = calibration_feeds(self.export_dir, tower, calibration_dir, limit)
            model = onnx.load(str(src))
            self._absmax = smoothing_stats(model, feeds)
        return self._absmax

    def held(self, tower: str) -> ev.HeldOut:
        if tower not in self._held:
            self._held[tower] = ev.HeldOut(self.export_dir, tower, self.eval_dir, self.eval_limit, self.fast)
        return self._held[tower]

    def measure(self, tmp_path: Path, tower: str, precision: str) -> tuple[dict, bool]:
        held = self.held(tower)
        fig = held.fidelity(tmp_path)
        threshold, passed = gate(fig, precision, tower)
        on_target = tower == "audio" and precision == "int8"
        return {**fig, "gate": threshold, "passed": passed,
                "gate_on": (f"cosine_mean >= {AUDIO_DYNAMIC_TARGET[0]} and cosine_min >= {AUDIO_DYNAMIC_TARGET[1]} at every "
                            "dim, over all inputs and for each clip policy") if on_target else "cosine_mean at every dim",
                **({"gate_min": AUDIO_DYNAMIC_TARGET[1]} if on_target else {}),
                "heldout": held.describe()}, passed

    def commit(self, tmp_path: Path, tower: str, precision: str, variant: str | None, fidelity: dict,
               recipe: dict, extra: dict | None = None, name: str | None = None, required: bool = True) -> bool:
        name = name or artifact_name(tower, precision, variant)
        dst = self.export_dir / name
        src = self.export_dir / f"{tower}.onnx"
        manifest = Manifest.load(self.export_dir)
        if not fidelity["passed"] and not self.force:
            tmp_path.unlink(missing_ok=True)
            # A previous artifact of this name that passed its gate (and still matches its entry and
            # the current fp32 source) stays: the refused candidate replaces nothing.
            kept = self._still_valid(manifest, name, src)
            if not kept and name in manifest.files:
                dst.unlink(missing_ok=True)
                manifest.remove(name)
                manifest.save()
            (self.refused if required else self.skipped).append(name)
            limit = f"{fidelity['gate']}" + (f" / {fidelity['gate_min']}" if "gate_min" in fidelity else "")
            self.log(f"  {'REFUSED' if required else 'not written (optional)'} {name}: cosine mean "
                     f"{ev.min_mean(fidelity):.5f} / min {ev.min_min(fidelity):.5f} under the gate "
                     f"({fidelity['gate_on']}: {limit}) (use --force to write it anyway, marked)"
                     f"{'; the previous passing file is kept' if kept else ''}")
            return False
        fidelity["forced"] = not fidelity["passed"]
        os.replace(tmp_path, dst)
        entry = manifest.record(name, None, tower=tower, precision=precision, **({"variant": variant} if variant else {}),
                                source={"file": src.name, "sha256": sha256_file(src)},
                                **(extra or {}), fidelity=fidelity, recipe=recipe)
        manifest.save()
        self.results[name] = entry
        flag = " (FORCED under the gate)" if fidelity["forced"] else ""
        dims = "  ".join(f"{d}:{fidelity[d]['cosine_mean']:.5f}/{fidelity[d]['cosine_min']:.5f}"
                         for d in fidelity if d.isdigit())
        self.log(f"  wrote {name} ({dst.stat().st_size / 1e6:.1f} MB){flag}  mean/min per dim {dims}")
        return True

    @staticmethod
    def _still_valid(manifest: Manifest, name: str, src: Path) -> bool:
        entry = manifest.files.get(name)
        if not entry or not (entry.get("fidelity") or {}).get("passed") or entry["fidelity"].get("forced"):
            return False
        path = manifest.path(name)
        return (path.is_file() and sha256_file(path) == entry.get("sha256")
                and (entry.get("source") or {}).get("sha256") == sha256_file(src))

    def tmp(self, name: str) -> Path:
        return self.export_dir / f".tmp-{os.getpid()}-{name}"


# ---------------------------------------------------------------- driver

def quantize_export(export_dir, precisions, calibration_dir=None, calibration_method: str = DEFAULT_CALIBRATION_METHOD,
                    force: bool = False, towers=TOWERS, static_set: str | None = None,
                    calibration_limit: int | None = CALIBRATION_CLIPS_DEFAULT, eval_dir=None, eval_limit: int = 8,
                    log=print, fast: bool = False, int8_variants=("dynamic", "static")) -> dict:
    """Write the requested precisions (fp16, int8 = dynamic + static) for each tower; return the new entries.

    fast (CI): calibrate on FAST_CALIBRATION_CLIPS clips and measure on runtime/samples only; the
    manifest records which held-out inputs were used.

    Raises QuantizationError listing the refused artifacts if any was under its gate (without force);
    the ones that passed are written and in the manifest either way.
    """
    quiet_ort_logging()
    export_dir = Path(export_dir)
    if not (export_dir / "manifest.json").is_file():
        raise QuantizationError(f"{export_dir} is not an export directory (no manifest.json)")
    precisions = [p for p in precisions if p != "fp32"]
    if not precisions:
        raise QuantizationError("no precision to write: give --precision fp16, int8 or fp16,int8")
    bad = [p for p in precisions if p not in GATES]
    if bad:
        raise QuantizationError(f"unknown precision(s) {bad}: use fp16, int8")
    if not towers:
        raise QuantizationError(f"no tower given: use {', '.join(TOWERS)}")
    if "int8" in precisions and calibration_dir is not None:
        # reported before any work: a typo here would otherwise surface after minutes of fp16/dynamic work
        folder = Path(calibration_dir)
        if not folder.is_dir():
            raise QuantizationError(f"--calibration-dir {folder}: not a directory")
        if "audio" in towers:
            paths = ev.audio_files(folder, limit=(FAST_CALIBRATION_CLIPS if fast else calibration_limit) or None)
            if not paths:
                raise QuantizationError(f"--calibration-dir {folder}: no audio files ({', '.join(sorted(ev.AUDIO_SUFFIXES))})")
            for path in paths:  # garbage audio is one line now, not a traceback after the other artifacts
                try:
                    ev.load_audio(path)
                except (WavLinkError, ValueError) as exc:
                    raise QuantizationError(f"--calibration-dir: {exc}") from None
    if calibration_method not in CALIBRATION_METHODS:
        raise QuantizationError(f"unknown calibration method {calibration_method!r}: use {', '.join(CALIBRATION_METHODS)}")
    if static_set is not None and static_set not in recipes.STATIC_CHOICES:
        raise QuantizationError(f"unknown static set {static_set!r}: use {', '.join(recipes.STATIC_CHOICES)}")
    bad_variants = [v for v in int8_variants if v not in INT8_VARIANTS]
    if bad_variants or not int8_variants:
        raise QuantizationError(f"unknown int8 variant(s) {bad_variants or list(int8_variants)}: use "
                                f"{', '.join(INT8_VARIANTS)}")
    if eval_dir is not None and not Path(eval_dir).is_dir():
        raise QuantizationError(f"--eval-dir {eval_dir}: not a directory")
    with exclusive_lock(export_dir.absolute(), f"the export {export_dir}"):  # the lock export/to_onnx.py takes
        results = _quantize_locked(export_dir, precisions, calibration_dir, calibration_method, force, towers, static_set,
                                   calibration_limit, eval_dir, eval_limit, log, fast, int8_variants)
        from wavlink_edge.quantization.lyrics import LyricsQuantizationError, quantize_lyrics  # only for exports with lyrics

        try:  # an export written with --lyrics: its lyrics graphs too (quantization/lyrics.py)
            results.update(quantize_lyrics(export_dir, precisions, force=force, log=log, fast=fast))
        except LyricsQuantizationError as exc:
            raise QuantizationError(str(exc)) from None
        return results


def _quantize_locked(export_dir: Path, precisions, calibration_dir, calibration_method, force, towers, static_set,
                     calibration_limit, eval_dir, eval_limit, log, fast, int8_variants) -> dict:
    for stale in export_dir.glob(".tmp-*"):  # a killed run's candidates: we hold the lock, their writer is gone
        stale.unlink(missing_ok=True)
    manifest = ev.load_manifest(export_dir)
    needed = [f"{tower}.onnx" for tower in towers] + (["tokenizer.json"] if "text" in towers else [])
    for name in needed:
        entry = manifest["artifacts"].get(name)
        if entry is None or not (export_dir / name).is_file():
            raise QuantizationError(f"{export_dir / name} is missing (or not in its manifest): re-export the model "
                                    "with export/to_onnx.py")
        if sha256_file(export_dir / name) != entry["sha256"]:
            raise QuantizationError(f"{export_dir / name} does not match its manifest sha256: re-export the model")

    if fast:
        calibration_limit = min(calibration_limit or FAST_CALIBRATION_CLIPS, FAST_CALIBRATION_CLIPS)
    smoothing_limit = min(calibration_limit or SMOOTHING_CLIPS, SMOOTHING_CLIPS)
    run = _Run(export_dir, force, eval_dir, eval_limit, log, fast)
    try:
        for tower in towers:
            src = export_dir / f"{tower}.onnx"
            if "fp16" in precisions:
                _artifact_fp16(run, src, tower)
            if "int8" in precisions and "dynamic" in int8_variants:
                per_token = tower == "audio" and any(not r.startswith("blockwise_") for r in AUDIO_DYNAMIC_LADDER)
                absmax = run.absmax(src, tower, calibration_dir, smoothing_limit) if per_token else None
                if tower == "audio":
                    for name, bits, cpus, required in AUDIO_DYNAMIC_BUILDS:
                        _artifact_int8_dynamic(run, src, tower, absmax, name, bits, cpus, required)
                else:
                    _artifact_int8_dynamic(run, src, tower, absmax)
            if "int8" in precisions and "static" in int8_variants:
                ladder = [static_set] if static_set else (AUDIO_STATIC_LADDER if tower == "audio" else recipes.STATIC_LADDER)
                calibrated = any(name != "weights_only" for name in ladder)
                _artifact_int8_static(run, src, tower, calibration_dir, calibration_method, static_set, calibration_limit,
                                      run.absmax(src, tower, calibration_dir, smoothing_limit) if calibrated else None)
    finally:  # interrupted (Ctrl-C, an error) or not: no half-written candidate stays behind
        for leftover in export_dir.glob(f".tmp-{os.getpid()}-*"):
            leftover.unlink(missing_ok=True)
    if run.refused:
        raise QuantizationError(f"under the fidelity gate, not written: {', '.join(run.refused)}")
    return run.results


def _artifact_fp16(run: _Run, src: Path, tower: str) -> None:
    t = time.perf_counter()
    tmp = run.tmp(artifact_name(tower, "fp16"))
    recipe = make_fp16(src, tmp)
    fid, _ = run.measure(tmp, tower, "fp16")
    if tower == "audio":
        # each clip in a padded mixed-length batch against itself alone, by the fp16 graph on the CPU provider
        # (onnxruntime's CPU MultiHeadAttention runs fp16) and by the same fused graph in fp32
        held = run.held(tower)
        fid["mixed_batch"] = {"fp16_cpu": ev.mixed_batch_exactness(tmp, held.feeds)}
        with tempfile.TemporaryDirectory() as scratch:
            fused32 = Path(scratch) / "audio_fused_fp32.onnx"
            onnx.save(fused_audio_graph(onnx.load(str(src)), src.parent)[0], str(fused32))
            fid["mixed_batch"]["fused_fp32_cpu"] = ev.mixed_batch_exactness(fused32, held.feeds)
        fid["mixed_batch"]["gate"] = {"fused_fp32_cpu_max_abs": MIXED_BATCH_MAX_ABS}
        worst = fid["mixed_batch"]["fused_fp32_cpu"]["max_abs"]
        if worst > MIXED_BATCH_MAX_ABS:
            raise QuantizationError(f"audio fp16: the fused fp32 graph's mixed batch differs from each clip alone by "
                                    f"{worst:.2e} (allowed {MIXED_BATCH_MAX_ABS:.0e}): the key-length mask is wrong here")
    recipe["seconds"] = round(time.perf_counter() - t, 1)
    run.commit(tmp, tower, "fp16", None, fid, recipe, {"batch_independent": True})


def _artifact_int8_dynamic(run: _Run, src: Path, tower: str, absmax: dict | None = None, name: str | None = None,
                           weight_bits: int = AUDIO_WEIGHT_BITS, cpus=None, required: bool = True) -> None:
    t = time.perf_counter()
    name = name or artifact_name(tower, "int8", "dynamic")
    tmp = run.tmp(name)
    tried = []
    ladder = AUDIO_DYNAMIC_LADDER if tower == "audio" else DYNAMIC_LADDER
    best = None  # (mean, rung) of the best rung tried, written marked under --force when none passes
    for rung in ladder:
        recipe = make_int8_dynamic(src, tmp, tower, rung, absmax, weight_bits)
        fid, passed = run.measure(tmp, tower, "int8")
        tried.append({"exclusion_set": rung, "cosine_mean": ev.min_mean(fid), "cosine_min": ev.min_min(fid),
                      **({"by_policy": {p: [ev.min_mean(f), ev.min_min(f)] for p, f in fid.get("by_policy", {}).items()}}
                         if tower == "audio" else {})})
        run.log(f"  {name} {rung}: cosine mean {ev.min_mean(fid):.5f} min {ev.min_min(fid):.5f}")
        if passed:
            break
        if best is None or ev.min_mean(fid) > best[0]:
            best = (ev.min_mean(fid), rung)
    else:
        if run.force and best is not None and best[1] != ladder[-1]:  # none passed: --force writes the best, marked
            recipe = make_int8_dynamic(src, tmp, tower, best[1], absmax, weight_bits)
            fid, _ = run.measure(tmp, tower, "int8")
    recipe.update({"ladder_tried": tried, "seconds": round(time.perf_counter() - t, 1)})
    # batch_independent: audio per-token scales, text per-row Scan (tests check both)
    run.commit(tmp, tower, "int8", "dynamic", fid, recipe,
               {"batch_independent": True, "execution": "cpu", **({"int8_cpus": list(cpus)} if cpus else {})}, name,
               required)


def _artifact_int8_static(run: _Run, src: Path, tower: str, calibration_dir, method: str, static_set: str | None,
                          limit: int | None, absmax: dict | None = None) -> None:
    t = time.perf_counter()
    # Walk from most to least quantized and keep the first set that passes the gate; the measured
    # figures of the ones that failed go into the recipe so the choice is visible.
    ladder = [static_set] if static_set else list(AUDIO_STATIC_LADDER if tower == "audio" else recipes.STATIC_LADDER)
    calibrated = any(name != "weights_only" for name in ladder)  # weights_only has no activation ranges
    with tempfile.TemporaryDirectory() as tmpdir:
        cache = Path(tmpdir) / "calibration.json"
        calib = None
        if calibrated:
            feeds, calib_info = calibration_feeds(run.export_dir, tower, calibration_dir, limit, method)
            src = prepare_for_static(src, Path(tmpdir) / "prepared.onnx", absmax)
            calibrate(src, feeds, method, cache)
            calib = {**calib_info, "method": method, "seconds": round(time.perf_counter() - t, 1)}
        tried = []
        tmp = run.tmp(artifact_name(tower, "int8", "static"))
        for name in ladder:
            recipe = make_int8_static(src, tmp, tower, name, cache, method)
            fid, passed = run.measure(tmp, tower, "int8")
            tried.append({"exclusion_set": name, "cosine_mean": ev.min_mean(fid), "cosine_min": ev.min_min(fid)})
            run.log(f"  {tower} static {name}: cosine mean {ev.min_mean(fid):.5f} min {ev.min_min(fid):.5f}")
            if passed:
                break
        recipe.update({"calibration": calib,
                       "smoothing": f"SmoothQuant alpha {SMOOTH_ALPHA} (LayerNorm -> q/k/v/fc1 fold)"
                       if absmax and calibrated else None,
                       "ladder_tried": tried, "seconds": round(time.perf_counter() - t, 1)})
        run.commit(tmp, tower, "int8", "static", fid, recipe, {"batch_independent": True, "format": "QDQ"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_option(parser, dest="export_dir", positional=True)
    parser.add_argument("--precision", default="fp16,int8", help="comma list of fp16, int8 (int8 = dynamic + static)")
    parser.add_argument("--tower", default="audio,text", help="comma list of audio, text")
    parser.add_argument("--calibration-dir", type=Path, help="your own audio (+ optional sentences.txt) for static INT8")
    parser.add_argument("--calibration-method", default=DEFAULT_CALIBRATION_METHOD, choices=CALIBRATION_METHODS)
    parser.add_argument("--calibration-limit", type=int_at_least(0), default=0,
                        help=f"static calibration clips (default 0 = all; SmoothQuant statistics use at most {SMOOTHING_CLIPS})")
    parser.add_argument("--static-set", choices=recipes.STATIC_CHOICES,
                        help="pin the static exclusion set instead of walking the ladder")
    parser.add_argument("--eval-dir", type=Path, help="extra held-out clips (default bench/data/wavlink_eval if present)")
    parser.add_argument("--eval-limit", type=int_at_least(0), default=8, help="clips taken from the eval dir (default 8)")
    parser.add_argument("--force", action="store_true", help="write artifacts under the gate, marked forced")
    parser.add_argument("--int8-variants", default="dynamic,static", help="comma list of dynamic, static (int8 only)")
    add_deprecated_alias(parser, "--fast", "--quick", action="store_true")
    parser.add_argument("--quick", dest="fast", action="store_true",
                        help=f"CI path: {FAST_CALIBRATION_CLIPS} calibration clips, held-out = runtime/samples only")
    args = parser.parse_args(argv)
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    towers = [t.strip() for t in args.tower.split(",") if t.strip()]
    if not precisions:
        parser.error("--precision is empty: give fp16, int8 or fp16,int8")
    if not towers or any(t not in TOWERS for t in towers):
        parser.error(f"--tower takes {', '.join(TOWERS)}")
    start = time.perf_counter()
    try:
        quantize_export(args.export_dir, precisions, args.calibration_dir, args.calibration_method, args.force,
                        towers, args.static_set, args.calibration_limit or None, args.eval_dir, args.eval_limit,
                        fast=args.fast, int8_variants=tuple(v.strip() for v in args.int8_variants.split(",") if v.strip()))
    except (QuantizationError, WavLinkError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing half-written was left behind", file=sys.stderr)
        return 130
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
