"""Cast and CastLike; ``to`` is the ONNX TensorProto data type enum."""
from __future__ import annotations

import numpy as np

from qverify.simulator.ops.registry import register_cpu

# TensorProto.DataType -> numpy dtype (string, bfloat16 and float8 have no numpy type).
ONNX_DTYPES: dict[int, type] = {
    1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32,
    7: np.int64, 9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64,
}


def _cast(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Convert like a C++ static_cast: floats truncate toward zero into integers."""
    if x.dtype.kind == "f" and np.dtype(dtype).kind in "iu":
        with np.errstate(invalid="ignore"):
            return np.trunc(x).astype(dtype)
    return x.astype(dtype)


@register_cpu("Cast")
def cast(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX Cast to ``to``."""
    to = int(attrs["to"])
    if to not in ONNX_DTYPES:
        raise NotImplementedError(f"Cast to ONNX data type {to} is not supported")
    return [_cast(np.asarray(inputs[0]), ONNX_DTYPES[to])]


@register_cpu("CastLike")
def cast_like(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX CastLike: cast input 0 to the dtype of input 1."""
    return [_cast(np.asarray(inputs[0]), np.asarray(inputs[1]).dtype)]
