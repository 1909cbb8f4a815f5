"""``-m`` files recognised by content (not by name), and whether an ONNX/bin pair belongs together."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qverify.client.agent_client import file_sha256

MODEL_BIN_MAGIC = b"QVFYMDL\0"


class ModelFileError(Exception):
    """A -m file is missing, unreadable or neither a quantized ONNX model nor a model.bin."""


@dataclass
class ModelFiles:
    onnx: Path | None = None
    bin: Path | None = None


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


def classify(paths: list[Path]) -> ModelFiles:
    if not paths or len(paths) > 2:
        raise ModelFileError("-m takes one or two files, comma-separated: quant.onnx,model.bin (or model.ov)")
    files = ModelFiles()
    for path in paths:
        kind = sniff(path)
        if getattr(files, kind) is not None:
            raise ModelFileError(f"-m: two {'model.bin' if kind == 'bin' else 'ONNX'} files ({getattr(files, kind)}, "
                                 f"{path}); give one quant.onnx and/or one model.bin")
        setattr(files, kind, path)
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
