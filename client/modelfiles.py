"""``-m`` files recognised by content (not by name), and whether they belong together: a
quant.onnx and the model.bin compiled from it, and a float model and the quant.onnx quantized
from it (:func:`float_pairing_problem`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qverify.client.agent_client import file_sha256

MODEL_BIN_MAGIC = b"QVFYMDL\0"


class ModelFileError(Exception):
    """A -m file is missing, unreadable or neither an ONNX model nor a model.bin."""


@dataclass
class ModelFiles:
    onnx: Path | None = None  # the quantized ONNX model
    bin: Path | None = None
    float: Path | None = None  # the float ONNX model quant.onnx was quantized from (the golden reference)


# Ops that only a quantized graph has: QDQ pairs, QOperator kernels, integer ops.
QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger",
                           "MatMulInteger", "QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul",
                           "QLinearSigmoid", "QLinearLeakyRelu", "QLinearConcat", "QLinearAveragePool",
                           "QLinearGlobalAveragePool", "QLinearSoftmax", "QGemm"})


def is_quantized(model) -> bool:
    """Whether an ONNX model is quantized (it has Q/DQ pairs or quantized kernels)."""
    return any(node.op_type in QUANTIZED_OPS for node in model.graph.node)


def sniff(path: Path) -> str:
    """'bin' or 'onnx' from the first bytes; ModelFileError otherwise."""
    if not path.exists():
        raise ModelFileError(f"-m {path}: no such file")
    if not path.is_file():
        raise ModelFileError(f"-m {path}: not a file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        raise ModelFileError(f"-m {path}: cannot read it ({exc.strerror})") from None
    if head.startswith(MODEL_BIN_MAGIC):  # model.bin, or a model.ov (the same container): the board's model
        return "bin"
    # An ONNX ModelProto starts with a protobuf tag: field 1 (ir_version, varint) = 0x08, or
    # another low field number; a text/empty file does not.
    if head[:1] in (b"\x08", b"\x12", b"\x1a", b"\x22", b"\x2a", b"\x32", b"\x3a", b"\x42"):
        return "onnx"
    raise ModelFileError(f"-m {path}: neither a quantized ONNX model nor a qverify model.bin "
                         "(compile one with: qverify compile quant.onnx -o model.bin)")


def board_runtime(program) -> str:
    """The runtime a compiled model is for: "" for the simulator's own targets (model.bin, with a
    bit-exact twin on the host), or e.g. "openvino" for a model.ov (the same container, carrying the
    runtime's own model beside the program; recognised by its target and runtime format)."""
    proto = getattr(program, "proto", program)
    target = getattr(getattr(proto, "target", None), "name", "") or ""
    if getattr(proto, "runtime_format", "") or target.startswith("openvino"):
        return "openvino" if target.startswith("openvino") else proto.runtime_format
    return ""


_KIND_NAMES = {"bin": "model.bin", "onnx": "quantized ONNX", "float": "float ONNX"}


def classify(paths: list[Path]) -> ModelFiles:
    """The -m files by content: model.bin, quant.onnx (quantized) and float.onnx, in any order."""
    if not paths or len(paths) > 3:
        raise ModelFileError("-m takes one to three files, comma-separated: float.onnx,quant.onnx,model.bin "
                             "(or model.ov), in any order")
    files = ModelFiles()
    for path in paths:
        kind = sniff(path)
        if kind == "onnx" and not is_quantized(load_onnx(path)):
            kind = "float"
        if getattr(files, kind) is not None:
            raise ModelFileError(f"-m: two {_KIND_NAMES[kind]} files ({getattr(files, kind)}, {path}); give at "
                                 "most one float.onnx, one quant.onnx and one model.bin")
        setattr(files, kind, path)
    if files.float is not None and files.onnx is None:
        raise ModelFileError(f"-m {files.float}: a float model is compared with the quant.onnx quantized from it: "
                             f"give that too (-m {files.float.name},quant.onnx{',model.bin' if files.bin else ''})")
    return files


def load_onnx(path: Path):
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise ModelFileError(f"-m {path}: not a readable ONNX model ({str(exc).splitlines()[0][:200]})") from None


def pairing_problem(onnx_path: Path, model, program) -> tuple[str, str]:
    """(problem, note) for quant.onnx + model.bin. A problem means they do not belong together.

    The compiler records the sha256 of its source; when it matches, they belong. When the
    ONNX file was re-saved or edited, the structure decides: the program's ONNX inputs and
    outputs must exist with the same shapes, and the tensors it names must be in the graph.
    """
    if program.proto.source_sha256 and program.proto.source_sha256 == file_sha256(onnx_path):
        return "", ""
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = {i.name: i for i in graph.input if i.name not in initializers}
    outputs = {o.name for o in graph.output}
    for name, tensor in zip(program.proto.onnx_inputs, program.inputs):
        if name not in inputs:
            return (f"model.bin takes input '{name}', which {onnx_path.name} does not have "
                    f"(it has {', '.join(sorted(inputs)) or 'none'})"), ""
        dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[name].type.tensor_type.shape.dim]
        pre = program.preprocess.get(tensor.name) or program.preprocess.get(name)
        want = list(tensor.shape) if pre is None else [int(pre.image_shape[0]), len(pre.mean),
                                                      int(pre.image_shape[1]), int(pre.image_shape[2])]
        if len(dims) != len(want) or any(d is not None and d != w for d, w in zip(dims, want)):
            return (f"input '{name}' is {dims} in {onnx_path.name} but {want} in model.bin"), ""
    missing_out = [n for n in program.proto.onnx_outputs if n not in outputs]
    if missing_out:
        return (f"model.bin produces '{missing_out[0]}', which is not an output of {onnx_path.name}"), ""
    produced = {o for node in graph.node for o in node.output} | set(inputs)
    missing = [n for n, t in program.tensors.items() if n not in produced and t.info.onnx_float_name not in produced]
    if missing:
        return (f"model.bin computes tensor '{missing[0]}' (and {len(missing) - 1} more), which "
                f"{onnx_path.name} does not have: it was compiled from another model"), ""
    if program.proto.source_format == "QDQ":  # QOperator models are rewritten, with new node names
        nodes = {node.name for node in graph.node}
        foreign = [n for node in program.nodes for n in node.onnx_nodes if n not in nodes]
        if foreign:
            return (f"model.bin was lowered from node '{foreign[0]}', which {onnx_path.name} does not have: "
                    "it was compiled from another model"), ""
    return "", (f"model.bin was compiled from a file with another sha256 ({program.proto.source_sha256[:12]}), "
                f"but its inputs, outputs and tensors match {onnx_path.name}")


