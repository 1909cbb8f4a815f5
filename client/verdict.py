"""The verdict policy: when do two sides agree? (documented in docs/verdict.md)

Two kinds of pairs:

* **bit-exact** (board vs simulator, two integer pipelines): every compared tensor must be
  identical, code for code, and a board's aligned buffers must hold exactly the valid
  tensor padded with the zero point. The first tensor in execution order that differs is
  the first divergent layer: everything before it is identical, so its producer is where
  the board goes wrong.
* **tolerance** (quant.onnx vs an integer side): onnxruntime requantizes in float, the
  integer pipeline in fixed point, so 1-LSB differences appear and accumulate with depth.
  A model output agrees when every element is within 10^-N (``-c N``), or when the
  difference is rounding drift: at most ``max_lsb`` LSB anywhere and cosine similarity
  at least ``min_cosine``. Intermediate tensors (``-r``) drift more the deeper they are,
  so they fail only on gross errors (cosine below ``min_layer_cosine``), which names the
  first layer that is really wrong (wrong weights, scales, preprocessing) without crying
  wolf on accumulated rounding.

Comparison functions are pluggable: :data:`CRITERIA` maps a criterion name to the function
that judges one tensor.

The board is also compared with itself (:class:`BoardRunChecker`): for one input, its plain
run (no dumps) and its dumping run (``-r``) must give the same outputs, the outputs a
dumping run returns must be its own dumps of them, and ``--repeat N`` plain runs must be
identical — bit for bit, since a board runs a pure function of (program, inputs).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from qverify.client.results import (
    FAILED, NONDETERMINISTIC, PASSED, PLAIN_VS_DUMP, RETURNED_VS_DUMPED, BoardFinding, PairResult, TensorResult,
    Tolerances,
)
from qverify.client.sides import Observed, SideOutput
from qverify.simulator.program import Program

Judge = Callable[[TensorResult, Tolerances, bool], tuple[bool, str]]


def measure(name: str, a: Observed, b: Observed, scale: float | None, digits: int) -> dict:
    """The figures of one tensor pair: digits agreement, integer view, cosine."""
    if a.codes is not None and b.codes is not None and scale:
        return _measure_codes(name, a, b, scale, digits)
    va, vb = a.values.ravel(), b.values.ravel()
    if va.shape != vb.shape:
        raise ValueError(f"{name}: {va.size} vs {vb.size} elements")
    diff = np.abs(va - vb)
    if scale:
        lsb = np.rint(diff / scale)
    else:  # float tensors: "exact" means equal, anything else counts as beyond one LSB
        lsb = np.where(diff == 0, 0, 2)
    return dict(elements=int(va.size), max_abs_diff=float(diff.max(initial=0.0)),
                within_digits=int(np.count_nonzero(diff <= 10.0 ** (-digits) * (1 + 1e-9))),
                exact=int(np.count_nonzero(lsb == 0)), off_by_one=int(np.count_nonzero(lsb == 1)),
                beyond_one=int(np.count_nonzero(lsb > 1)), max_lsb=int(lsb.max(initial=0)), cosine=_cosine(va, vb))


def _cosine(va: np.ndarray, vb: np.ndarray) -> float:
    na, nb = float(np.sqrt(float(va @ va))), float(np.sqrt(float(vb @ vb)))
    if na and nb:
        return float(np.clip(float(va @ vb) / (na * nb), -1.0, 1.0))
    return 1.0 if na == nb else 0.0


def _measure_codes(name: str, a: Observed, b: Observed, scale: float, digits: int) -> dict:
    """Both sides hold int8 codes of the same tensor: everything follows from the code differences."""
    ca, cb = a.codes.ravel(), b.codes.ravel()
    if ca.shape != cb.shape:
        raise ValueError(f"{name}: {ca.size} vs {cb.size} elements")
    n = int(ca.size)
    if np.array_equal(ca, cb):
        return dict(elements=n, max_abs_diff=0.0, within_digits=n, exact=n, off_by_one=0, beyond_one=0, max_lsb=0,
                    cosine=1.0)
    d = np.subtract(ca, cb, dtype=np.int16)
    np.abs(d, out=d)
    exact = n - int(np.count_nonzero(d))
    off_by_one = int(np.count_nonzero(d == 1))
    max_lsb = int(d.max())
    k = int(10.0 ** (-digits) * (1 + 1e-9) / scale)  # codes apart that still agree to N digits
    within = exact if k == 0 else int(np.count_nonzero(d <= k))
    zp = a.zero_point
    return dict(elements=n, max_abs_diff=float(max_lsb * scale), within_digits=within, exact=exact,
                off_by_one=off_by_one, beyond_one=n - exact - off_by_one, max_lsb=max_lsb,
                cosine=_cosine(ca.astype(np.float64) - zp, cb.astype(np.float64) - zp))


def judge_bit_exact(t: TensorResult, tol: Tolerances, is_output: bool) -> tuple[bool, str]:
    if not t.layout_ok:
        return False, "aligned buffer inconsistent"
    if t.exact == t.elements and t.max_abs_diff == 0.0:
        return True, "bit-exact"
    return False, f"{t.elements - t.exact} of {t.elements} elements differ (max {t.max_lsb} LSB)"


def judge_tolerance(t: TensorResult, tol: Tolerances, is_output: bool) -> tuple[bool, str]:
    if t.within_digits == t.elements:
        return True, f"all within 1e-{tol.digits}"
    drift = f"max {t.max_lsb} LSB, {t.beyond_one} > 1 LSB, cosine {t.cosine:.6f}"
    if is_output:
        if t.max_lsb <= tol.max_lsb and t.cosine >= tol.min_cosine:
            return True, f"rounding drift ({drift})"
        return False, f"beyond rounding drift ({drift}; allowed max {tol.max_lsb} LSB, cosine >= {tol.min_cosine})"
    if t.cosine >= tol.min_layer_cosine:
        return True, f"drift ({drift})"
    return False, f"gross error (cosine {t.cosine:.4f} < {tol.min_layer_cosine}; max {t.max_lsb} LSB)"


CRITERIA: dict[str, Judge] = {"bit-exact": judge_bit_exact, "tolerance": judge_tolerance}


def lookup_anchors(program: Program) -> dict[str, tuple[str, np.ndarray]]:
    """Outputs written by a lookup table (Sigmoid, Tanh, Softmax-free heads...) -> (its int8
    input, the 256-entry table).

    A steep table amplifies: one LSB of drift at a Sigmoid's input can move its output by
    dozens of output LSB. Such an output is judged through the table: each element must be
    what the table gives for an input within the allowed drift of the reference's input.
    """
    anchors: dict[str, tuple[str, np.ndarray]] = {}
    producers = {out: node for node in program.nodes for out in node.outputs}
    for tensor in program.outputs:
        node = producers.get(tensor.name)
        if node is None or node.op != "Lut" or not node.inputs or not tensor.quantized:
            continue
        source = program.tensors.get(node.inputs[0])
        if source is not None and source.quantized and node.consts:
            anchors[tensor.name] = (source.name, np.asarray(node.consts[0], dtype=np.int8))
    return anchors


def as_codes(observed: Observed, tensor) -> Observed:
    """The int8 codes of a quantized tensor a side gave as float (a dequantized graph output)."""
    if observed.codes is not None:
        return observed
    codes = np.clip(np.rint(observed.values / tensor.scale) + tensor.zero_point, -128, 127).astype(np.int8)
    return Observed(observed.values, codes, scale=tensor.scale, zero_point=tensor.zero_point)


def judge_through_table(out_a: Observed, out_b: Observed, in_a: Observed, in_b: Observed, table: np.ndarray,
                        tol: Tolerances) -> tuple[bool, str]:
    """``out_b`` is consistent with ``out_a`` if the inputs agree as outputs must, and every
    element of ``out_b`` is the table's value for an input within that drift of ``in_a`` (±1 LSB)."""
    figures = _measure_codes("input", in_a, in_b, in_a.scale, tol.digits)
    if figures["max_lsb"] > tol.max_lsb or figures["cosine"] < tol.min_cosine:
        return False, (f"beyond rounding drift, and so is its lookup table's input (max {figures['max_lsb']} LSB, "
                       f"cosine {figures['cosine']:.6f})")
    k = max(1, figures["max_lsb"])
    ref = in_a.codes.ravel().astype(np.int16)
    lo = np.full(ref.shape, 127, dtype=np.int16)
    hi = np.full(ref.shape, -128, dtype=np.int16)
    for shift in range(-k, k + 1):
        value = table[np.clip(ref + shift, -128, 127) + 128].astype(np.int16)
        np.minimum(lo, value, out=lo)
        np.maximum(hi, value, out=hi)
    got = out_b.codes.ravel().astype(np.int16)
    outside = int(np.count_nonzero((got < lo - 1) | (got > hi + 1)))
    if outside:
        return False, f"{outside} elements are not what the lookup table gives for their input (±{k} LSB)"
    return True, (f"drift amplified by a steep lookup table; its input agrees (max {figures['max_lsb']} LSB, "
                  f"cosine {figures['cosine']:.6f})")


