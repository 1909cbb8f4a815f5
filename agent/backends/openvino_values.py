"""Values between the program and OpenVINO for the ``openvino`` backend.

The program holds quantized tensors as int8 codes (uint8 ONNX codes shifted by 128) in
their logical shape; OpenVINO's tensors hold what the ONNX model holds: u8/i8 codes, or
real values where the ONNX tensor is the float one, with 4-D inputs in NCHW.
"""
from __future__ import annotations

import numpy as np

from qverify.simulator.executor import dequantize
from qverify.simulator.program import TensorView

ONNX_UINT8 = 2


def to_runtime(tensor: TensorView, value: np.ndarray, port_type: str) -> np.ndarray:
    """Program codes (int8, uint8 shifted by 128) -> what OpenVINO's tensor holds: the ONNX codes
    (u8/i8), or their real values when the ONNX tensor is the float one (an op's output the
    program holds quantized, e.g. a HardSwish that feeds a MaxPool before its QuantizeLinear)."""
    if tensor.quantized and port_type.startswith("f"):
        return dequantize(value, tensor.scale, tensor.zero_point)
    if tensor.quantized and (port_type == "u8" or tensor.info.onnx_dtype == ONNX_UINT8):
        return np.ascontiguousarray(value).view(np.uint8) ^ np.uint8(0x80)
    return np.ascontiguousarray(value)


def to_program(tensor: TensorView, value: np.ndarray) -> np.ndarray:
    """An OpenVINO value -> the program's representation (int8 codes, or float32), logical shape."""
    value = np.asarray(value)
    if tensor.quantized:
        if value.dtype == np.uint8:
            codes = (value ^ np.uint8(0x80)).view(np.int8)
        elif value.dtype == np.int8:
            codes = value
        else:  # a dequantized graph output: its codes back (exact for values on the grid)
            q = np.rint(value.astype(np.float64) / tensor.scale) + tensor.zero_point
            codes = np.clip(q, -128, 127).astype(np.int8)
        return np.ascontiguousarray(codes.reshape(tensor.shape))
    return np.ascontiguousarray(value.astype(tensor.dtype, copy=False).reshape(tensor.shape))


def logical_input(tensor: TensorView, value: np.ndarray) -> np.ndarray:
    """A board feed (NHWC for a quantized 4-D input) in the program's logical layout (NCHW)."""
    if tensor.quantized and len(tensor.shape) == 4:
        return np.ascontiguousarray(np.asarray(value).transpose(0, 3, 1, 2))
    return np.asarray(value)
