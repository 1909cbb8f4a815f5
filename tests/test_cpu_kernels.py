"""The float32 CPU kernels agree with onnxruntime's CPU provider, one single-node model per case."""
from __future__ import annotations

import importlib
import math
import pathlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from qverify.simulator.ops import cpu, registry

F32, I64, BOOL = np.float32, np.int64, np.bool_
RNG = np.random.default_rng(20240611)


def _kernel(op: str):
    """The registered CPU kernel of ``op``.

    load_kernels() would also import the NPU kernels, which these tests do not cover,
    so only the CPU modules are imported here.
    """
    for name in cpu.MODULES:
        importlib.import_module(f"qverify.simulator.ops.cpu.{name}")
    return registry._CPU[op]


def r(*shape: int, scale: float = 1.0) -> np.ndarray:
    """Seeded normal float32 data."""
    return (RNG.standard_normal(shape) * scale).astype(F32)


def pos(*shape: int) -> np.ndarray:
    """Seeded strictly positive float32 data."""
    return RNG.uniform(0.1, 4.0, shape).astype(F32)


def i64(*values) -> np.ndarray:
    return np.array(values, dtype=I64)


def f32(*values) -> np.ndarray:
    return np.array(values, dtype=F32)


def run_ort(op: str, inputs: list, attrs: dict, opset: int, out_types: tuple) -> list[np.ndarray]:
    """Run ``op`` as a one-node model in onnxruntime (CPU) on ``inputs`` (None = omitted)."""
    names = ["" if v is None else f"in{i}" for i, v in enumerate(inputs)]
    outs = [f"out{i}" for i in range(len(out_types))]
    onnx_attrs = {k: onnx.numpy_helper.from_array(v) if isinstance(v, np.ndarray) else v
                  for k, v in attrs.items() if not k.startswith("_")}
    node = helper.make_node(op, names, outs, **onnx_attrs)
    graph_inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                    for n, v in zip(names, inputs) if v is not None]
    graph_outputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(np.dtype(t)), None)
                     for n, t in zip(outs, out_types)]
    graph = helper.make_graph([node], op, graph_inputs, graph_outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {n: v for n, v in zip(names, inputs) if v is not None}
    return session.run(None, feeds)


CASES = []


def case(name: str, op: str, inputs: list, attrs: dict | None = None, opset: int = 17,
         outs: tuple = (F32,)) -> None:
    CASES.append(pytest.param(op, inputs, attrs or {}, opset, outs, id=name))


# Elementwise unary and binary ops.
for op in ("Abs", "Ceil", "Cos", "Exp", "Floor", "Neg", "Relu", "Round", "Sigmoid", "Sign",
           "Sin", "Tanh", "Erf", "Atan", "Tan"):
    case(op, op, [r(2, 3, 17, scale=3)])
for op in ("Sqrt", "Log", "Reciprocal"):
    case(op, op, [pos(3, 40)])
case("Erf-wide", "Erf", [np.linspace(-7, 7, 2001, dtype=F32)])
case("Sigmoid-wide", "Sigmoid", [np.linspace(-90, 90, 1001, dtype=F32)])
case("Round-ties", "Round", [f32(-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.49)])
case("Not", "Not", [r(4, 5) > 0], outs=(BOOL,))
case("IsNaN", "IsNaN", [f32(1, np.nan, -np.inf)], opset=13, outs=(BOOL,))
for op in ("Add", "Sub", "Mul", "Div"):
    case(op, op, [r(2, 3, 4), r(3, 1) + 3])
    case(f"{op}-int", op, [i64(-7, 7, -6, 5, 0), i64(2, -2, 4, 3, -5)], outs=(I64,))
case("Pow", "Pow", [pos(3, 4), r(3, 4)])
case("Pow-int-exponent", "Pow", [r(3, 4), i64(2)])
case("Pow-scalar-half", "Pow", [pos(5, 6), f32(0.5)])
ties = np.round(r(3, 8)).astype(F32)
for op in ("Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual"):
    case(op, op, [ties, np.round(r(8)).astype(F32)], outs=(BOOL,))
for op in ("And", "Or", "Xor"):
    case(op, op, [r(3, 4) > 0, r(4) > 0], outs=(BOOL,))
case("Mod-fmod", "Mod", [r(10, scale=5), r(10) + 3], {"fmod": 1})
case("Mod-int", "Mod", [i64(-7, 7, -6, 5), i64(3, -3, 4, 4)], outs=(I64,))
case("Where", "Where", [r(3, 1, 4) > 0, r(2, 4), r(3, 2, 1)])

# Activations.
case("Clip-inputs", "Clip", [r(4, 9, scale=3), f32(-1), f32(2)], opset=13)
case("Clip-min-only", "Clip", [r(4, 9, scale=3), f32(-0.5)], opset=13)
case("Clip-max-only", "Clip", [r(4, 9, scale=3), None, f32(0.5)], opset=13)
case("Clip-attrs", "Clip", [r(4, 9, scale=3)], {"min": -0.7, "max": 6.0}, opset=6)
case("Clip-none", "Clip", [r(4, 9)], opset=13)
case("LeakyRelu", "LeakyRelu", [r(3, 30)])
case("LeakyRelu-alpha", "LeakyRelu", [r(3, 30)], {"alpha": 0.2})
case("PRelu", "PRelu", [r(2, 3, 4, 5), r(3, 1, 1)])
case("Elu", "Elu", [r(3, 30, scale=3)], {"alpha": 0.7})
case("Celu", "Celu", [r(3, 30, scale=3)], {"alpha": 1.3})
case("Selu", "Selu", [r(3, 30, scale=3)])
case("ThresholdedRelu", "ThresholdedRelu", [r(3, 30, scale=3)], {"alpha": 0.5})
case("HardSigmoid", "HardSigmoid", [r(3, 30, scale=4)])
case("HardSigmoid-attrs", "HardSigmoid", [r(3, 30, scale=4)], {"alpha": 0.3, "beta": 0.4})
case("HardSwish", "HardSwish", [r(3, 30, scale=4)], opset=14)
case("Softplus", "Softplus", [np.linspace(-30, 30, 301, dtype=F32)])
case("Softsign", "Softsign", [r(3, 30, scale=4)])
case("Mish", "Mish", [np.linspace(-20, 20, 401, dtype=F32)], opset=18)
case("Gelu", "Gelu", [np.linspace(-8, 8, 801, dtype=F32)], opset=20)
case("Gelu-tanh", "Gelu", [np.linspace(-8, 8, 801, dtype=F32)], {"approximate": "tanh"}, opset=20)

# Variadic.
for op in ("Min", "Max", "Sum", "Mean"):
    case(op, op, [r(2, 3, 4), r(3, 1), r(4)])
    case(f"{op}-single", op, [r(5)])

# Gemm and MatMul.
case("Gemm", "Gemm", [r(4, 6), r(6, 5), r(5)])
case("Gemm-trans-alpha-beta", "Gemm", [r(6, 4), r(5, 6), r(4, 5)],
     {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0})
case("Gemm-no-c", "Gemm", [r(4, 6), r(5, 6)], {"transB": 1}, opset=13)
case("Gemm-scalar-c", "Gemm", [r(4, 6), r(6, 5), f32(1.5)], {"beta": 0.25})
case("MatMul-2d", "MatMul", [r(7, 9), r(9, 5)])
case("MatMul-batched", "MatMul", [r(2, 1, 7, 9), r(3, 9, 5)])
case("MatMul-vector", "MatMul", [r(9), r(2, 9, 5)])

# Conv.
case("Conv", "Conv", [r(1, 3, 10, 11), r(4, 3, 3, 3), r(4)])
case("Conv-pads-strides", "Conv", [r(2, 3, 11, 10), r(5, 3, 3, 2), r(5)],
     {"pads": [1, 0, 2, 1], "strides": [2, 3]})
case("Conv-dilations", "Conv", [r(1, 2, 12, 12), r(3, 2, 3, 3)], {"dilations": [2, 3], "pads": [2, 3, 2, 3]})
case("Conv-group", "Conv", [r(1, 4, 9, 9), r(6, 2, 3, 3), r(6)], {"group": 2, "pads": [1, 1, 1, 1]})
case("Conv-depthwise", "Conv", [r(2, 6, 9, 8), r(6, 1, 3, 3), r(6)],
     {"group": 6, "strides": [2, 2], "pads": [1, 1, 1, 1], "kernel_shape": [3, 3]})
for auto_pad in ("SAME_UPPER", "SAME_LOWER", "VALID"):
    # Total pads 2 (H) and 3 (W): the odd one shows where the extra pixel goes.
    case(f"Conv-{auto_pad}", "Conv", [r(1, 3, 10, 9), r(4, 3, 4, 4)], {"auto_pad": auto_pad, "strides": [2, 2]})
case("Conv-1d", "Conv", [r(2, 3, 20), r(4, 3, 5), r(4)], {"pads": [2, 1], "strides": [3]})
case("Conv-3d", "Conv", [r(1, 2, 5, 6, 7), r(3, 2, 2, 3, 2), r(3)], {"pads": [1, 0, 1, 0, 1, 1]})
case("Conv-1x1", "Conv", [r(1, 16, 7, 7), r(8, 16, 1, 1), r(8)])

# ConvTranspose.
case("ConvT", "ConvTranspose", [r(1, 3, 5, 6), r(3, 4, 3, 3), r(4)])
case("ConvT-strides-pads", "ConvTranspose", [r(2, 3, 5, 4), r(3, 2, 3, 3), r(2)],
     {"strides": [2, 2], "pads": [1, 0, 1, 1]})
case("ConvT-output-padding", "ConvTranspose", [r(1, 2, 4, 4), r(2, 3, 3, 3)],
     {"strides": [3, 2], "output_padding": [1, 1], "pads": [1, 1, 0, 0]})
case("ConvT-group", "ConvTranspose", [r(1, 4, 5, 5), r(4, 3, 3, 3), r(6)], {"group": 2, "strides": [2, 2]})
case("ConvT-dilations", "ConvTranspose", [r(1, 2, 5, 5), r(2, 2, 3, 2)], {"dilations": [2, 3]})
case("ConvT-output-shape", "ConvTranspose", [r(1, 2, 5, 5), r(2, 3, 3, 3)],
     {"strides": [2, 2], "output_shape": [10, 9]})
for auto_pad in ("SAME_UPPER", "SAME_LOWER"):
    case(f"ConvT-{auto_pad}", "ConvTranspose", [r(1, 2, 5, 4), r(2, 3, 4, 3)],
         {"strides": [2, 2], "auto_pad": auto_pad})
    case(f"ConvT-{auto_pad}-output-shape", "ConvTranspose", [r(1, 2, 5, 4), r(2, 3, 4, 3)],
         {"strides": [2, 2], "auto_pad": auto_pad, "output_shape": [9, 8]})
case("ConvT-1d", "ConvTranspose", [r(2, 3, 7), r(3, 2, 4), r(2)], {"strides": [2], "pads": [1, 2]})

# Pooling.
x_pool = r(2, 3, 11, 10)
case("MaxPool", "MaxPool", [x_pool], {"kernel_shape": [2, 2], "strides": [2, 2]})
case("MaxPool-pads", "MaxPool", [x_pool], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]})
case("MaxPool-ceil", "MaxPool", [x_pool], {"kernel_shape": [3, 2], "strides": [2, 3], "ceil_mode": 1})
case("MaxPool-ceil-pads", "MaxPool", [r(1, 1, 6, 6)],
     {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1})