def tensor_order(program: Program) -> dict[str, tuple[int, str, str, str]]:
    """Program tensor -> (execution index, producer, ONNX op, placement)."""
    order: dict[str, tuple[int, str, str, str]] = {}
    for t in program.inputs:
        order[t.name] = (len(order), "", "", "")
    for node in program.nodes:
        for out in node.outputs:
            order.setdefault(out, (len(order), node.name, node.onnx_op, "cpu" if node.on_cpu else "npu"))
    return order


def merge(old: TensorResult | None, new: TensorResult) -> TensorResult:
    """Worst case over frames: counts add up, extremes are kept."""
    if old is None:
        return new
    old.elements += new.elements
    old.within_digits += new.within_digits
    old.exact += new.exact
    old.off_by_one += new.off_by_one
    old.beyond_one += new.beyond_one
    old.max_abs_diff = max(old.max_abs_diff, new.max_abs_diff)
    old.max_lsb = max(old.max_lsb, new.max_lsb)
    old.cosine = min(old.cosine, new.cosine)
    old.layout_ok = old.layout_ok and new.layout_ok
    if old.passed and not new.passed:
        old.passed, old.reason = False, new.reason
    return old


class PairComparer:
    """Accumulates one pair's comparison over frames."""

    def __init__(self, a: str, b: str, criterion: str, program: Program, tolerances: Tolerances) -> None:
        self.pair = PairResult(a, b, criterion, digits=tolerances.digits)
        self.program = program
        self.tol = tolerances
        self.judge = CRITERIA[criterion]
        self.order = tensor_order(program)
        self.outputs = [t.name for t in program.outputs]
        self.anchors = lookup_anchors(program) if criterion == "tolerance" else {}
        self._results: dict[str, TensorResult] = {}

    def add_frame(self, a: SideOutput, b: SideOutput, dump_all: bool) -> None:
        names = list(self.outputs)  # a lookup table's input (extra) is only consulted, not reported
        if dump_all:
            names += [n for n in a.tensors if n in b.tensors and n not in self.outputs]
        for name in names:
            if name not in a.tensors or name not in b.tensors:
                continue
            tensor = self.program.tensors[name]
            oa, ob = a.tensors[name], b.tensors[name]
            figures = measure(name, oa, ob, tensor.scale if tensor.quantized else None, self.tol.digits)
            index, producer, op, placement = self.order.get(name, (len(self.order), "", "", ""))
            is_output = name in self.outputs
            kind = "output" if is_output else ("input" if not producer else "layer")
            problem = oa.layout_problem or ob.layout_problem
            result = TensorResult(name=name, kind=kind, index=index, producer=producer, op=op,
                                  placement=placement, shape=list(tensor.shape), scale=tensor.scale or None,
                                  passed=True, reason="", layout_ok=not problem, **figures)
            passed, reason = self.judge(result, self.tol, is_output)
            anchor = self.anchors.get(name) if is_output and not passed else None
            if anchor and anchor[0] in a.tensors and anchor[0] in b.tensors:
                source = self.program.tensors[anchor[0]]
                passed, reason = judge_through_table(
                    as_codes(oa, tensor), as_codes(ob, tensor), as_codes(a.tensors[anchor[0]], source),
                    as_codes(b.tensors[anchor[0]], source), anchor[1], self.tol)
            result.passed, result.reason = passed, (problem if problem else reason)
            self._results[name] = merge(self._results.get(name), result)

    def finish(self) -> PairResult:
        pair = self.pair
        ordered = sorted(self._results.values(), key=lambda t: t.index)
        pair.outputs = [t for t in ordered if t.kind == "output"]
        pair.layers = [t for t in ordered if t.kind != "output"]
        missing = [n for n in self.outputs if n not in self._results]
        failing = [t for t in ordered if not t.passed]
        pair.first_divergent = failing[0] if failing else None
        if missing:
            pair.status, pair.message = FAILED, f"output {missing[0]} missing on one side"
        else:
            pair.status = FAILED if failing else PASSED
        return pair


