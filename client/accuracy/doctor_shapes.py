"""Structure of what a pipeline feeds: dtype, layout, size, camera frames (NV12 / YUV444).

Each check looks at one fed array (or decoded image) against one model input and returns
the problems it sees plus, when the values can still be read as the model's NCHW float
tensor, that tensor for the range and response checks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qverify.client.accuracy.doctor_range import ModelInput


@dataclass
class Sample:
    source: str
    array: np.ndarray
    image_file: bool = False  # decoded from jpg/png: uint8 (H, W, 3) RGB as the file holds it


Problem = tuple[str, str, str]  # (kind, evidence, fix)


def _shape(a: np.ndarray) -> str:
    return f"{a.dtype}{list(a.shape)}"


def _want(port: ModelInput) -> str:
    return f"float32{[d if d is not None else '?' for d in port.shape]}"


def _squeezed(a: np.ndarray) -> tuple[int, ...]:
    shape = list(a.shape)
    while len(shape) > 2 and shape[0] == 1:
        shape.pop(0)
    while len(shape) > 2 and shape[-1] == 1:
        shape.pop()
    return tuple(shape)


def _is_yuv444(a: np.ndarray) -> bool:
    """Packed Y,U,V: chroma sits around 128 and varies far less than luma (natural pictures)."""
    planes = a.reshape(-1, 3).astype(np.float64)
    y, u, v = planes.T
    spread = max(y.std(), 1.0)
    return all(abs(c.mean() - 128) < 24 and c.std() < 0.5 * spread for c in (u, v))


def _aspect(h: int, w: int) -> str:
    return f"{w}x{h} (aspect {w / h:.2f})"


def check_sample(sample: Sample, port: ModelInput) -> tuple[list[Problem], np.ndarray | None]:
    """Problems of one fed array, and the float32 NCHW tensor it is (None when it cannot be one)."""
    a = sample.array
    if not port.image_like:
        return _plain(sample, port)
    c, (h, w) = int(port.shape[1]), port.hw
    want = _want(port)
    if sample.image_file:
        ih, iw = a.shape[:2]
        if (ih, iw) != (h, w):
            stretched = abs((iw / ih) / (w / h) - 1) > 0.05
            how = (f"resizing it stretches the aspect from {iw / ih:.2f} to {w / h:.2f}; letterbox or crop as in "
                   "training" if stretched else "resize it as in training")
            return [("size", f"{sample.source} is {_aspect(ih, iw)} but the model takes {_aspect(h, w)}", how)], None
        return [], None
    sq = _squeezed(a)
    if a.dtype == np.uint8 and c == 3 and sq == (h * 3 // 2, w) and h % 2 == 0:
        return [("nv12", f"{sample.source} is {_shape(a)}: an NV12 frame of {w}x{h} (Y plane {h}x{w}, then the "
                         f"interleaved UV plane {h // 2}x{w}), but the model takes {want}",
                 "convert it to RGB and normalize, or compile model.bin with --preprocess "
                 "nv12:model=rgb|bgr:mean=...:std=... so that the board takes the frame itself")], None
    if a.dtype == np.uint8 and c == 3 and sq == (h, w, c):
        if _is_yuv444(a):
            return [("yuv444", f"{sample.source} is {_shape(a)} with channels 1 and 2 centred on 128 and far "
                               f"flatter than channel 0: a YUV444 frame, but the model takes {want}",
                     "convert it to RGB and normalize, or compile model.bin with --preprocess "
                     "yuv444:model=rgb|bgr:mean=...:std=...")], None
        return [("dtype", f"{sample.source} is {_shape(a)}: uint8 pixels in NHWC, but the model takes {want}",
                 "transpose to NCHW, convert to float32 and normalize as in training")], None
    if a.dtype.kind not in "fiu":
        return [("dtype", f"{sample.source} holds {a.dtype} values, the model takes {want}", "give numbers")], None
    problems: list[Problem] = []
    x = a.reshape((1,) + a.shape) if a.ndim == 3 else a
    if x.ndim != 4:
        return [("shape", f"{sample.source} is {_shape(a)}, the model takes {want}",
                 f"feed a (1, {c}, {h}, {w}) tensor")], None
    if x.shape[1] != c and x.shape[3] == c:
        problems.append(("layout", f"{sample.source} is {_shape(a)}: NHWC (channels last), the model takes {want} "
                                   "(NCHW)", "transpose with x.transpose(0, 3, 1, 2)"))
        x = x.transpose(0, 3, 1, 2)
    if x.shape[1] != c:
        return problems + [("shape", f"{sample.source} is {_shape(a)} with {x.shape[1]} channels, the model "
                                     f"takes {want}", f"feed {c} channels")], None
    ih, iw = x.shape[2:]
    if (ih, iw) != (h, w):
        stretched = abs((iw / ih) / (w / h) - 1) > 0.05
        how = "stretches the aspect" if stretched else "keeps the aspect"
        return problems + [("size", f"{sample.source} is {_aspect(ih, iw)} but the model takes {_aspect(h, w)} "
                                    f"(a resize between them {how})",
                            f"resize to {w}x{h} in the pipeline as in training")], None
    problems += _dtype(sample, a, want)
    return problems, np.ascontiguousarray(x, dtype=np.float32)


def _dtype(sample: Sample, a: np.ndarray, want: str) -> list[Problem]:
    if a.dtype == np.float32:
        return []
    if a.dtype.kind == "f":
        fix = "cast to float32 (onnxruntime and the board's host side refuse other float types)"
    else:
        fix = "convert to float32 and normalize as in training"
    return [("dtype", f"{sample.source} holds {a.dtype} values, the model takes {want}", fix)]


def _plain(sample: Sample, port: ModelInput) -> tuple[list[Problem], np.ndarray | None]:
    """A non-image input: its shape (dynamic dimensions match anything) and dtype."""
    a, want = sample.array, _want(port)
    if sample.image_file or a.dtype.kind not in "fiu":
        return [("dtype", f"{sample.source} holds {a.dtype} values, the model takes {want}",
                 "feed the tensor the model takes")], None
    fits = a.ndim == len(port.shape) and all(d is None or d == s for d, s in zip(port.shape, a.shape))
    if not fits:
        return [("shape", f"{sample.source} is {_shape(a)}, the model takes {want}",
                 "feed the shape the model takes")], None
    return _dtype(sample, a, want), np.asarray(a, dtype=np.float32)
