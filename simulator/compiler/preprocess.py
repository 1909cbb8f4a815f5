"""Embedded preprocessing: the compiled model takes a uint8 NHWC image and normalizes it.

The board gets the camera's image as is (BGR, RGB or GRAY, NHWC, uint8) and does the
channel swap, ``(p - mean) / std`` and quantization with one 256-entry table per
channel. The spec is stored in model.bin so the host computes the ONNX model's float
input from the same image the same way (:func:`normalize`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qverify.simulator.errors import CompileError
from qverify.simulator.executor import quantize
from qverify.simulator.layout import element_strides
from qverify.v1 import model_pb2

COLORS = ("BGR", "RGB", "GRAY")


@dataclass
class PreprocessSpec:
    color: str = "BGR"  # channel order of the images the board receives
    model_color: str = "RGB"  # channel order the model was trained on
    mean: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # pixel units, per model channel
    std: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    input: str | None = None  # ONNX input name; default: the only input

    @classmethod
    def parse(cls, text: str) -> "PreprocessSpec":
        """Parse ``bgr:mean=123.7,116.3,103.5:std=58.4,57.1,57.4[:model=rgb][:input=x]``."""
        parts = [p.strip() for p in text.split(":") if p.strip()]
        if not parts or parts[0].upper() not in COLORS:
            raise ValueError(f"preprocess spec '{text}' must start with one of {', '.join(c.lower() for c in COLORS)}")
        spec = cls(color=parts[0].upper())
        for part in parts[1:]:
            key, _, value = part.partition("=")
            key = key.strip().lower()
            if key in ("mean", "std"):
                try:
                    numbers = [float(v) for v in value.split(",")]
                except ValueError:
                    raise ValueError(f"preprocess {key}: '{value}' is not a list of numbers") from None
                setattr(spec, key, numbers)
            elif key == "model":
                if value.upper() not in COLORS:
                    raise ValueError(f"preprocess model color '{value}' must be one of rgb, bgr, gray")
                spec.model_color = value.upper()
            elif key == "input":
                spec.input = value
            else:
                raise ValueError(f"unknown preprocess key '{key}' (known: mean, std, model, input)")
        return spec


def channel_map(color: str, model_color: str, channels: int) -> list[int]:
    """For each model channel, the image channel it reads."""
    if channels not in (1, 3):
        raise ValueError(f"embedded preprocessing handles 1- or 3-channel inputs, this one has {channels}")
    if color == "GRAY":
        return [0] * channels
    if channels == 1 or model_color == "GRAY":
        raise ValueError("a one-channel (GRAY) model takes GRAY images: use 'gray:...'")
    if color == model_color:
        return [0, 1, 2]
    return [2, 1, 0]


def normalize(image: np.ndarray, pre: model_pb2.Preprocess) -> np.ndarray:
    """uint8 NHWC image -> the float32 NCHW tensor the ONNX model takes (host side)."""
    cmap = channel_map(pre.color, pre.model_color, len(pre.mean))
    planes = [(image[..., src].astype(np.float32) - np.float32(m)) / np.float32(s)
              for src, m, s in zip(cmap, pre.mean, pre.std)]
    return np.stack(planes, axis=1).astype(np.float32)


def apply_preprocess(ctx, spec: PreprocessSpec) -> None:
    program = ctx.program
    onnx_inputs = list(program.onnx_inputs)
    name = spec.input or (onnx_inputs[0] if len(onnx_inputs) == 1 else None)
    if name is None or name not in onnx_inputs:
        raise CompileError(f"--preprocess needs input=NAME (inputs: {', '.join(onnx_inputs)})")
    index = onnx_inputs.index(name)
    target = program.inputs[index]
    info = ctx.tensor_infos[target]
    if info.dtype != model_pb2.INT8 or len(info.shape) != 4:
        raise CompileError(f"--preprocess needs a quantized 4-D NCHW input, '{name}' is not one")
    n, c, h, w = info.shape
    if len(spec.mean) != c or len(spec.std) != c or any(s == 0 for s in spec.std):
        raise CompileError(f"--preprocess: input '{name}' has {c} channels; give {c} mean and {c} non-zero std values")
    try:
        cmap = channel_map(spec.color, spec.model_color, c)
    except ValueError as exc:
        raise CompileError(f"--preprocess: {exc}") from None
    pre = model_pb2.Preprocess(input=name, color=spec.color, model_color=spec.model_color, mean=spec.mean,
                               std=spec.std, image_shape=[n, h, w, 1 if spec.color == "GRAY" else 3])
    codes = np.arange(256, dtype=np.uint8)
    tables = []
    for m, s in zip(spec.mean, spec.std):
        real = (codes.astype(np.float32) - np.float32(m)) / np.float32(s)
        tables.append(quantize(real, info.quant.scale, info.quant.zero_point)[0])
    image_name = f"{name}/image"
    ctx.add_tensor(image_name, np.uint8, tuple(pre.image_shape))
    image = ctx.tensor_infos[image_name]
    image.logical_layout = "NHWC"  # held as received: aligned == valid, no padding
    image.aligned_layout = "NHWC"
    del image.aligned_shape[:]
    image.aligned_shape.extend(pre.image_shape)
    del image.aligned_strides[:]
    image.aligned_strides.extend(element_strides(tuple(pre.image_shape)))
    const = ctx.add_const(f"{name}/preprocess_tables", np.stack(tables))
    node = model_pb2.Node(name=f"{name}/preprocess", op="Preprocess", inputs=[image_name], outputs=[target],
                          constants=[const], placement=model_pb2.NPU, onnx_op="Preprocess")
    node.attrs["channel_map"].ints.values.extend(cmap)
    info.producer = node.name
    nodes = [node] + list(program.nodes)
    del program.nodes[:]
    program.nodes.extend(nodes)
    program.inputs[index] = image_name
    program.preprocess.append(pre)