# ----------------------------------------------------------------------------- the board vs itself


def run_difference(a: Observed | None, b: Observed | None, tensor) -> tuple[int, int, int | None, float, str] | None:
    """How two runs' copies of one tensor differ, bit for bit: ``None`` when identical, else
    (elements that differ, elements, max LSB or None for a float tensor, max |d|, detail)."""
    if a is None or b is None:
        return 0, 0, None, float("nan"), "missing from one of the runs"
    if tensor.quantized and a.codes is not None and b.codes is not None:
        ca, cb = a.codes.ravel(), b.codes.ravel()
        if ca.shape != cb.shape:
            return max(ca.size, cb.size), max(ca.size, cb.size), None, float("nan"), \
                f"{ca.size} vs {cb.size} elements"
        if np.array_equal(ca, cb):
            return None
        d = np.abs(np.subtract(ca, cb, dtype=np.int16))
        lsb = int(d.max())
        return int(np.count_nonzero(d)), int(ca.size), lsb, float(lsb * tensor.scale), ""
    va = np.ascontiguousarray(a.values, dtype=np.float64).ravel()
    vb = np.ascontiguousarray(b.values, dtype=np.float64).ravel()
    if va.shape != vb.shape:
        return max(va.size, vb.size), max(va.size, vb.size), None, float("nan"), f"{va.size} vs {vb.size} elements"
    differ = va.view(np.uint64) != vb.view(np.uint64)  # bit for bit: -0.0 is not 0.0, NaN payloads count
    count = int(np.count_nonzero(differ))
    if not count:
        return None
    diff = np.abs(va[differ] - vb[differ])
    largest = float(np.nanmax(diff)) if not np.isnan(diff).all() else float("nan")
    return count, int(va.size), None, largest, ""


