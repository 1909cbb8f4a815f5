"""A loaded program: the protobuf Program with constants decoded to numpy arrays."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qverify.simulator import targets
from qverify.simulator.errors import ModelFormatError
from qverify.v1 import model_pb2

DTYPES: dict[int, np.dtype] = {
    model_pb2.INT8: np.dtype(np.int8),
    model_pb2.UINT8: np.dtype(np.uint8),
    model_pb2.INT16: np.dtype(np.int16),
    model_pb2.INT32: np.dtype(np.int32),
    model_pb2.INT64: np.dtype(np.int64),
    model_pb2.FLOAT32: np.dtype(np.float32),
}
PROTO_DTYPES = {v: k for k, v in DTYPES.items()}


def dtype_of(code: int) -> np.dtype:
    try:
        return DTYPES[code]
    except KeyError:
        raise ModelFormatError(f"unknown data type code {code} in model") from None


def proto_dtype(dtype: np.dtype) -> int:
    return PROTO_DTYPES[np.dtype(dtype)]


def attr_value(attr: model_pb2.Attribute) -> Any:
    kind = attr.WhichOneof("value")
    if kind == "ints":
        return list(attr.ints.values)
    if kind == "floats":
        return list(attr.floats.values)
    return getattr(attr, kind) if kind else None


def make_attr(value: Any) -> model_pb2.Attribute:
    if isinstance(value, (bool, int, np.integer)):
        return model_pb2.Attribute(i=int(value))
    if isinstance(value, (float, np.floating)):
        return model_pb2.Attribute(f=float(value))
    if isinstance(value, str):
        return model_pb2.Attribute(s=value)
    values = list(np.asarray(value).ravel()) if isinstance(value, np.ndarray) else list(value)
    if all(isinstance(v, (bool, int, np.integer)) for v in values):
        return model_pb2.Attribute(ints=model_pb2.IntList(values=[int(v) for v in values]))
    return model_pb2.Attribute(floats=model_pb2.FloatList(values=[float(v) for v in values]))


def make_constant(name: str, array: np.ndarray) -> model_pb2.Constant:
    array = np.ascontiguousarray(array)
    return model_pb2.Constant(name=name, dtype=proto_dtype(array.dtype), shape=list(array.shape),
                              data=array.astype(array.dtype.newbyteorder("<")).tobytes())


class Attrs(dict):
    """Node attributes; a missing one is a malformed model, not a KeyError."""

    def __init__(self, values: dict, node: str, op: str) -> None:
        super().__init__(values)
        self.node, self.op = node, op

    def __missing__(self, key: str):
        raise ModelFormatError(f"node '{self.node}' ({self.op}) lacks attribute '{key}'; recompile the model")


@dataclass
class NodeView:
    """A program node as kernels see it: attrs as Python values, constants as arrays."""
    name: str
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]
    consts: list[np.ndarray]
    placement: int
    onnx_op: str
    onnx_nodes: list[str]
    cache: dict[str, Any] = field(default_factory=dict)  # per-node derived constants (kernels fill it)

    @property
    def on_cpu(self) -> bool:
        return self.placement == model_pb2.CPU


@dataclass
class TensorView:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    scale: float
    zero_point: int
    info: model_pb2.TensorInfo

    @property
    def quantized(self) -> bool:
        return self.dtype == np.int8


class Program:
    """Decoded program, ready to execute. Construction validates the structure.

    The semantics (every node can run) are checked by ``qverify.simulator.validate``, which
    ``qverify.simulator.load`` runs on every model.bin it reads.
    """

    def __init__(self, proto: model_pb2.Program) -> None:
        self.proto = proto
        self.target = targets.from_proto(proto.target)
        self.constants: dict[str, np.ndarray] = {}
        for const in proto.constants:
            dtype = dtype_of(const.dtype)
            # numpy takes at most 64 dims, and a shape with a 0 still must not overflow its size
            if (any(d < 0 for d in const.shape) or len(const.shape) > 32
                    or math.prod(int(d) for d in const.shape if d) > 1 << 62):
                raise ModelFormatError(f"constant '{const.name}' has shape {list(const.shape)[:40]}: dims must be "
                                       ">= 0, rank <= 32, size < 2^62; recompile the model")
            count = 1
            for d in const.shape:
                count *= int(d)
            if len(const.data) != count * dtype.itemsize:
                raise ModelFormatError(f"constant '{const.name}' holds {len(const.data)} bytes, "
                                       f"its shape {list(const.shape)} needs {count * dtype.itemsize}")
            array = np.frombuffer(const.data, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(tuple(const.shape))
            array.setflags(write=False)
            self.constants[const.name] = array
        self.tensors: dict[str, TensorView] = {}
        for info in proto.tensors:
            self.tensors[info.name] = TensorView(
                info.name, dtype_of(info.dtype), tuple(int(d) for d in info.shape),
                float(info.quant.scale), int(info.quant.zero_point), info)
        self.nodes: list[NodeView] = []
        known = set(self.tensors) | set(self.constants)
        ready = set(proto.inputs) | set(self.constants)
        from qverify.simulator.ops import registry

        for node in proto.nodes:
            for name in node.inputs:
                if name and name not in known:
                    raise ModelFormatError(f"node '{node.name}' reads unknown tensor '{name}'")
                if name and name not in ready:
                    raise ModelFormatError(f"node '{node.name}' reads '{name}' before any node writes it; "
                                           "the model is corrupt or not in execution order, recompile it")
            if node.placement == model_pb2.CPU:
                if not registry.has_cpu_kernel(node.onnx_op or node.op):
                    raise ModelFormatError(f"node '{node.name}' runs ONNX op '{node.onnx_op}' on the CPU, which this "
                                           "qverify cannot; update qverify or recompile the model")
            elif node.op not in registry.npu_ops():
                raise ModelFormatError(f"node '{node.name}' uses op '{node.op}', unknown to this qverify; "
                                       "update qverify or recompile the model")
            ready.update(node.outputs)
            for name in node.constants:
                if name not in self.constants:
                    raise ModelFormatError(f"node '{node.name}' reads unknown constant '{name}'")
            for name in node.outputs:
                if name not in self.tensors:
                    raise ModelFormatError(f"node '{node.name}' writes undeclared tensor '{name}'")
            self.nodes.append(NodeView(
                node.name, node.op, list(node.inputs), list(node.outputs),
                Attrs({k: attr_value(v) for k, v in node.attrs.items()}, node.name, node.op),
                [self.constants[c] for c in node.constants], node.placement,
                node.onnx_op or node.op, list(node.onnx_nodes)))
        for name in list(proto.inputs) + list(proto.outputs):
            if name not in self.tensors:
                raise ModelFormatError(f"program input/output '{name}' is not a declared tensor")
        self.inputs = [self.tensors[n] for n in proto.inputs]
        self.outputs = [self.tensors[n] for n in proto.outputs]
        self.preprocess = {p.input: p for p in proto.preprocess}

    @property
    def name(self) -> str:
        return self.proto.name
