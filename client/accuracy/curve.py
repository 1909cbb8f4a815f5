"""The cumulative error curve: the output metric as the k most sensitive nodes are left in float.

For each ranking (node, weight-only, activation-only sensitivity) the k = 0..N most
sensitive nodes have that kind of quantization taken out together; k = 0 is quant.onnx
(fake-quantized), k = N of the node curve is the float model. The smallest k whose cosine
reaches the target becomes the suggestion: the nodes to keep in float, as the
``qverify compile --run-on-cpu`` command that does it for a board.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from qverify.client.accuracy.sensitivity import KINDS, SensitivityResult, VariantRunner


@dataclass
class Curve:
    kind: str
    nodes: list[str]  # in ranking order
    points: list[dict[str, float]] = field(default_factory=list)  # k -> every metric


@dataclass
class Suggestion:
    target: float
    reached: bool
    k: int
    cosine: float
    nodes: list[str]

    def command(self, quant_path: Path, float_path: Path | None = None, output: str = "model.bin") -> str:
        """The compile command that runs the suggested nodes in float on the board's CPU (with
        ``float_path``: as float islands, float weights and float32 between them, which is what
        the curve measured and ``--apply`` compiles)."""
        nodes = ",".join(self.nodes)
        islands = f" --float-model {shlex.quote(str(float_path))}" if float_path is not None else ""
        return (f"qverify compile {shlex.quote(str(quant_path))} --run-on-cpu {shlex.quote(nodes)}{islands} "
                f"-o {shlex.quote(output)}")


def cumulative_sets(result: SensitivityResult, runner: VariantRunner, kind: str) -> tuple[list[str], list[frozenset]]:
    """The ranking's node names and, for k = 0..N, the switches off with its top k nodes."""
    by_name = {n.name: n for n in runner.models.switched.nodes}
    ranked = [by_name[r.name] for r in result.ranking(kind)]
    sets, off = [frozenset()], set()
    for node in ranked:
        off.update(node.switches(kind))
        sets.append(frozenset(off))
    return [n.name for n in ranked], sets


def curves(result: SensitivityResult, runner: VariantRunner,
           progress: Callable[[int], object] | None = None) -> list[Curve]:
    """The three cumulative curves (results of variants already run are reused)."""
    import contextlib

    plans = {kind: cumulative_sets(result, runner, kind) for kind in KINDS}
    todo = [s for _, sets in plans.values() for s in sets if s not in runner.results]
    bar = progress(len(dict.fromkeys(todo))) if progress else contextlib.nullcontext()
    with bar:
        runner.measure(todo, getattr(bar, "step", None))
    return [Curve(kind, names, [runner.results[s] for s in sets]) for kind, (names, sets) in plans.items()]


def suggest(curve: Curve, target: float) -> Suggestion:
    """The smallest k whose cosine reaches ``target``; when none does, the best k."""
    cosines = [p["cosine"] for p in curve.points]
    for k, value in enumerate(cosines):
        if value >= target:
            return Suggestion(target, True, k, value, curve.nodes[:k])
    best = max(range(len(cosines)), key=lambda k: (cosines[k], -k))
    return Suggestion(target, False, best, cosines[best], curve.nodes[:best])
