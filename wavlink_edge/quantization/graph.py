"""Graph surgery on the exported fp32 audio graph (torch-free): fused attention for onnxruntime.

The TorchScript export spells each attention block out (MatMul, scale, Reshape, Transpose, MatMul,
Softmax, MatMul, Transpose, Reshape). onnxruntime's transformer optimizer does not recognise that
pattern for this graph, so attention ran as ~12 separate fp32 ops materialising the [B, 8, T, T]
score tensor. `fuse_attention` replaces each block by one `com.microsoft.MultiHeadAttention` node
(query/key/value [B, T, 512] in, [B, T, 512] out), which onnxruntime's CPU provider runs with its
tiled (flash-style) kernel. The block's scaling (q and k each times head_dim^-0.25) equals the
node's default 1/sqrt(head_dim), so the result is the same computation.
"""
from __future__ import annotations

import contextlib
import re
import tempfile
from pathlib import Path

import onnx
from onnx import helper

from wavlink_edge.runtime.session import OnnxSession

MS_DOMAIN = "com.microsoft"
_LAYER = re.compile(r"^/audio/layers\.(\d+)/self_attn/")
FRONT_END_MATMULS = ("/audio/conv1/MatMul", "/audio/conv2/MatMul")  # names given by conv_front_end_as_matmuls
INLINE_WEIGHT_BYTES = 1_800_000_000  # protobuf cannot serialise a message over 2 GB (large-v3 in fp32)


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A deep copy. CopyFrom works past protobuf's 2 GB limit, where a serialise/parse round trip fails."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


