"""Small float ONNX graphs built in the tests and quantized with onnxruntime.quantization."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 10  # onnxruntime 1.31 reads IR <= 13; onnx writes a newer one by default


def small_cnn(seed: int = 0, activation: str = "hardswish") -> onnx.ModelProto:
    """Conv -> Relu -> depthwise Conv -> HardSwish (or x * Sigmoid(x)) -> Add(skip) -> GlobalAveragePool
    -> Flatten -> Gemm -> Softmax."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 8).astype(np.float32)
    w2 = rng.normal(0, 0.3, (8, 1, 3, 3)).astype(np.float32)
    b2 = rng.normal(0, 0.1, 8).astype(np.float32)
    w3 = rng.normal(0, 0.3, (5, 8)).astype(np.float32)
    b3 = rng.normal(0, 0.1, 5).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="dwconv", pads=[1, 1, 1, 1], group=8),
        *([helper.make_node("HardSwish", ["c2"], ["h2"], name="hswish")] if activation == "hardswish" else
          [helper.make_node("Sigmoid", ["c2"], ["s2"], name="sigmoid"),
           helper.make_node("Mul", ["c2", "s2"], ["h2"], name="silu_mul")]),
        helper.make_node("Add", ["h2", "r1"], ["a2"], name="skip_add"),
        helper.make_node("GlobalAveragePool", ["a2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["prob"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "small_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 5])],
        [numpy_helper.from_array(a, n) for n, a in
         (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2), ("w3", w3), ("b3", b3))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


def calibration(seed: int = 1, count: int = 4, shape=(1, 3, 16, 16)) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(0, 1, shape).astype(np.float32)} for _ in range(count)]


def quantize(model: onnx.ModelProto, out: Path, fmt: str = "QDQ", activations: str = "QUInt8",
             per_channel: bool = False, feeds: list[dict[str, np.ndarray]] | None = None) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    out = Path(out)
    float_path = out.with_suffix(".float.onnx")
    onnx.save(model, str(float_path))
    data = iter(feeds or calibration())

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(data, None)

    quantize_static(str(float_path), str(out), Reader(), quant_format=getattr(QuantFormat, fmt),
                    activation_type=getattr(QuantType, activations), weight_type=QuantType.QInt8,
                    per_channel=per_channel)
    float_path.unlink()
    return out
