"""Wire tensors (``qverify.v1.Tensor``) <-> numpy arrays, with checks against the model."""
from __future__ import annotations

import numpy as np

from qverify.simulator.program import DTYPES, PROTO_DTYPES
from qverify.v1 import board_agent_pb2, model_pb2


class TensorError(ValueError):
    """A wire tensor is malformed or does not match what the model expects."""


def to_wire(name: str, array: np.ndarray, layout: str = "") -> board_agent_pb2.Tensor:
    array = np.ascontiguousarray(array)
    return board_agent_pb2.Tensor(name=name, dtype=PROTO_DTYPES[array.dtype], shape=list(array.shape),
                                  data=array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes(),
                                  layout=layout)


def from_wire(tensor: board_agent_pb2.Tensor) -> np.ndarray:
    """Decode, refusing unknown dtypes, negative dims and byte counts that do not match."""
    dtype = DTYPES.get(tensor.dtype)
    if dtype is None:
        raise TensorError(f"input '{tensor.name}': unknown dtype code {tensor.dtype}")
    if any(d < 0 for d in tensor.shape):
        raise TensorError(f"input '{tensor.name}': negative dimension in shape {list(tensor.shape)}")
    count = 1
    for d in tensor.shape:
        count *= int(d)
    if count * dtype.itemsize != len(tensor.data):
        raise TensorError(f"input '{tensor.name}': shape {list(tensor.shape)} of {dtype} needs "
                          f"{count * dtype.itemsize} bytes, got {len(tensor.data)}")
    return np.frombuffer(tensor.data, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(tuple(tensor.shape))


def dtype_name(code: int) -> str:
    return model_pb2.DataType.Name(code).lower() if code in model_pb2.DataType.values() else str(code)