@contextlib.contextmanager
def ort_session(model: onnx.ModelProto, threads: int | None = None):
    """The runtime's CPU session (runtime/session.py) of an in-memory model: from its bytes, or, past 2 GB
    of weights, from a temporary file with external data (kept until the block ends)."""
    if sum(len(i.raw_data) for i in model.graph.initializer) < INLINE_WEIGHT_BYTES:
        yield OnnxSession(model.SerializeToString(), name="probe graph", threads=threads)
        return
    with tempfile.TemporaryDirectory(prefix="wavlink-graph-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="model.onnx.data", size_threshold=1024)
        yield OnnxSession(path, name="probe graph", threads=threads)


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def remove_dead_nodes(model: onnx.ModelProto) -> None:
    """Drop nodes (and initializers) nothing reaches the graph outputs through."""
    g = model.graph
    needed = {o.name for o in g.output}
    keep = []
    for node in reversed(list(g.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
            for a in node.attribute:  # subgraphs read outer names
                if a.type == onnx.AttributeProto.GRAPH:
                    needed.update(i for n in a.g.node for i in n.input)
    keep.reverse()
    del g.node[:]
    g.node.extend(keep)
    inits = [i for i in g.initializer if i.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)


def fuse_attention(model: onnx.ModelProto, num_heads: int, key_lengths: bool = False) -> tuple[onnx.ModelProto, int]:
    """Copy of `model` with every Whisper self-attention block as one MultiHeadAttention node.

    key_lengths: the padding goes to the node as each row's number of real keys (a 1-D key_padding_mask,
    [B] int32: right padding) instead of the [B, T_kv] mask. The two mean the same for this graph's mask,
    which is a prefix of ones (global token first, then the clip's frames, then padding) -- callers check
    that (the token position is in config.json) and measure it. Why: onnxruntime's CUDA flash and
    memory-efficient kernels take per-row lengths but not a 2-D mask, which sends every batch to the
    unfused kernel (2.4x slower at 32 x 3000 frames on an H200, issue 29's probe).

    Returns (model, number of blocks fused). Fails loudly if a block does not have the exported shape.
    """
    import numpy as np

    model = copy_model(model)
    by_name = {n.name: n for n in model.graph.node}
    layers = sorted({int(m.group(1)) for n in model.graph.node if (m := _LAYER.match(n.name))})
    if not layers:
        raise ValueError("no /audio/layers.N/self_attn/ nodes: was the graph exported by export/to_onnx.py?")
    producers = _producers(model)
    fused_nodes, key_masks = [], {}
    for layer in layers:
        p = f"/audio/layers.{layer}/self_attn/"
        try:
            q = by_name[p + "q_proj/Add"].output[0]
            k = by_name[p + "k_proj/MatMul"].output[0]
            v = by_name[p + "v_proj/Add"].output[0]
            out = by_name[p + "Reshape_3"]
            for name in ("MatMul", "Softmax", "MatMul_1"):
                by_name[p + name]
        except KeyError as exc:
            raise ValueError(f"layer {layer}: attention block not in the exported form ({exc})") from None
        inputs = [q, k, v]
        # Graphs with frame_lengths mask padded keys: the node always takes the mask, so every batch runs one
        # kernel and a clip's int8 embedding alone matches it in a padded batch (bench/results/scale_mixed.md).
        # An If taking ORT's unmasked (flash) kernel for unpadded batches was dropped: the kernels round
        # differently, int8 amplifies it, and no speed difference was measurable on a loaded 2-core host.
        if p + "Where" in by_name:
            mask = _key_mask(by_name[p + "Where"], producers, layer)
            if mask not in key_masks:
                key_masks[mask] = [helper.make_node("Cast", [mask], [mask + "/int32"], to=onnx.TensorProto.INT32,
                                                    name=mask + "/int32")]
                if key_lengths:  # [B, T_kv] prefix of ones -> [B] real keys per row
                    key_masks[mask].append(helper.make_node(
                        "ReduceSum", [mask + "/int32", _const(model, mask + "/axis1", np.array([1], np.int64))],
                        [mask + "/lengths"], keepdims=0, name=mask + "/lengths"))
            # (no bias), key_padding_mask: [B] real keys per row, or [B, T_kv] with 1 = real key
            inputs += ["", mask + ("/lengths" if key_lengths else "/int32")]
        # rename the old output so the new node can own the name the out_proj reads
        old = out.output[0]
        out.output[0] = old + "__unfused"
        fused_nodes.append((out, helper.make_node("MultiHeadAttention", inputs, [old], domain=MS_DOMAIN,
                                                  name=p + "MultiHeadAttention", num_heads=num_heads)))
    nodes = list(model.graph.node)
    for mask, steps in key_masks.items():
        at = nodes.index(producers[mask]) + 1
        nodes[at:at] = steps
    for anchor, node in fused_nodes:
        nodes.insert(nodes.index(anchor) + 1, node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    remove_dead_nodes(model)
    return model, len(fused_nodes)


def _key_mask(where: onnx.NodeProto, producers: dict, layer: int) -> str:
    """The [B, T_kv] bool key mask (True = real position) behind an exported `scores.masked_fill(~mask, -inf)`:
    Where's condition is Not(mask) through Unsqueeze/Cast steps."""
    name, nots = where.input[0], 0
    while name in producers and producers[name].op_type in ("Cast", "Not", "Unsqueeze"):
        nots += producers[name].op_type == "Not"
        name = producers[name].input[0]
    if nots != 1 or name not in producers:
        raise ValueError(f"layer {layer}: the attention mask is not in the exported form (masked_fill(~mask, -inf))")
    return name


def _const(model: onnx.ModelProto, name: str, array) -> str:
    from onnx import numpy_helper

    model.graph.initializer.append(numpy_helper.from_array(array, name))
    return name


def _is_weight_matmul(node: onnx.NodeProto, inits: dict) -> bool:
    return (node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in inits
            and len(inits[node.input[1]].dims) == 2)


def _with_ms_nodes(model: onnx.ModelProto, nodes: list) -> onnx.ModelProto:
    """`model` with `nodes` as its graph's nodes (some of them com.microsoft ops) and dead nodes removed."""
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    remove_dead_nodes(model)
    return model


def per_token_candidates(model: onnx.ModelProto) -> list[str]:
    """MatMuls per_token_int8 can quantize: a 2-D constant weight as second input (Gemm nodes, e.g. the
    projector, stay fp32)."""
    inits = {i.name: i for i in model.graph.initializer}
    return [n.name for n in model.graph.node if _is_weight_matmul(n, inits)]


def per_token_int8(model: onnx.ModelProto, exclude=(), weight_bits: int = 7) -> tuple[onnx.ModelProto, int]:
    """Weight MatMuls -> int8 GEMMs with one activation scale per token (per row of the flattened input).

    ORT's dynamic quantization (DynamicQuantizeLinear) takes one scale per tensor, i.e. per batch, so a
    clip's embedding would depend on its batch-mates. Here each row of A = x.reshape(-1, K) gets its
    own symmetric scale s = max|row| / 127, quantized by QuantizeLinear (per-axis, zero point 128 ->
    uint8, the u8 x s8 form the VNNI kernels take); MatMulIntegerToFloat applies the weight's
    per-output-channel scale and the row scale follows as one Mul. No statistic crosses rows, so the
    result is independent of batch-mates and of padding frames after a clip, and batching still
    batches (one GEMM for the whole batch).

    weight_bits 7 keeps weights in [-63, 63] so u8 x s8 pairs cannot saturate the 16-bit
    intermediate of AVX2 CPUs without VNNI (vpmaddubsw).
    """
    import numpy as np
    from onnx import numpy_helper

    model = copy_model(model)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    qmax_w = 2 ** (weight_bits - 1) - 1
    one = _const(model, "pt8/one", np.array(1.0, np.float32))
    zp = _const(model, "pt8/zp128", np.array(128, np.uint8))
    zp_vec = _const(model, "pt8/zp128_vec", np.array([128], np.uint8))
    eps = _const(model, "pt8/eps", np.array(1e-8, np.float32))
    inv127 = _const(model, "pt8/inv127", np.array(1.0 / 127.0, np.float32))
    minus1 = _const(model, "pt8/shape_rows", np.array([-1], np.int64))
    nodes, count, cache = [], 0, {}
    for node in g.node:
        if not _is_weight_matmul(node, inits) or node.name in exclude:
            nodes.append(node)
            continue
        w = inits[node.input[1]]
        count += 1
        x, y, p = node.input[0], node.output[0], node.name + "/pt8"
        weight = numpy_helper.to_array(w).astype(np.float32)
        k, n = weight.shape
        wscale = np.maximum(np.abs(weight).max(axis=0), 1e-12) / qmax_w
        wq = np.clip(np.round(weight / wscale), -qmax_w, qmax_w).astype(np.int8)
        wq_name = _const(model, p + "/Wq", wq)
        ws_name = _const(model, p + "/Wscale", wscale.astype(np.float32))
        if x not in cache:  # q, k and v (and the pruned layer's k/v) share one quantized input
            rows, s2, s1, zpv, xq = (f"{x}/pt8_{t}" for t in ("rows", "scale2d", "scale1d", "zp", "q"))
            nshape = f"{x}/pt8_kshape"
            nodes += [
                helper.make_node("Shape", [x], [nshape], start=-1, name=f"{x}/pt8/k"),
                helper.make_node("Shape", [x], [f"{x}/pt8_lead"], end=-1, name=f"{x}/pt8/lead"),
                helper.make_node("Concat", [minus1, nshape], [f"{x}/pt8_rowshape"], axis=0, name=f"{x}/pt8/rowshape"),
                helper.make_node("Reshape", [x, f"{x}/pt8_rowshape"], [rows], name=f"{x}/pt8/rows"),
                helper.make_node("Abs", [rows], [f"{x}/pt8_abs"], name=f"{x}/pt8/abs"),
                helper.make_node("ReduceMax", [f"{x}/pt8_abs"], [f"{x}/pt8_amax"], axes=[-1], keepdims=1,
                                 name=f"{x}/pt8/amax"),
                helper.make_node("Max", [f"{x}/pt8_amax", eps], [f"{x}/pt8_amax_eps"], name=f"{x}/pt8/eps"),
                helper.make_node("Mul", [f"{x}/pt8_amax_eps", inv127], [s2], name=f"{x}/pt8/scale"),
                helper.make_node("Reshape", [s2, minus1], [s1], name=f"{x}/pt8/scale1d"),
                helper.make_node("Shape", [s1], [f"{x}/pt8_m"], name=f"{x}/pt8/m"),
                helper.make_node("Expand", [zp_vec, f"{x}/pt8_m"], [zpv], name=f"{x}/pt8/zpv"),
                helper.make_node("QuantizeLinear", [rows, s1, zpv], [xq], axis=0, name=f"{x}/pt8/quantize"),
            ]
            cache[x] = (xq, s2, f"{x}/pt8_lead")
        xq, s2, lead = cache[x]
        nodes += [
            helper.make_node("MatMulIntegerToFloat", [xq, wq_name, one, ws_name, zp], [p + "_acc"], domain=MS_DOMAIN,
                             name=p + "/gemm"),
            helper.make_node("Mul", [p + "_acc", s2], [p + "_rows_out"], name=p + "/row_scale"),
            helper.make_node("Concat", [lead, _const(model, p + "/n", np.array([n], np.int64))], [p + "_shape"], axis=0,
                             name=p + "/out_shape"),
            helper.make_node("Reshape", [p + "_rows_out", p + "_shape"], [y], name=p + "/unrows"),
        ]
    return _with_ms_nodes(model, nodes), count


def _layernorm_targets(model: onnx.ModelProto, ln: onnx.NodeProto, consumers: dict, inits: dict) -> list | None:
    """Weight MatMuls reading this LayerNorm's output (directly or through a row Slice); None if any other
    consumer would see the rescaled channels."""
    targets, frontier = [], [ln.output[0]]
    while frontier:
        name = frontier.pop()
        for node in consumers.get(name, []):
            if node.op_type == "MatMul" and node.input[0] == name and node.input[1] in inits:
                targets.append(node)
            elif node.op_type == "Shape":
                continue
            elif node.op_type == "Slice" and node.input[0] == name:
                frontier.append(node.output[0])  # selects rows (the pruned layer's query token), not channels
            else:
                return None
    return targets or None


def layernorm_outputs(model: onnx.ModelProto) -> list[str]:
    """Outputs of the LayerNorms that smooth_layernorms can rescale (activation statistics are needed for these)."""
    inits = {i.name for i in model.graph.initializer}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return [n.output[0] for n in model.graph.node if n.op_type == "LayerNormalization"
            and _layernorm_targets(model, n, consumers, inits)]


def materialise_identity_initializers(model: onnx.ModelProto) -> int:
    """Give each parameter its own initializer again. torch's exporter stores equal parameters once and
    feeds the others through Identity nodes (freshly initialised LayerNorms are all ones and zeros, as in
    a random-weight model), so a fold that rescales one LayerNorm would otherwise find no initializer."""
    inits = {i.name: i for i in model.graph.initializer}
    keep, done = [], 0
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            model.graph.initializer.append(copy)
            done += 1
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return done


def smooth_layernorms(model: onnx.ModelProto, act_absmax: dict, alpha: float = 0.5) -> tuple[onnx.ModelProto, int]:
    """SmoothQuant-style migration of activation outlier channels into the weights, folded exactly.

    For a LayerNorm whose output feeds only weight MatMuls (q/k/v, fc1): channel k of the output is
    divided by s_k (LayerNorm scale and bias divided) and row k of every reading weight multiplied by
    s_k, s_k = max|x_k|^alpha / max|W_k|^(1 - alpha). The fp32 function is unchanged; per-token int8
    activations then see flatter rows. act_absmax: LayerNorm output name -> per-channel max |x| over
    calibration audio.
    """
    import numpy as np
    from onnx import numpy_helper

    model = copy_model(model)
    materialise_identity_initializers(model)
    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    shared = {}
    for n in model.graph.node:
        for i in n.input:
            shared[i] = shared.get(i, 0) + 1

    def replace(name, array):
        inits[name].CopyFrom(numpy_helper.from_array(array.astype(np.float32), name))

    done = 0
    for ln in [n for n in model.graph.node if n.op_type == "LayerNormalization"]:
        targets = _layernorm_targets(model, ln, consumers, inits)
        if not targets or ln.output[0] not in act_absmax or len(ln.input) < 3:
            continue
        names = [ln.input[1], ln.input[2]] + [t.input[1] for t in targets]
        if any(shared[nm] > 1 for nm in names):  # a weight read elsewhere too cannot be rescaled here
            continue
        weights = [numpy_helper.to_array(inits[t.input[1]]) for t in targets]
        w_max = np.max(np.concatenate([np.abs(w) for w in weights], axis=1), axis=1)
        x_max = np.asarray(act_absmax[ln.output[0]], np.float64)
        s = np.power(np.maximum(x_max, 1e-5), alpha) / np.power(np.maximum(w_max, 1e-5), 1 - alpha)
        s = np.clip(s, 1e-2, 1e2)
        replace(ln.input[1], numpy_helper.to_array(inits[ln.input[1]]) / s)
        replace(ln.input[2], numpy_helper.to_array(inits[ln.input[2]]) / s)
        for t, w in zip(targets, weights):
            replace(t.input[1], w * s[:, None])
        done += 1
    return model, done


def activation_absmax(model: onnx.ModelProto, names: list[str], feeds, threads: int | None = None) -> dict:
    """Per-channel (last axis) max |x| of the named tensors over the given feeds (fp32 graph)."""
    import numpy as np
    from onnx import helper as h

    # the probe graph's outputs are exactly `names`, in that order: run_all returns them
    probe = copy_model(model)
    del probe.graph.output[:]
    probe.graph.output.extend([h.make_empty_tensor_value_info(n) for n in names])
    out = {n: None for n in names}
    with ort_session(probe, threads) as sess:
        for _, feed in feeds:
            for n, v in zip(names, sess.run_all(feed)):
                m = np.abs(v).reshape(-1, v.shape[-1]).max(axis=0)
                out[n] = m if out[n] is None else np.maximum(out[n], m)
    return out


def conv_front_end_as_matmuls(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Whisper's two front-end convolutions as im2col MatMuls, in time-major layout, exactly.

    conv1 (80 -> d, k 3, stride 1) and conv2 (d -> d, k 3, stride 2) are ~6 % of the int8 graph's time
    at 3000 frames and stay fp32 as Conv nodes (ORT has no per-token int8 Conv). As MatMuls over
    windows of 3 frames ([B, T, 3 * C_in] x [3 * C_in, d]) `per_token_int8` quantizes them like every other
    weight MatMul, and the Transpose to [B, T, d] after conv2 disappears (the windows are built time-major).
    Odd T is padded one more frame at the end for conv2, which the stride-2 window never reads (as in Conv).
    """
    import numpy as np
    from onnx import numpy_helper

    model = copy_model(model)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    by_name = {n.name: n for n in g.node}
    try:
        conv1, conv2 = by_name["/audio/conv1/Conv"], by_name["/audio/conv2/Conv"]
        transpose = next(n for n in g.node if n.op_type == "Transpose" and n.name == "/audio/Transpose")
    except (KeyError, StopIteration):
        raise ValueError("no /audio/conv1, /audio/conv2 and /audio/Transpose nodes: was the graph exported by "
                         "export/to_onnx.py?") from None
    for conv, stride in ((conv1, 1), (conv2, 2)):
        attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
        if (list(attrs.get("kernel_shape", [])) != [3] or list(attrs.get("pads", [])) != [1, 1]
                or list(attrs.get("strides", [1])) != [stride] or attrs.get("group", 1) != 1):
            raise ValueError(f"{conv.name}: not the Whisper front-end convolution (k 3, pad 1, stride {stride})")

    def c(name, array):
        return _const(model, "im2col/" + name, np.asarray(array))

    def weight(conv):  # W[o, c, k] -> rows k * C_in + c, matching the window concatenation below
        w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float32)
        return w.transpose(2, 1, 0).reshape(-1, w.shape[0]), numpy_helper.to_array(inits[conv.input[2]])

    axis1, zero, one, minus1 = c("axis1", [1]), c("zero", [0]), c("one", [1]), c("minus1", [-1])
    big = c("end", [np.iinfo(np.int64).max])
    x = conv1.input[0]
    w1, b1 = weight(conv1)
    w2, b2 = weight(conv2)
    d_in = w2.shape[0] // 3
    new1 = [
        helper.make_node("Transpose", [x], ["im2col/x_t"], perm=[0, 2, 1], name="im2col/conv1/time_major"),
        helper.make_node("Pad", ["im2col/x_t", c("pads1", [0, 1, 0, 0, 1, 0])], ["im2col/x_p"], name="im2col/conv1/pad"),
        helper.make_node("Slice", ["im2col/x_p", zero, c("m2", [-2]), axis1], ["im2col/x_k0"], name="im2col/conv1/k0"),
        helper.make_node("Slice", ["im2col/x_p", one, minus1, axis1], ["im2col/x_k1"], name="im2col/conv1/k1"),
        helper.make_node("Slice", ["im2col/x_p", c("two", [2]), big, axis1], ["im2col/x_k2"], name="im2col/conv1/k2"),
        helper.make_node("Concat", ["im2col/x_k0", "im2col/x_k1", "im2col/x_k2"], ["im2col/x_win"], axis=-1,
                         name="im2col/conv1/windows"),
        helper.make_node("MatMul", ["im2col/x_win", c("conv1_w", w1)], ["im2col/conv1_mm"], name=FRONT_END_MATMULS[0]),
        helper.make_node("Add", ["im2col/conv1_mm", c("conv1_b", b1)], [conv1.output[0]], name="/audio/conv1/Add"),
    ]
    h = conv2.input[0]  # conv1's GELU output, now [B, T, C]
    new2 = [
        helper.make_node("Shape", [h], ["im2col/h_shape"], name="im2col/conv2/shape"),
        helper.make_node("Gather", ["im2col/h_shape", one], ["im2col/h_t"], name="im2col/conv2/t"),
        helper.make_node("Mod", ["im2col/h_t", c("two_b", [2])], ["im2col/h_odd"], name="im2col/conv2/odd"),
        helper.make_node("Add", ["im2col/h_odd", one], ["im2col/h_end_pad"], name="im2col/conv2/end_pad"),
        helper.make_node("Concat", [c("pads2_head", [0, 1, 0, 0]), "im2col/h_end_pad", zero], ["im2col/pads2"], axis=0,
                         name="im2col/conv2/pads"),
        helper.make_node("Pad", [h, "im2col/pads2"], ["im2col/h_p"], name="im2col/conv2/pad"),
        # frames in pairs: window t = pair t (frames 2t, 2t+1) + the first frame of pair t + 1
        helper.make_node("Reshape", ["im2col/h_p", c("pairs", [0, -1, 2 * d_in])], ["im2col/h_pairs"], name="im2col/conv2/pairs"),
        helper.make_node("Slice", ["im2col/h_pairs", zero, minus1, axis1], ["im2col/h_a"], name="im2col/conv2/a"),
        helper.make_node("Slice", ["im2col/h_pairs", c("one_two", [1, 0]), c("end_half", [np.iinfo(np.int64).max, d_in]),
                                   c("axes12", [1, 2])], ["im2col/h_b"], name="im2col/conv2/b"),
        helper.make_node("Concat", ["im2col/h_a", "im2col/h_b"], ["im2col/h_win"], axis=-1, name="im2col/conv2/windows"),
        helper.make_node("MatMul", ["im2col/h_win", c("conv2_w", w2)], ["im2col/conv2_mm"], name=FRONT_END_MATMULS[1]),
        helper.make_node("Add", ["im2col/conv2_mm", c("conv2_b", b2)], [conv2.output[0]], name="/audio/conv2/Add"),
    ]
    nodes = []
    for node in g.node:
        if node is conv1:
            nodes += new1
        elif node is conv2:
            nodes += new2
        elif node is transpose:  # conv2's GELU output is already [B, T, d]
            nodes.append(helper.make_node("Identity", [node.input[0]], [node.output[0]], name=node.name))
        else:
            nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)
    remove_dead_nodes(model)
    return model, 2


def smooth_matmul_inputs(model: onnx.ModelProto, act_absmax: dict, alpha: float = 0.5) -> tuple[onnx.ModelProto, int]:
    """SmoothQuant for weight MatMuls whose input no LayerNorm produces (the front-end windows, out_proj, fc2).

    The scale cannot be folded into a producer (GELU, attention), so it is applied explicitly: one Mul by 1/s
    on the MatMul's input (x / s) and row k of the weight times s_k; the product is unchanged in fp32 and the
    per-token int8 rows then see flatter channels. act_absmax: MatMul node name -> per-channel max |x| of
    its input over calibration audio; s_k = max|x_k|^alpha / max|W_k|^(1 - alpha), as in smooth_layernorms.
    """
    import numpy as np
    from onnx import numpy_helper

    model = copy_model(model)
    inits = {i.name: i for i in model.graph.initializer}
    nodes, done = [], 0
    for node in model.graph.node:
        if node.name in act_absmax and _is_weight_matmul(node, inits):
            w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
            x_max = np.asarray(act_absmax[node.name], np.float64)
            s = np.power(np.maximum(x_max, 1e-5), alpha) / np.power(np.maximum(np.abs(w).max(axis=1), 1e-5), 1 - alpha)
            s = np.clip(s, 1e-2, 1e2)
            inits[node.input[1]].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32), node.input[1]))
            inv = _const(model, node.name + "/smooth_inv", (1.0 / s).astype(np.float32))
            scaled = node.input[0] + "/smoothed_for_" + node.name
            nodes.append(helper.make_node("Mul", [node.input[0], inv], [scaled], name=node.name + "/smooth"))
            node.input[0] = scaled
            done += 1
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model, done


def matmul_input_absmax(model: onnx.ModelProto, names: list[str], feeds, threads: int | None = None) -> dict:
    """MatMul node name -> per-channel max |x| of its first input over the feeds (fp32 graph)."""
    inputs = {n.name: n.input[0] for n in model.graph.node if n.name in names}
    stats = activation_absmax(model, sorted(set(inputs.values())), feeds, threads)
    return {name: stats[tensor] for name, tensor in inputs.items()}


def _bias_add(node: onnx.NodeProto, consumers: dict, inits: dict, n: int) -> onnx.NodeProto | None:
    """The `Add(matmul_out, bias[n])` right after a weight MatMul, when it is the MatMul's only reader."""
    readers = consumers.get(node.output[0], [])
    if len(readers) != 1 or readers[0].op_type != "Add":
        return None
    add = readers[0]
    other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
    bias = inits.get(other)
    return add if bias is not None and list(bias.dims) == [n] and bias.data_type == onnx.TensorProto.FLOAT else None


def _block_scales(blocks, qmax: int, search: bool):
    """One symmetric scale per block (last axis): max |w| / qmax, or with `search` the clipped scale
    (max |w| x r / qmax, r in 1.0 .. 0.75) with the least squared rounding error of that block."""
    import numpy as np

    amax = np.maximum(np.abs(blocks).max(axis=-1), 1e-12)
    if not search:
        return amax / qmax
    best, best_err = amax / qmax, None
    for ratio in np.linspace(1.0, 0.75, 11):
        scale = amax * ratio / qmax
        err = ((np.clip(np.round(blocks / scale[..., None]), -qmax, qmax) * scale[..., None] - blocks) ** 2).sum(-1)
        if best_err is None:
            best_err = err
        else:
            better = err < best_err
            best, best_err = np.where(better, scale, best), np.where(better, err, best_err)
    return best


def matmul_nbits_int8(model: onnx.ModelProto, exclude=(), block_size: int = 32, accuracy_level: int = 4,
                      weight_bits: int = 8, search_scale: bool = False) -> tuple[onnx.ModelProto, int]:
    """Weight MatMuls -> `com.microsoft.MatMulNBits` with 8-bit block-wise weights and int8 compute.

    Weights: symmetric int8 per (output channel, block of `block_size` input rows), stored offset by 128
    (the op's default zero point for 8 bits, so no zero-point tensor). accuracy_level 4 makes ORT's CPU
    kernel quantize the activations to int8 too, with one scale per row *and per block* of K, computed at
    run time: no statistic crosses rows (an embedding is the same alone or in any batch, no Scan), and a
    block's scale follows the local channel range (Whisper's residual stream has a few channels 100x the
    rest, which a per-token scale has to cover). The kernel multiplies signed by signed int8 (both
    symmetric in [-127, 127]), so the u8 x s8 saturation of AVX2's vpmaddubsw does not arise (the AVX2
    path multiplies |a| by sign-adjusted b: at most 2 x 127 x 127 per pair). A following bias Add is
    folded into the node. Returns (model, number of MatMuls converted).
    """
    import numpy as np
    from onnx import numpy_helper

    model = copy_model(model)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consumers: dict[str, list] = {}
    for node in g.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    folded, nodes, count = set(), [], 0
    for node in g.node:
        if node.name in folded:
            continue
        if not _is_weight_matmul(node, inits) or node.name in exclude:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        k, n = weight.shape
        blocks = -(-k // block_size)
        padded = np.zeros((blocks * block_size, n), np.float32)
        padded[:k] = weight
        wb = padded.T.reshape(n, blocks, block_size)  # [N, blocks, block]
        qmax = 2 ** (weight_bits - 1) - 1
        zero_point = 2 ** (weight_bits - 1)  # 128 = the op's default for 8 bits; 64 for 7 (stored 1..127)
        scale = _block_scales(wb, qmax, search_scale)  # [N, blocks]
        q = (np.clip(np.round(wb / scale[..., None]), -qmax, qmax) + zero_point).astype(np.uint8)
        p = node.name + "/nbits8"
        zp_name = "" if zero_point == 128 else _const(model, p + "/zero_points", np.full((n, blocks), zero_point, np.uint8))
        inputs = [node.input[0], _const(model, p + "/B", q), _const(model, p + "/scales", scale.astype(np.float32)),
                  zp_name, ""]
        output = node.output[0]
        add = _bias_add(node, consumers, inits, n)
        if add is not None:
            bias = add.input[1] if add.input[0] == node.output[0] else add.input[0]
            inputs.append(bias)
            output = add.output[0]
            folded.add(add.name)
        else:
            inputs = inputs[:4] if zp_name else inputs[:3]
        nodes.append(helper.make_node("MatMulNBits", inputs, [output], domain=MS_DOMAIN, name=p, K=k, N=n, bits=8,
                                      block_size=block_size, accuracy_level=accuracy_level))
        count += 1
    return _with_ms_nodes(model, nodes), count


def int8_weights(model: onnx.ModelProto) -> dict:
    """name -> the signed integer weights of every int8 GEMM in the graph ([K, N] of MatMulIntegerToFloat,
    MatMulNBits blocks [N, blocks, block] minus their zero point), for the saturation check."""
    import numpy as np
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type == "MatMulIntegerToFloat":
            out[node.name] = numpy_helper.to_array(inits[node.input[1]]).astype(np.int32)
        elif node.op_type == "MatMulNBits":
            stored = numpy_helper.to_array(inits[node.input[1]]).astype(np.int32)
            has_zp = len(node.input) > 3 and node.input[3]
            zp = numpy_helper.to_array(inits[node.input[3]]).astype(np.int32)[..., None] if has_zp else 128
            out[node.name] = stored - zp
    return out


def worst_u8s8_pair(weights) -> int:
    """The largest |a0*w0 + a1*w1| that AVX2's vpmaddubsw can meet on these weights with u8 activations
    (a in [0, 255]) over adjacent pairs along K: over 32767 means the int16 intermediate can saturate.
    Pairs are taken along the reduction axis (axis 0 of [K, N]; the last axis of MatMulNBits blocks)."""
    import numpy as np

    w = np.asarray(weights, np.int64)
    w = np.moveaxis(w, -1, 0) if w.ndim == 3 else w  # MatMulNBits [N, blocks, block] -> [block, N, blocks]
    k = w.shape[0] - w.shape[0] % 2
    w0, w1 = w[0:k:2], w[1:k:2]
    high = 255 * (np.maximum(w0, 0) + np.maximum(w1, 0))
    low = 255 * (np.minimum(w0, 0) + np.minimum(w1, 0))
    return int(max(high.max(initial=0), -low.min(initial=0)))


def vpmaddubsw(a_u8, w_s8):
    """numpy emulation of AVX2's vpmaddubsw + a 32-bit sum: u8 x s8 products added in pairs into a
    *saturating* int16, then the pairs summed in int32 ([M, K] x [K, N] -> [M, N]). On a CPU with VNNI the
    pair sums are exact; compare the two to see the saturation."""
    import numpy as np

    a = np.asarray(a_u8, np.int64)
    w = np.asarray(w_s8, np.int64)
    k = a.shape[1] - a.shape[1] % 2
    pairs = a[:, 0:k:2, None] * w[None, 0:k:2] + a[:, 1:k:2, None] * w[None, 1:k:2]
    total = np.clip(pairs, -32768, 32767).sum(axis=1)
    if a.shape[1] % 2:
        total += a[:, -1, None] * w[None, -1]
    return total


def weight_only_qdq(model: onnx.ModelProto, weight_bits: int = 8, block_size: int | None = None) -> tuple[onnx.ModelProto, int]:
    """Every weight MatMul's weight as int8 + `DequantizeLinear` (symmetric, per output channel): a Q/DQ
    graph with int8 weights and float activations. No activation scale at all, so nothing depends on the
    calibration set or a batch-mate, and no integer product is formed (TensorRT and ORT fold the DQ into
    float weights): it stores int8, it does not compute in int8, so no CPU can saturate on it.
    block_size: one scale per (block of that many input rows, output channel) -- DequantizeLinear's blocked
    form, which needs opset 21 (the model's default-domain opset is raised to 21 then) -- instead of one per
    output channel. Returns (model, MatMuls converted)."""
    import numpy as np
    from onnx import numpy_helper

    if block_size and next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < 21:
        from onnx import version_converter  # ReduceL2's axes etc. change between opsets: convert, not relabel

        model = version_converter.convert_version(model, 21)
    else:
        model = copy_model(model)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    qmax = 2 ** (weight_bits - 1) - 1
    nodes, count, done = [], 0, {}
    for node in g.node:
        if _is_weight_matmul(node, inits):
            name = node.input[1]
            if name not in done:
                weight = numpy_helper.to_array(inits[name]).astype(np.float32)
                k, n = weight.shape
                p = f"{name}/wq{weight_bits}"
                if block_size and k % block_size == 0:
                    scale = np.maximum(np.abs(weight.reshape(k // block_size, block_size, n)).max(axis=1), 1e-12) / qmax
                    wq = np.clip(np.round(weight / np.repeat(scale, block_size, axis=0)), -qmax, qmax).astype(np.int8)
                    attrs = {"axis": 0, "block_size": block_size}
                    zero = np.zeros(scale.shape, np.int8)
                else:
                    scale = np.maximum(np.abs(weight).max(axis=0), 1e-12) / qmax
                    wq = np.clip(np.round(weight / scale), -qmax, qmax).astype(np.int8)
                    attrs, zero = {"axis": 1}, np.zeros(n, np.int8)
                nodes.append(helper.make_node(
                    "DequantizeLinear", [_const(model, p, wq), _const(model, p + "/scale", scale.astype(np.float32)),
                                         _const(model, p + "/zero_point", zero)],
                    [p + "/dq"], name=p + "/DequantizeLinear", **attrs))
                done[name] = p + "/dq"
            node.input[1] = done[name]
            count += 1
        nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)
    remove_dead_nodes(model)
    return model, count
