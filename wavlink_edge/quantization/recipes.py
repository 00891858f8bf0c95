"""Graph surgery and node selection for the quantized artifacts (torch-free, no ORT sessions here).

Node names come from the TorchScript export (export/to_onnx.py): Whisper layers are
`/audio/layers.N/...` with `fc2` the second MLP matmul; MiniLM layers are
`/text/backbone/encoder/layer.N/...` with `output/dense` (not `attention/output/dense`) the second MLP
matmul. The selectors below work on those patterns and fail loudly if they match nothing.
"""
from __future__ import annotations

import re

import onnx
from onnx import TensorProto, helper

from wavlink_edge.quantization.graph import FRONT_END_MATMULS

LAYER_RE = {"audio": re.compile(r"/layers\.(\d+)/"), "text": re.compile(r"/layer\.(\d+)/")}
FC1_RE = {"audio": re.compile(r"/fc1/MatMul$"), "text": re.compile(r"/intermediate/dense/MatMul$")}
FC2_RE = {"audio": re.compile(r"/fc2/MatMul$"), "text": re.compile(r"/layer\.\d+/output/dense/MatMul$")}


def weight_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMul/Gemm/Conv nodes whose second input is a constant weight (not attention's act x act)."""
    inits = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv") and n.input[1] in inits]


def layer_of(name: str, tower: str) -> int | None:
    m = LAYER_RE[tower].search(name)
    return int(m.group(1)) if m else None


def n_layers(model: onnx.ModelProto, tower: str) -> int:
    layers = {layer_of(n.name, tower) for n in model.graph.node} - {None}
    if not layers:
        raise ValueError(f"no {tower} transformer layers found by name: was the graph exported by export/to_onnx.py?")
    return max(layers) + 1


def fc2_nodes(model: onnx.ModelProto, tower: str) -> list[str]:
    names = [n.name for n in model.graph.node if FC2_RE[tower].search(n.name)]
    if not names:
        raise ValueError(f"no second-MLP matmuls found in the {tower} graph")
    return names


def mlp_nodes(model: onnx.ModelProto, tower: str) -> list[str]:
    fc1 = [n.name for n in model.graph.node if FC1_RE[tower].search(n.name)]
    if not fc1:
        raise ValueError(f"no first-MLP matmuls found in the {tower} graph")
    return fc1 + fc2_nodes(model, tower)


def edge_layer_nodes(model: onnx.ModelProto, tower: str) -> list[str]:
    """Every node of the first and last transformer layer, plus the projector head."""
    last = n_layers(model, tower) - 1
    return [n.name for n in model.graph.node
            if layer_of(n.name, tower) in (0, last) or "/projector/" in n.name]


def first_attention_nodes(model: onnx.ModelProto, tower: str) -> list[str]:
    """The first layer's attention projections (q/k/v/out): the most quantization-sensitive matmuls of the
    audio tower (per-layer sensitivity, docs/quantization.md)."""
    names = [n.name for n in model.graph.node if layer_of(n.name, tower) == 0 and "attn" in n.name
             and n.op_type in ("MatMul", "Gemm")]
    if not names:
        raise ValueError(f"no first-layer attention matmuls found in the {tower} graph")
    return names


def first_layer_nodes(model: onnx.ModelProto, tower: str) -> list[str]:
    return [n.name for n in model.graph.node if layer_of(n.name, tower) == 0]


def dynamic_exclusions(model: onnx.ModelProto, tower: str, exclusion_set: str) -> list[str]:
    """The MatMuls a dynamic INT8 rung keeps fp32 (quantize.py's ladders; the static sets are static_selection)."""
    if exclusion_set.startswith("blockwise_"):
        exclusion_set = exclusion_set[len("blockwise_"):]
        if exclusion_set == "int8":
            return []
    edges = edge_layer_nodes(model, tower) if exclusion_set.endswith("_edges_fp32") else []
    if exclusion_set == "weight_matmuls":
        return []
    if exclusion_set == "fc2_fp32":
        return fc2_nodes(model, tower)
    if exclusion_set == "fc2_edges_fp32":
        return sorted(set(fc2_nodes(model, tower)) | set(edges))
    if exclusion_set == "mlp_edges_fp32":
        return sorted(set(mlp_nodes(model, tower)) | set(edges))
    if exclusion_set == "first_attention_fp32":
        return first_attention_nodes(model, tower)
    if exclusion_set == "first_attention_front_end_fp32":
        return first_attention_nodes(model, tower) + list(FRONT_END_MATMULS)
    if exclusion_set == "first_layer_fp32":
        return first_layer_nodes(model, tower)
    raise ValueError(f"unknown dynamic exclusion set {exclusion_set!r}")


# Static Q/DQ exclusion sets, from most to least quantized. Each returns (op_types, nodes_to_quantize,
# nodes_to_exclude) for onnxruntime.quantization.quantize_static. exclusion_sweep.py measures all of
# them; quantize.py walks STATIC_LADDER and keeps the first that passes the gate.
FLOAT_COMPUTE_OPS = ("MatMul", "Gemm", "Conv", "Add", "Sub", "Mul", "Div", "Pow", "Erf", "Softmax",
                     "LayerNormalization", "ReduceL2")


def float_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of nodes whose inputs are all float32 (types from ONNX shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    return [n.name for n in model.graph.node
            if n.input and all(types.get(i) == TensorProto.FLOAT for i in n.input if i)]


def model_op(model: onnx.ModelProto, name: str) -> str:
    return next(n.op_type for n in model.graph.node if n.name == name)


def static_selection(name: str, model: onnx.ModelProto, tower: str) -> tuple[list[str] | None, list[str] | None, list[str]]:
    if name in ("everything", "no_add", "no_add_layernorm"):
        # "everything" = every float compute op type of this graph (ModelOpt's "quantize everything")
        drop = {"everything": set(), "no_add": {"Add"}, "no_add_layernorm": {"Add", "LayerNormalization"}}[name]
        ops = sorted(set(FLOAT_COMPUTE_OPS) - drop)
        # only nodes on float tensors: Mul/Div also compute integer shapes, which have no ranges
        return ops, [n for n in float_nodes(model) if model_op(model, n) in ops], []
    w = weight_matmuls(model)
    if name == "weight_matmuls":
        return ["MatMul", "Gemm", "Conv"], w, []
    if name == "weight_matmuls_fc2_fp32":
        return ["MatMul", "Gemm", "Conv"], w, fc2_nodes(model, tower)
    if name == "weight_matmuls_edges_fp32":
        return ["MatMul", "Gemm", "Conv"], w, edge_layer_nodes(model, tower)
    if name == "weight_matmuls_fc2_edges_fp32":
        return ["MatMul", "Gemm", "Conv"], w, sorted(set(fc2_nodes(model, tower)) | set(edge_layer_nodes(model, tower)))
    if name == "weight_matmuls_mlp_fp32":
        return ["MatMul", "Gemm", "Conv"], w, mlp_nodes(model, tower)
    if name == "weight_matmuls_mlp_edges_fp32":
        return ["MatMul", "Gemm", "Conv"], w, sorted(set(mlp_nodes(model, tower)) | set(edge_layer_nodes(model, tower)))
    if name == "ln_fed_middle":
        # only the matmuls reading a LayerNorm (q/k/v, fc1) of the middle layers: the inputs the SmoothQuant
        # fold flattens; out_proj and fc2 inputs (attention output, GELU output) and the edges stay fp32
        last = n_layers(model, tower) - 1
        keep = [n for n in w if 0 < (layer_of(n, tower) or 0) < last
                and re.search(r"/(q_proj|k_proj|v_proj|query|key|value|fc1|intermediate/dense)/MatMul$", n)]
        return ["MatMul", "Gemm", "Conv"], keep, []
    raise ValueError(f"unknown static exclusion set {name!r}; choose one of {', '.join(STATIC_SETS)}")


STATIC_SETS = ("everything", "no_add", "no_add_layernorm", "weight_matmuls", "weight_matmuls_fc2_fp32",
               "weight_matmuls_edges_fp32", "weight_matmuls_fc2_edges_fp32", "weight_matmuls_mlp_fp32",
               "weight_matmuls_mlp_edges_fp32", "ln_fed_middle")
# What quantize.py's --static-set takes: the sets above plus "weights_only" (int8 weights + DequantizeLinear,
# float activations), built by graph.weight_only_qdq rather than quantize_static: no calibration, no selection.
STATIC_CHOICES = STATIC_SETS + ("weights_only",)
# Candidates for the shipped static artifact: only weight-MatMul sets (Q/DQ on MatMul inputs is also the
# placement TensorRT fuses best); the broader sets are in the sweep for the record.
STATIC_LADDER = ("weight_matmuls", "weight_matmuls_fc2_fp32", "weight_matmuls_edges_fp32", "weight_matmuls_fc2_edges_fp32",
                 "weight_matmuls_mlp_fp32", "weight_matmuls_mlp_edges_fp32", "ln_fed_middle")


def per_row_scan(model: onnx.ModelProto, right_padding_mask: str | None = None) -> onnx.ModelProto:
    """Wrap the whole graph in a Scan over the batch axis: each row runs alone, exactly as at batch 1.

    Why: ORT's DynamicQuantizeLinear computes one activation scale per tensor, i.e. per *batch*, so an
    embedding would depend on its batch-mates. Inside the Scan each row gets its own scales, so a clip
    gives bit-identical output alone or in any batch. Weights stay outer-scope initializers (no copy).

    right_padding_mask: name of an attention-mask input (text tower). Each row is then cut to its own
    length (sum of its mask) before it runs, so the pad tokens a batch adds to a short sentence take no
    part in its activation scales either (the exported tokenizer pads on the right). It also skips the
    pad positions' compute.
    """
    g = model.graph
    axes = "__per_row_axes0"
    rename = {v.name: v.name + "__row_local" for v in list(g.input) + list(g.output)}
    body_in = [helper.make_tensor_value_info(i.name + "__row", i.type.tensor_type.elem_type, None) for i in g.input]
    body_out = [helper.make_tensor_value_info(o.name + "__row", o.type.tensor_type.elem_type, None) for o in g.output]
    nodes = []
    row = {i.name: i.name + "__row" for i in g.input}
    if right_padding_mask is not None:
        if right_padding_mask not in row:
            raise ValueError(f"no input {right_padding_mask!r} to trim padding by")
        length = "per_row/length"
        nodes.append(helper.make_node("ReduceSum", [row[right_padding_mask], axes], [length], keepdims=1,
                                      name="per_row/length"))
        for name in list(row):
            cut = f"per_row/{name}_unpadded"
            nodes.append(helper.make_node("Slice", [row[name], "__per_row_zero", length, axes], [cut], name=cut))
            row[name] = cut
    nodes += [helper.make_node("Unsqueeze", [row[i.name], axes], [rename[i.name]], name=f"per_row/unsqueeze_{i.name}")
              for i in g.input]
    for node in g.node:
        node = onnx.NodeProto.FromString(node.SerializeToString())
        for k, v in enumerate(node.input):
            node.input[k] = rename.get(v, v)
        for k, v in enumerate(node.output):
            node.output[k] = rename.get(v, v)
        nodes.append(node)
    nodes += [helper.make_node("Squeeze", [rename[o.name], axes], [o.name + "__row"], name=f"per_row/squeeze_{o.name}")
              for o in g.output]
    body = helper.make_graph(nodes, "per_row_body", body_in, body_out, value_info=list(g.value_info))
    scan = helper.make_node("Scan", [i.name for i in g.input], [o.name for o in g.output], name="per_row_scan",
                            body=body, num_scan_inputs=len(g.input))
    initializers = list(g.initializer) + [helper.make_tensor(axes, TensorProto.INT64, [1], [0])]
    if right_padding_mask is not None:
        initializers.append(helper.make_tensor("__per_row_zero", TensorProto.INT64, [1], [0]))
    outer = helper.make_graph([scan], g.name, list(g.input), list(g.output), initializer=initializers)
    out = helper.make_model(outer, opset_imports=list(model.opset_import), ir_version=model.ir_version,
                            producer_name="wavlink_edge.quantization")
    for p in model.metadata_props:
        out.metadata_props.append(p)
    return out


def constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Turn Constant nodes into initializers. Static quantization needs a range for every input of a
    quantized op; a Constant node's output is neither calibrated (not an activation) nor treated as a
    weight, which makes ORT fail with "Quantization parameters are not specified"."""
    from onnx import numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    keep = []
    for node in model.graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None:
            t = numpy_helper.from_array(numpy_helper.to_array(value.t), node.output[0])
            model.graph.initializer.append(t)
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


def count_ops(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}

    def walk(graph):
        for n in graph.node:
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)

    walk(model.graph)
    return counts
