"""Embedded preprocessing: the compiled model takes a uint8 camera frame and normalizes it.

The board gets the camera's frame as is (BGR, RGB or GRAY NHWC images, or NV12 / YUV444
frames, uint8), converts YUV to RGB with the integer BT.601 conversion of
:mod:`qverify.simulator.ops.preprocess`, and does the channel swap, ``(p - mean) / std``
and quantization with one 256-entry table per channel. The spec is stored in model.bin
so the host computes the ONNX model's float input from the same frame the same way
(:func:`normalize`). :func:`encode_frame` makes NV12 / YUV444 frames from RGB images
(what a camera's ISP does), for tests and for feeding image files to such models.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qverify.simulator.errors import CompileError
from qverify.simulator.executor import quantize
from qverify.simulator.layout import element_strides
from qverify.simulator.ops.preprocess import YUV_FORMATS, yuv_to_rgb
from qverify.v1 import model_pb2

COLORS = ("BGR", "RGB", "GRAY")  # channel orders of images, and of what models were trained on
FRAME_FORMATS = COLORS + YUV_FORMATS  # what the board can receive


@dataclass
class PreprocessSpec:
    color: str = "BGR"  # channel order of the images the board receives
    model_color: str = "RGB"  # channel order the model was trained on
    mean: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # pixel units, per model channel
    std: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    input: str | None = None  # ONNX input name; default: the only input

    @classmethod
    def parse(cls, text: str) -> "PreprocessSpec":
        """Parse ``bgr:mean=123.7,116.3,103.5:std=58.4,57.1,57.4[:model=rgb][:input=x]``
        (first field: bgr, rgb, gray, nv12 or yuv444, what the board receives)."""
        parts = [p.strip() for p in text.split(":") if p.strip()]
        if not parts or parts[0].upper() not in FRAME_FORMATS:
            raise ValueError(f"preprocess spec '{text}' must start with one of "
                             f"{', '.join(c.lower() for c in FRAME_FORMATS)}")
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
    """For each model channel, the image channel it reads (of the RGB image a YUV frame becomes)."""
    if color in YUV_FORMATS:
        if channels != 3 or model_color == "GRAY":
            raise ValueError(f"{color.lower()} frames feed 3-channel (rgb or bgr) models")
        color = "RGB"
    if channels not in (1, 3):
        raise ValueError(f"embedded preprocessing handles 1- or 3-channel inputs, this one has {channels}")
    if color == "GRAY":
        return [0] * channels
    if channels == 1 or model_color == "GRAY":
        raise ValueError("a one-channel (GRAY) model takes GRAY images: use 'gray:...'")
    if color == model_color:
        return [0, 1, 2]
    return [2, 1, 0]


def frame_shape(pre: model_pb2.Preprocess) -> tuple[int, ...]:
    """Shape of the uint8 frame the board takes. ``image_shape`` is the picture's N,H,W,C; an
    NV12 frame holds it as (N, H*3/2, W, 1): the Y plane, then the interleaved UV plane."""
    n, h, w, c = (int(d) for d in pre.image_shape)
    return (n, h * 3 // 2, w, 1) if pre.color == "NV12" else (n, h, w, c)


def normalize(image: np.ndarray, pre: model_pb2.Preprocess) -> np.ndarray:
    """uint8 frame (NHWC image, NV12 or YUV444) -> the float32 NCHW tensor the ONNX model takes (host side)."""
    if pre.color in YUV_FORMATS:
        image = yuv_to_rgb(image, pre.color)
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
    if spec.color == "NV12" and (h % 2 or w % 2):
        raise CompileError(f"--preprocess nv12: input '{name}' is {h}x{w} (HxW); NV12 carries one U/V pair per "
                           "2x2 pixels, so H and W must be even: use yuv444, or compile with an even --input-shape")
    pre = model_pb2.Preprocess(input=name, color=spec.color, model_color=spec.model_color, mean=spec.mean,
                               std=spec.std, image_shape=[n, h, w, 1 if spec.color == "GRAY" else 3])
    codes = np.arange(256, dtype=np.uint8)
    tables = []
    for m, s in zip(spec.mean, spec.std):
        real = (codes.astype(np.float32) - np.float32(m)) / np.float32(s)
        tables.append(quantize(real, info.quant.scale, info.quant.zero_point)[0])
    image_name = f"{name}/image"
    shape = frame_shape(pre)
    ctx.add_tensor(image_name, np.uint8, shape)
    image = ctx.tensor_infos[image_name]
    image.logical_layout = "NHWC"  # held as received: aligned == valid, no padding
    image.aligned_layout = "NHWC"
    del image.aligned_shape[:]
    image.aligned_shape.extend(shape)
    del image.aligned_strides[:]
    image.aligned_strides.extend(element_strides(shape))
    const = ctx.add_const(f"{name}/preprocess_tables", np.stack(tables))
    node = model_pb2.Node(name=f"{name}/preprocess", op="Preprocess", inputs=[image_name], outputs=[target],
                          constants=[const], placement=model_pb2.NPU, onnx_op="Preprocess")
    node.attrs["channel_map"].ints.values.extend(cmap)
    if spec.color in YUV_FORMATS:
        node.attrs["format"].s = spec.color
    info.producer = node.name
    nodes = [node] + list(program.nodes)
    del program.nodes[:]
    program.nodes.extend(nodes)
    program.inputs[index] = image_name
    program.preprocess.append(pre)


def encode_frame(rgb: np.ndarray, fmt: str) -> np.ndarray:
    """uint8 RGB image(s) (N, H, W, 3) or (H, W, 3) -> the NV12 or YUV444 frame a camera would
    deliver (BT.601 full range, the inverse of the board's conversion; NV12 chroma is the
    mean of each 2x2 block). Float math: this is the camera's side, not the integer contract."""
    a = np.asarray(rgb)
    if a.ndim == 3:
        a = a[None]
    if a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"encode_frame takes uint8 RGB images (N, H, W, 3), got {a.dtype}{list(a.shape)}")
    r, g, b = (a[..., k].astype(np.float64) for k in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    u = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    v = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    if fmt == "YUV444":
        return _u8(np.stack([y, u, v], axis=-1))
    if fmt != "NV12":
        raise ValueError(f"encode_frame: format '{fmt}' is not NV12 or YUV444")
    n, h, w = y.shape
    if h % 2 or w % 2:
        raise ValueError(f"NV12 needs an even height and width, the image is {h}x{w}")
    uv = np.stack([c.reshape(n, h // 2, 2, w // 2, 2).mean(axis=(2, 4)) for c in (u, v)], axis=-1)
    return np.concatenate([_u8(y), _u8(uv).reshape(n, h // 2, w)], axis=1)[..., None]


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)
