"""Semantic validation of a loaded program: what the kernels assume, checked before any run.

The container checks of ``modelfile`` prove a model.bin is intact; they say nothing of
whether its program can run. This module does: every node's op is known, its inputs exist
and are computed before it, its attributes have the types and ranges its kernel indexes
with, its constants the shapes and value ranges the kernel relies on, and the shape and
data type the kernel will produce are the ones the program declares. Declared sizes are
checked against ``max_tensor_bytes`` (Python ints, no overflow) before anything allocates
them. A program that passes cannot make the executor raise anything but its own errors.

Every failure is one :class:`ProgramError` (a ``ModelFormatError``) naming the node.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from qverify.simulator.errors import ProgramError
from qverify.v1 import model_pb2

from qverify.simulator import validate_cpu, validate_ops
from qverify.simulator.validate_base import (  # noqa: F401  (DEFAULT_MAX_TENSOR_BYTES is re-exported)
    DEFAULT_MAX_TENSOR_BYTES,
    FIX,
    MAX_ALIGN,
    MAX_RANK,
    ZP8,
    NodeCheck,
    _prefix,
    shape_bytes,
)

if TYPE_CHECKING:
    from qverify.simulator.program import Program


def validate(program: Program, max_tensor_bytes: int | None = None, source: str = "") -> None:
    """Refuse, with one ProgramError naming the node, any program the kernels cannot run.

    ``max_tensor_bytes`` bounds every declared tensor (its valid and its aligned layout) and
    every large working array a kernel allocates (default :data:`DEFAULT_MAX_TENSOR_BYTES`).
    """
    limit = DEFAULT_MAX_TENSOR_BYTES if max_tensor_bytes is None else int(max_tensor_bytes)
    where = _prefix(source)
    proto = program.proto
    _check_target(proto.target, where)
    _check_names(program, where)
    for tensor in program.tensors.values():
        _check_tensor(program, tensor, limit, where)
    env: dict[str, tuple[tuple[int, ...], np.dtype]] = {
        name: (tuple(array.shape), array.dtype) for name, array in program.constants.items()}
    written: set[str] = set()
    for name in proto.inputs:
        env[name] = (program.tensors[name].shape, program.tensors[name].dtype)
    seen_nodes: set[str] = set()
    for node in program.nodes:
        check = NodeCheck(program, node, env, limit, source)
        if not node.name or node.name in seen_nodes:
            check.fail("has an empty or duplicate node name")
        seen_nodes.add(node.name)
        if node.placement not in (model_pb2.PLACEMENT_UNSPECIFIED, model_pb2.NPU, model_pb2.CPU):
            check.fail(f"has unknown placement {node.placement}")
        if not node.outputs:
            check.fail("writes no output")
        for name in node.inputs:
            if name and name not in env:
                check.fail(f"reads '{name}' before any node writes it")
            if not name and not node.on_cpu:
                check.fail("has an empty input name")
        for name in node.outputs:
            if name in env or name in written:
                check.fail(f"writes '{name}', which is already a program input, a constant or another "
                           "node's output")
            written.add(name)
        if node.on_cpu:
            validate_cpu.check(check)
        else:
            rule = validate_ops.RULES.get(node.op)
            if rule is None:
                check.fail(f"uses op '{node.op}', unknown to this qverify", "update qverify or " + FIX)
            rule(check)
        for name in node.outputs:
            env[name] = (program.tensors[name].shape, program.tensors[name].dtype)
    for name in proto.outputs:
        if name not in env or name in program.constants:
            raise ProgramError(f"{where}program output '{name}' is never written by any node; {FIX}")
    _check_preprocess(program, where)


def _check_target(target: model_pb2.Target, where: str) -> None:
    for field in ("c_align", "w_align"):
        value = getattr(target, field)
        if not 1 <= value <= MAX_ALIGN:
            raise ProgramError(f"{where}target '{target.name}' has {field} {value}, outside [1, {MAX_ALIGN}]; {FIX}")
    if target.rounding not in (model_pb2.ROUNDING_SINGLE, model_pb2.ROUNDING_DOUBLE):
        raise ProgramError(f"{where}target '{target.name}' has unknown rounding mode {target.rounding}; {FIX}")


def _check_names(program: Program, where: str) -> None:
    proto = program.proto
    if len(program.tensors) != len(proto.tensors) or "" in program.tensors:
        raise ProgramError(f"{where}the program declares a tensor twice or without a name; {FIX}")
    if len(program.constants) != len(proto.constants) or "" in program.constants:
        raise ProgramError(f"{where}the program declares a constant twice or without a name; {FIX}")
    clash = sorted(set(program.tensors) & set(program.constants))
    if clash:
        raise ProgramError(f"{where}'{clash[0]}' is both a tensor and a constant of the program; {FIX}")
    if len(set(proto.inputs)) != len(proto.inputs):
        raise ProgramError(f"{where}the program lists an input twice; {FIX}")
    if not proto.outputs:
        raise ProgramError(f"{where}the program has no outputs; {FIX}")
    for names, field in ((proto.onnx_inputs, "inputs"), (proto.onnx_outputs, "outputs")):
        if names and len(names) != len(getattr(proto, field)):
            raise ProgramError(f"{where}the program names {len(names)} ONNX {field} for "
                               f"{len(getattr(proto, field))} program {field}; {FIX}")


def _check_tensor(program: Program, tensor, limit: int, where: str) -> None:
    from qverify.simulator import layout

    what = f"{where}tensor '{tensor.name}'"
    shape = tensor.shape
    if len(shape) > MAX_RANK or any(d < 0 for d in shape):
        shown = list(shape[:MAX_RANK]) + ([f"... ({len(shape)} dims)"] if len(shape) > MAX_RANK else [])
        raise ProgramError(f"{what} has shape {shown}: dims must be >= 0 and rank <= {MAX_RANK}; {FIX}")
    size = shape_bytes(shape, tensor.dtype.itemsize)
    aligned = shape_bytes(layout.aligned_shape(shape, program.target), tensor.dtype.itemsize)
    if max(size, aligned) > limit:
        raise ProgramError(f"{what} declares {list(shape)} {tensor.dtype}, {max(size, aligned)} bytes, over the "
                           f"limit of {limit} bytes per tensor; the model is corrupt or too large for this board")
    if tensor.quantized:
        if not (math.isfinite(tensor.scale) and tensor.scale > 0):
            raise ProgramError(f"{what} has quantization scale {tensor.scale}, which must be finite and > 0; {FIX}")
        if not ZP8[0] <= tensor.zero_point <= ZP8[1]:
            raise ProgramError(f"{what} has zero point {tensor.zero_point}, outside [-128, 127]; {FIX}")
    if tensor.info.logical_layout not in ("", "NHWC"):
        raise ProgramError(f"{what} has unknown layout '{tensor.info.logical_layout}'; {FIX}")


COLORS = ("BGR", "RGB", "GRAY")
YUV = ("NV12", "YUV444")  # frames the board converts to RGB (simulator/ops/preprocess.py)
FRAMES = COLORS + YUV


def _check_preprocess(program: Program, where: str) -> None:
    proto = program.proto
    names = set(proto.inputs) | set(proto.onnx_inputs)
    for pre in proto.preprocess:
        what = f"{where}preprocessing of input '{pre.input}'"
        channels = len(pre.mean)
        problem = ""
        if pre.input not in names:
            problem = "names no input of the program"
        elif pre.color not in FRAMES or pre.model_color not in COLORS:
            problem = f"has unknown colors '{pre.color}'/'{pre.model_color}'"
        elif channels not in (1, 3) or len(pre.std) != channels:
            problem = f"has {channels} means and {len(pre.std)} stds, expected 1 or 3 of each"
        elif pre.color != "GRAY" and (channels == 1 or pre.model_color == "GRAY"):
            problem = "takes color images for a one-channel model"
        elif pre.color in YUV and (len(pre.image_shape) != 4 or pre.image_shape[3] != 3):
            problem = f"takes {pre.color} frames but has image shape {list(pre.image_shape)}, expected N,H,W,3"
        elif pre.color == "NV12" and (pre.image_shape[1] % 2 or pre.image_shape[2] % 2):
            problem = f"takes NV12 frames of an odd size {list(pre.image_shape)}; NV12 needs an even H and W"
        elif not all(math.isfinite(v) for v in pre.mean) or not all(math.isfinite(v) and v != 0 for v in pre.std):
            problem = "has a mean or std that is not finite, or a zero std"
        elif len(pre.image_shape) != 4 or any(d < 1 for d in pre.image_shape):
            problem = f"has image shape {list(pre.image_shape)}, expected 4 dims >= 1"
        elif shape_bytes(pre.image_shape, 1) > DEFAULT_MAX_TENSOR_BYTES:
            problem = f"has an image shape {list(pre.image_shape)} too large for any board"
        elif pre.input in proto.onnx_inputs and pre.input not in proto.inputs:
            frame = _frame_shape(pre)  # the board's uint8 tensor must be that frame
            image = program.tensors.get(proto.inputs[list(proto.onnx_inputs).index(pre.input)])
            if image is not None and tuple(image.shape) != frame:
                problem = (f"takes {pre.color} frames {list(frame)} but its input tensor '{image.name}' is "
                           f"{list(image.shape)}")
        if problem:
            raise ProgramError(f"{what} {problem}; {FIX}")


def _frame_shape(pre: model_pb2.Preprocess) -> tuple[int, ...]:
    """The uint8 tensor the board takes (compiler.preprocess.frame_shape, without importing the compiler)."""
    n, h, w, c = (int(d) for d in pre.image_shape)
    return (n, h * 3 // 2, w, 1) if pre.color == "NV12" else (n, h, w, c)
