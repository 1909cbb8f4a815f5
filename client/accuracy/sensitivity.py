"""Which quantized nodes cost the accuracy: each node's quantization taken out alone.

For every quantized node of quant.onnx three variants run on the same inputs — the node in
float (**node**: its weight and activation QDQ pairs out), only its weights in float
(**weight**), only its activation inputs in float (**activation**) — and the model output
is measured against the float model's output. A variant that changes nothing (the weight
variant of a node without weights; the node variant of a node with one kind of pair, which
equals that kind's variant) is not run twice: results are kept by the set of switches off.

All variants run on the switchable graph (:mod:`qverify.client.accuracy.qdq_edit`) cut
into segments (:mod:`qverify.client.accuracy.segments`): the all-quantized run of each frame
is kept, and a variant reruns only from the first segment its switches reach, the rest of the
graph in its cheaper all-quantized copy. Variants run on parallel worker threads
(onnxruntime releases the GIL while it runs).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from qverify.client.accuracy.debug_models import DebugModels
from qverify.client.accuracy.segments import DEFAULT_SEGMENTS, SegmentedModel

KINDS = ("node", "weight", "activation")
# metric -> whether higher is better
METRICS = {"cosine": True, "mse": False, "l1": False, "top1": True}


def metric_values(reference: list[list[np.ndarray]], measured: list[list[np.ndarray]]) -> dict[str, float]:
    """Every metric of ``measured`` against ``reference`` (frames x outputs): cosine is the worst
    output's cosine over all frames, mse and l1 the mean over outputs, top1 the share of rows
    of the first output whose argmax (last axis) agrees."""
    cosines, mses, l1s = [], [], []
    for o in range(len(reference[0])):
        a = np.concatenate([np.ravel(f[o]) for f in reference]).astype(np.float64)
        b = np.concatenate([np.ravel(f[o]) for f in measured]).astype(np.float64)
        na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
        cosines.append(float(a @ b) / (na * nb) if na and nb else float(na == nb))
        mses.append(float(np.mean((a - b) ** 2)))
        l1s.append(float(np.mean(np.abs(a - b))))
    agree = total = 0
    for ref, got in zip(reference, measured):
        r, g = np.asarray(ref[0]), np.asarray(got[0])
        if r.ndim == 0:
            continue
        r_top, g_top = np.argmax(r, axis=-1), np.argmax(g, axis=-1)
        agree += int(np.count_nonzero(r_top == g_top))
        total += r_top.size
    return {"cosine": min(cosines), "mse": float(np.mean(mses)), "l1": float(np.mean(l1s)),
            "top1": agree / total if total else 1.0}


def improvement(metric: str, value: float, baseline: float) -> float:
    """How much better ``value`` is than ``baseline`` (positive: better), for ``metric``."""
    return value - baseline if METRICS[metric] else baseline - value


class VariantRunner:
    """Runs variants (sets of switches off) of the switchable graph over all frames, once each."""

    def __init__(self, models: DebugModels, frames: list[dict[str, np.ndarray]], workers: int | None = None,
                 segments: int = DEFAULT_SEGMENTS) -> None:
        self.models = models
        self.frames = frames
        self.workers = workers or min(2, os.cpu_count() or 1)
        self.graph = SegmentedModel(models.switched.model_bytes, segments, self.workers)
        self.reference = [models.session(models.float_model.SerializeToString()).run(None, f) for f in frames]
        on = models.switched.feed()
        self.cached = [self.graph.cache(f, on) for f in frames]  # the all-quantized run, once per frame
        self.results: dict[frozenset[int], dict[str, float]] = {}
        self.runs = 0

    def _run(self, switches: frozenset[int]) -> dict[str, float]:
        feed = self.models.switched.feed(switches)
        touched = self.graph.touched(switches)
        outputs = [self.graph.run(cached, feed, touched) for cached in self.cached]
        return metric_values(self.reference, outputs)

    def measure(self, variants: list[frozenset[int]], on_done: Callable[[], None] | None = None) -> None:
        """Run each variant not measured yet (in parallel); results land in ``self.results``."""
        todo = list(dict.fromkeys(v for v in variants if v not in self.results))
        if not todo:
            return
        with ThreadPoolExecutor(self.workers) as pool:
            for variant, result in zip(todo, pool.map(self._run, todo)):
                self.results[variant] = result
                self.runs += 1
                if on_done is not None:
                    on_done()

    def value(self, switches: frozenset[int] | set[int], metric: str) -> float:
        return self.results[frozenset(switches)][metric]


@dataclass
class NodeSensitivity:
    """One quantized node's three variants: metric values (None: it has no such pairs)."""
    name: str
    op: str
    index: int
    values: dict[str, float | None] = field(default_factory=dict)  # kind -> metric value
    gains: dict[str, float | None] = field(default_factory=dict)  # kind -> improvement over all-quantized


@dataclass
class SensitivityResult:
    metric: str
    baseline: dict[str, float]  # all quantized: every metric
    nodes: list[NodeSensitivity]
    runs: int  # variants actually run
    seconds: float
    inputs: str

    def ranking(self, kind: str = "node") -> list[NodeSensitivity]:
        """Nodes with a ``kind`` variant, most sensitive first (largest improvement when in float)."""
        ranked = [n for n in self.nodes if n.gains.get(kind) is not None]
        return sorted(ranked, key=lambda n: (-n.gains[kind], n.index))


def analyse(runner: VariantRunner, metric: str, progress: Callable[[int], object] | None = None) -> SensitivityResult:
    """Every node's node, weight and activation sensitivity, by ``metric``.

    ``progress(total)`` returns a context manager with ``step()`` (e.g. :class:`~qverify.client.views.timed_progress`)."""
    import contextlib
    import time

    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric}")
    start = time.monotonic()
    nodes = runner.models.switched.nodes
    wanted = [frozenset()] + [frozenset(n.switches(k)) for n in nodes for k in KINDS if n.switches(k)]
    unique = [v for v in dict.fromkeys(wanted) if v not in runner.results]
    bar = progress(len(unique)) if progress else contextlib.nullcontext()
    with bar:
        runner.measure(unique, getattr(bar, "step", None))
    baseline = runner.results[frozenset()]
    rows = []
    for n in nodes:
        row = NodeSensitivity(n.name, n.op, n.index)
        for kind in KINDS:
            switches = n.switches(kind)
            if not switches:
                row.values[kind] = row.gains[kind] = None
                continue
            value = runner.value(switches, metric)
            row.values[kind] = value
            row.gains[kind] = improvement(metric, value, baseline[metric])
        rows.append(row)
    return SensitivityResult(metric, baseline, rows, len(unique), time.monotonic() - start, "")