class BoardRunChecker:
    """Compares the board's runs of each frame with each other, bit for bit; collects findings."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self.outputs = [t.name for t in program.outputs]
        self.findings: list[BoardFinding] = []

    def _check(self, kind: str, frame: int, a: Observed | None, b: Observed | None, name: str,
               repeat: int = 0) -> None:
        difference = run_difference(a, b, self.program.tensors[name])
        if difference is None:
            return
        elements, total, max_lsb, max_abs, detail = difference
        message = BoardFinding.describe(kind, frame, name, elements, total, max_lsb, max_abs, repeat, detail)
        self.findings.append(BoardFinding(kind, frame, name, elements, total, max_lsb, max_abs, repeat, message))

    def add_frame(self, frame: int, dumping: SideOutput | None, plains: list[SideOutput]) -> None:
        """``dumping``: the run that sent dumps (None if there was none); ``plains``: the runs without
        dumps, in order. Outputs are compared as the board returned them, except that a dumping
        run's outputs are the values the pairs checked (its dumps, with -r)."""
        for name in self.outputs:
            if dumping is not None:
                if plains:
                    self._check(PLAIN_VS_DUMP, frame, plains[0].returned.get(name), dumping.tensors.get(name), name)
                if name in dumping.dumped:
                    self._check(RETURNED_VS_DUMPED, frame, dumping.returned.get(name), dumping.tensors.get(name), name)
            for repeat, plain in enumerate(plains[1:], start=1):
                self._check(NONDETERMINISTIC, frame, plains[0].returned.get(name), plain.returned.get(name), name,
                            repeat)
