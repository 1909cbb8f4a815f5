"""Padding bars (letterbox) in what a pipeline feeds, judged with the model's response.

Input statistics find the bars: rows or columns at the frame's edges where every channel
holds one constant value, the same at every edge (114 or 0 in pixels, as letterbox
implementations pad), and give the content's aspect. Bars alone are no mistake (a detector
trained on letterboxed frames wants them), so a finding also needs the model's response:
it must be clearly more confident on the same content resized to fill the frame.
"""
from __future__ import annotations

import numpy as np

from qverify.client.accuracy.doctor_range import ModelInput
from qverify.client.accuracy.doctor_response import Responder, _compare, _prefers

MIN_BARS = 0.08  # share of the height or width the bars must cover together

Box = tuple[int, int, int, int]  # rows at the top, bottom, columns at the left, right


def bars(x: np.ndarray) -> tuple[Box, np.ndarray | None]:
    """The constant rows/columns at the edges of an NCHW frame, and their per-channel value.

    A line is a bar when each channel is constant along it (per-channel normalization maps a
    grey pad to a different value per channel) and equals the first bar's values."""
    img = np.asarray(x[0], dtype=np.float64)
    value: np.ndarray | None = None

    def flat(line: np.ndarray) -> bool:  # line: (C, L)
        nonlocal value
        first = line[:, :1]
        if not np.all(np.abs(line - first) <= 1e-6):
            return False
        if value is None:
            value = first[:, 0].copy()
        return bool(np.all(np.abs(first[:, 0] - value) <= 1e-6))

    h, w = img.shape[1:]
    top = next((i for i in range(h) if not flat(img[:, i, :])), h)
    bottom = next((i for i in range(h - top) if not flat(img[:, h - 1 - i, :])), 0)
    left = next((i for i in range(w) if not flat(img[:, :, i])), w)
    right = next((i for i in range(w - left) if not flat(img[:, :, w - 1 - i])), 0)
    return (top, bottom, left, right), value


def padded(box: Box, h: int, w: int) -> bool:
    """Bars that cover a letterbox's share of the frame, with content left between them."""
    top, bottom, left, right = box
    rows, cols = top + bottom, left + right
    return (rows >= MIN_BARS * h or cols >= MIN_BARS * w) and rows < h and cols < w


def stretch(x: np.ndarray, box: Box) -> np.ndarray:
    """The content inside the bars, resized (bilinear) to fill the frame."""
    top, bottom, left, right = box
    h, w = x.shape[2:]
    inner = x[:, :, top:h - bottom, left:w - right].astype(np.float32)
    ih, iw = inner.shape[2:]
    ys = np.clip((np.arange(h) + 0.5) * ih / h - 0.5, 0, ih - 1)
    xs = np.clip((np.arange(w) + 0.5) * iw / w - 0.5, 0, iw - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, ih - 1), np.minimum(x0 + 1, iw - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    rows = lambda r: inner[:, :, r][:, :, :, x0] * (1 - fx) + inner[:, :, r][:, :, :, x1] * fx  # noqa: E731
    return (rows(y0) * (1 - fy) + rows(y1) * fy).astype(np.float32)


def _pad_text(value: np.ndarray, port: ModelInput) -> str:
    """The bars' value, and the pixel it is under the calibrated range (pixels 0..255 span it)."""
    shown = ",".join(f"{v:.3g}" for v in value)
    if port.lo is None or port.hi is None or port.hi <= port.lo:
        return f"value {shown}"
    pixel = float(np.mean((value - port.lo) / (port.hi - port.lo) * 255))
    return f"value {shown}, about pixel {pixel:.0f} under the calibrated range"


def letterbox_problem(responder: Responder, port: ModelInput, frames: list[np.ndarray],
                      others: dict[str, np.ndarray]) -> tuple[str, str] | None:
    """(evidence, fix) when most frames carry padding bars and the model clearly prefers the
    content stretched to fill the frame; None otherwise (no bars, or the model does not care)."""
    h, w = port.hw
    found = [(x, *bars(x)) for x in frames]
    hits = [(x, box, value) for x, box, value in found if padded(box, h, w)]
    if not hits or len(hits) < len(frames) / 2:
        return None
    stats = _compare(responder, port.name, [x for x, _, _ in hits], [stretch(x, b) for x, b, _ in hits], others)
    if not _prefers(stats):
        return None
    mean_a, mean_b, better, differ, _ = stats
    _, (top, bottom, left, right), value = hits[0]
    ch, cw = h - top - bottom, w - left - right
    return (f"padding bars (letterbox) in {len(hits)} of {len(frames)} frames, e.g. rows {top}+{bottom} of {h} and "
            f"columns {left}+{right} of {w} constant ({_pad_text(value, port)}), content {cw}x{ch} "
            f"(aspect {cw / ch:.2f}) in a {w}x{h} frame (aspect {w / h:.2f}); {responder.label} is more confident "
            f"on the content resized to fill ({mean_b:.2f} vs {mean_a:.2f} mean certainty, {better} of {differ} "
            "frames)",
            f"resize the picture to {w}x{h} as in training instead of letterboxing it")
