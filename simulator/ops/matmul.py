"""MatMul / Gemm with constant weights on the integer path.

Constants: weight int8 (K, N) or batched (..., K, N), bias int32 (N; or (M, N) for a Gemm
whose bias varies along the rows), m0 int32 (N), shift int32 (N).
Attrs: x_zp, w_zp (0 for symmetric weights; a list of N values for MatMulInteger with
per-column zero points), y_zp, qmin, qmax, output_int32.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from qverify.simulator.gemm import exact_matmul
from qverify.simulator.ops._common import centered, requant, saturate_int32
from qverify.simulator.ops.registry import register

if TYPE_CHECKING:
    from qverify.simulator.executor import LayerStats
    from qverify.simulator.program import NodeView


@register("MatMul")
def matmul(node: NodeView, inputs: list[np.ndarray], stats: LayerStats) -> list[np.ndarray]:
    a = node.attrs
    w, bias, m0, shift = node.consts
    w_zp = a.get("w_zp", 0)
    if np.ndim(w_zp):  # one zero point per output column (MatMulInteger)
        w_zp = np.asarray(w_zp, dtype=np.int64)
        wf = w.astype(np.float32) - w_zp.astype(np.float32)
    else:
        wf = centered(w, w_zp)
    acc = exact_matmul(centered(inputs[0], a["x_zp"]), wf, 255, 128 + int(np.abs(w_zp).max()))
    acc += bias.astype(np.int64)
    if a.get("output_int32"):
        return [saturate_int32(acc, stats).astype(np.int32)]
    return [requant(acc, m0, shift, a["y_zp"], stats, a["qmin"], a["qmax"])]