def _graph_io(model) -> tuple[dict[str, list], list[str]]:
    initializers = {i.name for i in model.graph.initializer}
    dims = {i.name: [d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim]
            for i in model.graph.input if i.name not in initializers}
    return dims, [o.name for o in model.graph.output]


def _weight_cosines(float_model, quant_model) -> list[tuple[str, float]]:
    """(float initializer, cosine with its dequantized quant.onnx copy) for every quantized weight
    ``W_quantized`` (with ``W_scale``, ``W_zero_point``) whose float ``W`` has the same shape."""
    import numpy as np
    from onnx import numpy_helper

    floats = {i.name: i for i in float_model.graph.initializer}
    quants = {i.name: i for i in quant_model.graph.initializer}
    found = []
    for name, init in quants.items():
        base = name[:-len("_quantized")] if name.endswith("_quantized") else ""
        if not base or base not in floats or f"{base}_scale" not in quants:
            continue
        codes = numpy_helper.to_array(init).astype(np.float64)
        ref = numpy_helper.to_array(floats[base]).astype(np.float64)
        scale = numpy_helper.to_array(quants[f"{base}_scale"]).astype(np.float64)
        zp = (numpy_helper.to_array(quants[f"{base}_zero_point"]).astype(np.float64)
              if f"{base}_zero_point" in quants else np.zeros_like(scale))
        if codes.shape != ref.shape or codes.ndim == 0:
            continue
        if scale.size > 1:  # per channel: the axis whose length is the number of scales (0 for Conv weights)
            axis = next((a for a, n in enumerate(codes.shape) if n == scale.size), None)
            if axis is None:
                continue
            shape = [1] * codes.ndim
            shape[axis] = scale.size
            scale, zp = scale.reshape(shape), zp.reshape(shape)
        values = ((codes - zp) * scale).ravel()
        ref = ref.ravel()
        na, nb = float(np.linalg.norm(values)), float(np.linalg.norm(ref))
        found.append((base, float(values @ ref) / (na * nb) if na and nb else float(na == nb)))
    return found


