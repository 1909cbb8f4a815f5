"""The numbers of a timed call: latency distributions, and the inputs Perf makes up when given none."""
from __future__ import annotations

import math
import statistics

import grpc
import numpy as np

from qverify.agent.status import Abort
from qverify.v1 import board_agent_pb2 as pb


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))
    return ordered[index]


def distribution(values_us: list[float]) -> pb.Distribution:
    """Min, median, p99, max and mean of latencies in microseconds (empty when there are none)."""
    if not values_us:
        return pb.Distribution()
    return pb.Distribution(min_us=min(values_us), median_us=statistics.median(values_us),
                           p99_us=_percentile(values_us, 0.99), max_us=max(values_us),
                           mean_us=statistics.fmean(values_us))


def random_inputs(description, max_bytes: int) -> dict[str, np.ndarray]:
    """Seeded random inputs at the model's declared shapes, refused before allocating when over ``max_bytes``."""
    shapes = {tensor.name: tuple(tensor.feed_shape) for tensor in description.inputs}
    sizes = {t.name: math.prod(int(d) for d in shapes[t.name]) * np.dtype(t.dtype).itemsize
             for t in description.inputs}
    if sum(sizes.values()) > max_bytes:
        name = max(sizes, key=sizes.get)
        raise Abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the model declares {sum(sizes.values())} bytes of inputs (input '{name}' "
                    f"{list(shapes[name])} alone is {sizes[name]}), more than this agent's limit of {max_bytes} "
                    "(--max-input-size); raise the limit or check the model's input shapes")
    rng = np.random.default_rng(0)
    out = {}
    for tensor in description.inputs:
        shape = shapes[tensor.name]
        if np.issubdtype(tensor.dtype, np.integer):
            info = np.iinfo(tensor.dtype)
            out[tensor.name] = rng.integers(info.min, info.max + 1, shape, dtype=tensor.dtype)
        else:
            out[tensor.name] = rng.standard_normal(shape).astype(tensor.dtype)
    return out
