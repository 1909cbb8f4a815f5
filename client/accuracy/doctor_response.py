"""The model's own response as evidence: channel order (and, in :mod:`.doctor_letterbox`, padding bars).

A model fed the way it was trained answers with confidence; fed swapped channels or a
squeezed, padded picture, it usually hesitates. The responder is the float model when one
is given (the reference for training-time behaviour), else quant.onnx. A finding needs a
clear margin over the frames, so a model that does not care (grey text pages look the same
in RGB and BGR) gets no finding.
"""
from __future__ import annotations

import numpy as np

MARGIN = 0.05  # mean confidence the alternative must gain
MAJORITY = 2 / 3  # share of the frames that respond differently which must prefer it


class Responder:
    """One onnxruntime session of a model with one image input; the others get the given feeds."""

    def __init__(self, path, label: str) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.label = label

    def confidence(self, name: str, x: np.ndarray, others: dict[str, np.ndarray]) -> float | None:
        """1 - normalized entropy of the outputs (probabilities, or softmax of logits); None when unknown."""
        try:
            outputs = self.session.run(None, {**others, name: x.astype(np.float32)})
        except Exception:  # onnxruntime raises its own exception types for a feed it refuses
            return None
        scores = [s for s in (_certainty(np.asarray(o, dtype=np.float64)) for o in outputs) if s is not None]
        return float(np.mean(scores)) if scores else None


def _certainty(out: np.ndarray) -> float | None:
    if out.size == 0 or not np.all(np.isfinite(out)):
        return None
    if out.min() >= 0 and out.max() <= 1:
        if out.ndim >= 2 and out.shape[-1] > 1 and np.allclose(out.sum(-1), 1, atol=1e-3):
            return _entropy_certainty(out)
        return float(np.mean(np.abs(2 * out - 1)))  # per-element probabilities (e.g. a detector's map)
    if out.ndim >= 2 and out.shape[-1] > 1:
        e = np.exp(out - out.max(-1, keepdims=True))
        return _entropy_certainty(e / e.sum(-1, keepdims=True))
    return None


def _entropy_certainty(p: np.ndarray) -> float:
    k = p.shape[-1]
    h = -np.sum(p * np.log(np.clip(p, 1e-12, 1)), axis=-1) / np.log(k)
    return float(1 - np.mean(h))


def _compare(responder: Responder, name: str, given: list[np.ndarray], other: list[np.ndarray],
             others: dict[str, np.ndarray]) -> tuple[float, float, int, int, int] | None:
    """(mean confidence given, mean confidence alternative, frames preferring it, frames that differ, frames)."""
    a, b = [], []
    for x, y in zip(given, other):
        ca, cb = responder.confidence(name, x, others), responder.confidence(name, y, others)
        if ca is None or cb is None:
            return None
        a.append(ca)
        b.append(cb)
    differ = [(p, q) for p, q in zip(a, b) if abs(p - q) > 1e-3]
    better = sum(1 for p, q in differ if q > p)
    return float(np.mean(a)), float(np.mean(b)), better, len(differ), len(a)


def _prefers(stats: tuple[float, float, int, int, int] | None) -> bool:
    if stats is None:
        return False
    mean_a, mean_b, better, differ, frames = stats
    # one frame of several responding is no pattern (grey frames do not respond to a swap at all)
    return differ >= min(2, frames) and mean_b >= mean_a + MARGIN and better >= MAJORITY * differ


def channel_order_problem(responder: Responder, name: str, frames: list[np.ndarray],
                          others: dict[str, np.ndarray]) -> tuple[str, str] | None:
    """(evidence, fix) when the model is clearly more confident on channel-swapped frames (NCHW, 3 channels)."""
    swapped = [np.ascontiguousarray(x[:, ::-1]) for x in frames]
    stats = _compare(responder, name, frames, swapped, others)
    if not _prefers(stats):
        return None
    mean_a, mean_b, better, differ, _ = stats
    # The response is the only evidence: input statistics cannot tell RGB from BGR (a blue sky
    # and an orange cat are both natural pictures), and a model that does not care is not accused.
    return (f"channel order looks swapped (RGB vs BGR), judged by the model's response alone: {responder.label} is "
            "more confident on the channel-swapped "
            f"input ({mean_b:.2f} vs {mean_a:.2f} mean certainty, {better} of {differ} frames)",
            "swap the channels (cv2 loads BGR, PIL loads RGB) to the order the model was trained on")