# A quantized weight is the float weight rounded to its scale: cosine well above this. A weight
# of another model (or a retrained one) is not.
MIN_WEIGHT_COSINE = 0.95


def float_pairing_problem(float_path: Path, float_model, quant_path: Path, quant_model) -> str:
    """Why ``float_model`` is not the model ``quant_model`` was quantized from ('' when it is).

    Evidence, cheapest first: the same graph inputs (with their static shapes) and outputs;
    the activations the quant graph quantizes (the inputs of its QuantizeLinear nodes,
    ``X`` of ``X_QuantizeLinear_Output``) are tensors of the float graph; its compute nodes
    keep their names; every quantized weight, dequantized, is the float weight rounded."""
    f_in, f_out = _graph_io(float_model)
    q_in, q_out = _graph_io(quant_model)
    fname, qname = float_path.name, quant_path.name
    if set(f_in) != set(q_in):
        return (f"{fname} takes input(s) {', '.join(sorted(f_in)) or 'none'} but {qname} takes "
                f"{', '.join(sorted(q_in)) or 'none'}: it is not the float model {qname} was quantized from")
    for name, dims in q_in.items():
        other = f_in[name]
        if len(other) != len(dims) or any(a is not None and b is not None and a != b for a, b in zip(other, dims)):
            return f"input '{name}' is {other} in {fname} but {dims} in {qname}"
    if f_out != q_out:
        return (f"{fname} produces {', '.join(f_out)} but {qname} produces {', '.join(q_out)}: it is not the "
                f"float model {qname} was quantized from")
    produced = {o for node in float_model.graph.node for o in node.output} | set(f_in)
    initializers = {i.name for i in quant_model.graph.initializer}
    activations = [n.input[0] for n in quant_model.graph.node
                   if n.op_type == "QuantizeLinear" and n.input and n.input[0] not in initializers]
    missing = [a for a in activations if a not in produced]
    if activations and len(missing) > len(activations) // 10:
        return (f"{qname} quantizes tensor '{missing[0]}' (and {len(missing) - 1} more of {len(activations)}), "
                f"which {fname} does not compute: it is not the float model {qname} was quantized from")
    float_nodes = {n.name for n in float_model.graph.node}
    compute = [n.name for n in quant_model.graph.node if n.op_type not in QUANTIZED_OPS and n.name]
    if compute and not activations:  # QOperator graphs rename their nodes: names decide only for QDQ
        compute = []
    strange = [n for n in compute if n not in float_nodes]
    if compute and len(strange) > len(compute) // 2:
        return (f"{len(strange)} of {len(compute)} nodes of {qname} (e.g. '{strange[0]}') are not in {fname}: "
                f"it is not the float model {qname} was quantized from")
    weights = _weight_cosines(float_model, quant_model)
    bad = [(name, cos) for name, cos in weights if cos < MIN_WEIGHT_COSINE]
    if bad:
        name, cos = min(bad, key=lambda b: b[1])
        return (f"{len(bad)} of {len(weights)} weights of {qname} differ from {fname}'s (worst '{name}', cosine "
                f"{cos:.3f} after dequantizing): it was quantized from another version of the model")
    return ""