case("MaxPool-ceil-drop-last", "MaxPool", [r(1, 2, 5, 5)],
     {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1})
case("MaxPool-dilations", "MaxPool", [x_pool], {"kernel_shape": [2, 3], "dilations": [2, 2], "pads": [1, 0, 1, 2]})
case("MaxPool-same-upper", "MaxPool", [x_pool], {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"})
case("MaxPool-same-lower", "MaxPool", [x_pool], {"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "SAME_LOWER"})
case("MaxPool-1d", "MaxPool", [r(2, 3, 15)], {"kernel_shape": [4], "strides": [3], "pads": [1, 1]})
case("MaxPool-3d", "MaxPool", [r(1, 2, 5, 6, 7)], {"kernel_shape": [2, 2, 3], "strides": [2, 1, 2]})
for include in (0, 1):
    case(f"AvgPool-pads-incl{include}", "AveragePool", [x_pool],
         {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": include})
    case(f"AvgPool-ceil-incl{include}", "AveragePool", [x_pool],
         {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 0, 0, 1], "ceil_mode": 1,
          "count_include_pad": include})
    case(f"AvgPool-same-lower-incl{include}", "AveragePool", [x_pool],
         {"kernel_shape": [3, 2], "strides": [2, 2], "auto_pad": "SAME_LOWER", "count_include_pad": include})
    case(f"AvgPool-dilations-incl{include}", "AveragePool", [x_pool],
         {"kernel_shape": [2, 2], "dilations": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": include},
         opset=19)
case("AvgPool", "AveragePool", [x_pool], {"kernel_shape": [2, 2], "strides": [2, 2]})
case("AvgPool-1d", "AveragePool", [r(2, 3, 15)], {"kernel_shape": [4], "strides": [3], "pads": [2, 1]})
case("GlobalAveragePool", "GlobalAveragePool", [x_pool])
case("GlobalMaxPool", "GlobalMaxPool", [x_pool])
case("GlobalAveragePool-1d", "GlobalAveragePool", [r(2, 5, 33)])

# Softmax family.
for op in ("Softmax", "LogSoftmax", "Hardmax"):
    case(f"{op}", op, [r(2, 3, 4, 5, scale=3)], opset=13)
    case(f"{op}-axis1", op, [r(2, 3, 4, 5, scale=3)], {"axis": 1}, opset=13)
    case(f"{op}-opset11", op, [r(2, 3, 4, 5, scale=3)], {"_opset": 11}, opset=11)
    case(f"{op}-opset11-axis2", op, [r(2, 3, 4, 5, scale=3)], {"axis": 2, "_opset": 11}, opset=11)

# Reductions.
x_red = r(2, 3, 4, 5)
for op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
           "ReduceSumSquare", "ReduceLogSumExp"):
    case(f"{op}-input", op, [x_red, i64(1, -1)], opset=18)
    case(f"{op}-keepdims0", op, [x_red, i64(2)], {"keepdims": 0}, opset=18)
    case(f"{op}-all", op, [x_red], opset=18)
    case(f"{op}-noop", op, [x_red], {"noop_with_empty_axes": 1}, opset=18)
    if op != "ReduceSum":
        case(f"{op}-attr", op, [x_red], {"axes": [0, 2], "keepdims": 0}, opset=13)
case("ReduceLogSum", "ReduceLogSum", [pos(3, 4), i64(1)], opset=18)
case("ReduceSum-opset13", "ReduceSum", [x_red, i64(-2)], opset=13)
for op in ("ArgMax", "ArgMin"):
    ties_red = np.round(r(3, 4, 5)).astype(F32)
    case(op, op, [ties_red], {"axis": 1}, outs=(I64,))
    case(f"{op}-last", op, [ties_red], {"axis": -1, "keepdims": 0, "select_last_index": 1}, outs=(I64,))

# Resize and Upsample.
x_img = r(1, 2, 5, 7)
scales2 = f32(1, 1, 2, 2)
for ctm in ("half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel", "tf_half_pixel_for_nn",
            "half_pixel_symmetric"):
    # Deprecated since Resize-13; onnxruntime still runs it but only under this (spec) name.
    opset = 13 if ctm == "tf_half_pixel_for_nn" else 19
    for nm in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil"):
        case(f"Resize-nearest-{ctm}-{nm}-sizes", "Resize", [x_img, None, None, i64(1, 2, 8, 12)],
             {"coordinate_transformation_mode": ctm, "nearest_mode": nm}, opset=opset)
    case(f"Resize-nearest-{ctm}-down", "Resize", [x_img, None, f32(1, 1, 0.6, 0.5)],
         {"coordinate_transformation_mode": ctm}, opset=opset)
    if ctm != "tf_half_pixel_for_nn":
        for mode in ("linear", "cubic"):
            case(f"Resize-{mode}-{ctm}-up", "Resize", [x_img, None, scales2],
                 {"mode": mode, "coordinate_transformation_mode": ctm}, opset=19)
            case(f"Resize-{mode}-{ctm}-sizes", "Resize", [x_img, None, None, i64(1, 2, 3, 11)],
                 {"mode": mode, "coordinate_transformation_mode": ctm}, opset=19)
x_even = r(1, 2, 4, 6)
for nm in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil"):
    for ctm in ("half_pixel", "asymmetric", "align_corners"):
        # Halving puts half_pixel coordinates exactly on .5 ties, where the nearest modes differ.
        case(f"Resize-nearest-ties-{ctm}-{nm}", "Resize", [x_even, None, f32(1, 1, 0.5, 0.5)],
             {"coordinate_transformation_mode": ctm, "nearest_mode": nm}, opset=19)
        case(f"Resize-nearest-ties-{ctm}-{nm}-up", "Resize", [x_even, None, f32(1, 1, 2.5, 1.5)],
             {"coordinate_transformation_mode": ctm, "nearest_mode": nm}, opset=19)
case("Resize-nearest-3d", "Resize", [r(2, 3, 4), None, f32(1, 2, 1.5)], opset=13)
case("Resize-nearest-5d", "Resize", [r(1, 2, 3, 4, 2), None, f32(1, 1, 2, 0.5, 3)],
     {"nearest_mode": "floor"}, opset=13)
case("Resize-nearest-empty-roi-scales", "Resize", [x_img, np.zeros(0, F32), np.zeros(0, F32), i64(1, 2, 9, 4)],
     opset=11)
case("Resize-linear-opset11", "Resize", [x_img, np.zeros(0, F32), f32(1, 1, 1.7, 0.8)], {"mode": "linear"},
     opset=11)
case("Resize-cubic-exclude", "Resize", [x_img, None, f32(1, 1, 1.5, 2.5)],
     {"mode": "cubic", "exclude_outside": 1, "cubic_coeff_a": -0.5}, opset=13)
for mode in ("nearest", "linear", "cubic"):
    case(f"Resize-{mode}-tf-crop", "Resize", [x_img, f32(0, 0, 0.2, -0.1, 1, 1, 0.9, 1.2), None,
                                                  i64(1, 2, 6, 9)],
         {"mode": mode, "coordinate_transformation_mode": "tf_crop_and_resize", "extrapolation_value": 3.5},
         opset=13)
    case(f"Resize-{mode}-tf-crop-scale1", "Resize", [x_img, f32(0, 0, -0.2, 0.3, 1, 1, 0.8, 0.9), None,
                                                         i64(1, 2, 5, 5)],
         {"mode": mode, "coordinate_transformation_mode": "tf_crop_and_resize", "extrapolation_value": 9.0},
         opset=19)
    if mode != "cubic":
        case(f"Resize-{mode}-opset10", "Resize", [x_img, f32(1, 1, 2, 1.5)], {"mode": mode}, opset=10)
        case(f"Resize-{mode}-opset10-down", "Resize", [x_img, f32(1, 1, 0.5, 0.6)], {"mode": mode}, opset=10)
        case(f"Upsample-{mode}", "Upsample", [x_img, f32(1, 1, 2, 3)], {"mode": mode}, opset=9)
        case(f"Upsample-{mode}-opset7", "Upsample", [x_img], {"mode": mode, "scales": [1.0, 1.0, 1.5, 2.0]}, opset=7)
case("Resize-axes", "Resize", [x_img, None, f32(2, 0.5)], {"axes": [2, 3], "mode": "linear"}, opset=18)
case("Resize-axes-sizes", "Resize", [x_img, None, None, i64(9)], {"axes": [-1]}, opset=18)
for policy in ("not_larger", "not_smaller"):
    case(f"Resize-{policy}", "Resize", [x_img, None, None, i64(8, 9)],
         {"axes": [2, 3], "keep_aspect_ratio_policy": policy}, opset=18)

# Data movement.
x4 = r(2, 3, 4, 5)
case("Reshape", "Reshape", [x4, i64(0, -1, 5)], outs=(F32,))
case("Reshape-allowzero", "Reshape", [r(0, 3), i64(3, 0)], {"allowzero": 1}, opset=14)
for axis in (0, 2, -1):
    case(f"Flatten-{axis}", "Flatten", [x4], {"axis": axis})
case("Transpose", "Transpose", [x4], {"perm": [0, 2, 3, 1]})
case("Transpose-reverse", "Transpose", [x4])
case("Slice", "Slice", [x4, i64(1, -3), i64(3, 100), i64(1, -1), i64(1, 2)], opset=13)
case("Slice-negative-step", "Slice", [x4, i64(-1, 10, 3), i64(-100, 0, 0), i64(3, 2, 1), i64(-2, -1, -1)])
case("Slice-defaults", "Slice", [x4, i64(1), i64(-1)])
case("Slice-opset1", "Slice", [x4], {"starts": [0, 1], "ends": [1, 1000], "axes": [0, 3]}, opset=1)
case("Split-input", "Split", [x4, i64(1, 3, 1)], {"axis": -1}, outs=(F32, F32, F32))
case("Split-num-outputs", "Split", [r(2, 7)], {"axis": 1, "num_outputs": 3}, opset=18, outs=(F32,) * 3)
case("Split-equal", "Split", [x4], {"axis": 2, "_num_outputs": 2}, opset=13, outs=(F32, F32))
case("Split-attr", "Split", [x4], {"axis": 1, "split": [2, 1]}, opset=11, outs=(F32, F32))
case("Concat", "Concat", [r(2, 3, 4), r(2, 1, 4), r(2, 2, 4)], {"axis": 1})
case("Concat-neg", "Concat", [r(2, 3), r(2, 4)], {"axis": -1})
case("Squeeze", "Squeeze", [r(1, 3, 1, 4), i64(-2)], opset=13)
case("Squeeze-all", "Squeeze", [r(1, 3, 1, 4)], opset=13)
case("Squeeze-attr", "Squeeze", [r(1, 3, 1, 4)], {"axes": [0]}, opset=11)
case("Unsqueeze", "Unsqueeze", [r(3, 4), i64(0, -1)], opset=13)
case("Unsqueeze-attr", "Unsqueeze", [r(3, 4)], {"axes": [1, 3]}, opset=11)
for mode in ("constant", "reflect", "edge", "wrap"):
    case(f"Pad-{mode}", "Pad", [x4, i64(0, 1, 2, 3, 0, 2, 1, 0)], {"mode": mode}, opset=19)
case("Pad-value", "Pad", [x4, i64(0, 0, 1, 1, 0, 0, 2, 2), f32(1.5)], opset=13)
case("Pad-negative", "Pad", [x4, i64(0, -1, 2, -2, 0, 1, -1, 1)], opset=13)
case("Pad-axes", "Pad", [x4, i64(1, 2, 3, 0), f32(-1), i64(1, -1)], opset=18)
case("Pad-opset2", "Pad", [x4], {"pads": [0, 0, 1, 2, 0, 0, 2, 1], "value": 0.5}, opset=2)
case("Identity", "Identity", [x4])
case("Dropout", "Dropout", [x4], opset=13)
case("Gather", "Gather", [x4, i64(2, 0, -1)], {"axis": 2})
case("Gather-scalar", "Gather", [x4, np.array(-1, dtype=I64)], {"axis": 1})
case("Gather-2d", "Gather", [r(5, 3), np.array([[0, 4], [-2, 1]], dtype=I64)])
case("GatherElements", "GatherElements", [r(3, 4), np.array([[0, -1], [2, 1], [1, 0]], dtype=I64)], {"axis": 1})
case("Tile", "Tile", [r(2, 3), i64(2, 3)])
case("Expand", "Expand", [r(3, 1), i64(2, 1, 4)])
case("Expand-smaller-shape", "Expand", [r(2, 3, 1), i64(3, 4)])
for to, dtype in ((6, np.int32), (3, np.int8), (9, BOOL), (10, np.float16), (7, I64), (11, np.float64)):
    case(f"Cast-{np.dtype(dtype).name}", "Cast", [r(3, 8, scale=20)], {"to": to}, outs=(dtype,))
case("Cast-int-to-float", "Cast", [i64(-5, 0, 7)], {"to": 1})
case("CastLike", "CastLike", [r(4, scale=9), i64(1)], opset=15, outs=(I64,))
case("Shape", "Shape", [x4], outs=(I64,))
case("Shape-start-end", "Shape", [x4], {"start": 1, "end": -1}, opset=15, outs=(I64,))
case("Size", "Size", [x4], outs=(I64,))
case("Range-float", "Range", [np.array(0.5, F32), np.array(3.1, F32), np.array(0.7, F32)])
case("ConstantOfShape", "ConstantOfShape", [i64(2, 3)], opset=9)
case("ConstantOfShape-int", "ConstantOfShape", [i64(4)], {"value": i64(-3)}, opset=9, outs=(I64,))
case("ConstantOfShape-float", "ConstantOfShape", [i64(1, 2)], {"value": f32(2.5)}, opset=9)
case("Range-int", "Range", [np.array(10, I64), np.array(-3, I64), np.array(-4, I64)], outs=(I64,))
case("BatchNormalization", "BatchNormalization", [x4, r(3), r(3), r(3), pos(3)], {"epsilon": 1e-3})
case("InstanceNormalization", "InstanceNormalization", [x4, r(3), r(3)])
case("LayerNormalization", "LayerNormalization", [x4, r(5), r(5)], outs=(F32, F32, F32))
case("LayerNormalization-axis", "LayerNormalization", [x4, r(4, 5)], {"axis": -2, "epsilon": 1e-3})
for mode in ("DCR", "CRD"):
    case(f"DepthToSpace-{mode}", "DepthToSpace", [r(2, 8, 3, 4)], {"blocksize": 2, "mode": mode})
case("SpaceToDepth", "SpaceToDepth", [r(2, 3, 6, 4)], {"blocksize": 2})


@pytest.mark.parametrize("op, inputs, attrs, opset, outs", CASES)
def test_kernel_matches_onnxruntime(op: str, inputs: list, attrs: dict, opset: int, outs: tuple) -> None:
    expected = run_ort(op, inputs, attrs, opset, outs)
    got = _kernel(op)([None if v is None else v.copy() for v in inputs], dict(attrs))
    assert len(got) >= len(expected)
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype, (g.dtype, e.dtype)
        assert g.shape == e.shape, (g.shape, e.shape)
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


def test_erf_is_accurate_in_float64() -> None:
    erf64 = importlib.import_module("qverify.simulator.ops.cpu.erf").erf64
    x = np.concatenate([np.linspace(-7, 7, 4001), [0.0, 1e-300, -1e-9, np.inf, -np.inf]])
    want = np.array([math.erf(v) for v in x])
    np.testing.assert_allclose(erf64(x), want, rtol=1e-13, atol=1e-15)
    assert np.isnan(erf64(np.array([np.nan]))[0])


REQUIRED = """Conv ConvTranspose Gemm MatMul Add Sub Mul Div Pow Sqrt Exp Log Neg Abs Reciprocal Floor
Ceil Erf Relu Clip LeakyRelu Elu Selu Sigmoid Tanh HardSigmoid HardSwish Softplus Softsign Mish Gelu
PRelu Min Max Sum Mean Softmax LogSoftmax MaxPool AveragePool GlobalAveragePool GlobalMaxPool
ReduceMean ReduceSum ReduceMax ReduceMin Resize Upsample Reshape Flatten Transpose Slice Split Concat
Squeeze Unsqueeze Pad Identity BatchNormalization InstanceNormalization LayerNormalization Gather Tile
Expand Cast Where Equal Greater Less Shape DepthToSpace SpaceToDepth""".split()


def test_required_ops_registered_and_tested() -> None:
    _kernel("Conv")
    tested = {p.values[0] for p in CASES}
    assert not [op for op in REQUIRED if op not in registry._CPU]
    assert not [op for op in registry._CPU if op not in tested]


def test_kernel_files_import_numpy_only() -> None:
    folder = pathlib.Path(cpu.__file__).parent
    for path in folder.glob("*.py"):
        for line in path.read_text().splitlines():
            words = line.split()
            if words[:1] in (["import"], ["from"]):
                root = words[1].split(".")[0]
                assert root in {"numpy", "qverify", "__future__", "math", "typing", "functools"}, (path, line)
