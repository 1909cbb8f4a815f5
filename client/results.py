"""What a verification found: results that know whether they passed.

A run of ``qverify`` produces one :class:`VerifyResult`. It holds the *sides* that ran the
same inputs (``quant.onnx`` in onnxruntime, the ``board``, the host ``simulator``) and one
:class:`PairResult` per pair of sides, each with a :class:`TensorResult` per compared
tensor (the model outputs, and with ``-r`` every intermediate tensor both sides have).

``to_dict()`` gives the JSON report (schema: docs/report-schema.md); the JUnit and HTML
writers in :mod:`qverify.client.reports` read the same objects.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from qverify import __version__

PASSED, FAILED, MISMATCHED, ERROR = "PASSED", "FAILED", "MISMATCHED", "ERROR"
EXIT_OK, EXIT_INCONSISTENT, EXIT_BAD_INPUT, EXIT_INFRA = 0, 1, 2, 3
SCHEMA_VERSION = "1"


@dataclass
class TensorResult:
    """One tensor compared between the two sides of a pair (worst case over all frames)."""
    name: str  # program tensor name = the ONNX tensor holding these values
    kind: Literal["output", "layer", "input"]
    index: int  # position in execution order (0 = first program input)
    producer: str  # program node that writes it ("" for inputs)
    op: str  # ONNX op it implements ("" for inputs)
    placement: str  # "npu", "cpu" or "" (inputs)
    shape: list[int]
    elements: int
    scale: float | None  # LSB of the integer view; None for float tensors
    max_abs_diff: float
    within_digits: int  # elements with |a - b| <= 10^-digits
    exact: int  # integer view: elements equal in units of the scale
    off_by_one: int  # ... differing by exactly 1 LSB
    beyond_one: int  # ... differing by more than 1 LSB
    max_lsb: int  # largest difference in LSB (0 when bit-exact)
    cosine: float
    passed: bool
    reason: str  # one phrase: why it passed or failed
    layout_ok: bool = True  # aligned buffer consistent with the valid one (integer sides, aligned dumps)

    @property
    def digits_fraction(self) -> float:
        return self.within_digits / self.elements if self.elements else 1.0

    @property
    def exact_fraction(self) -> float:
        return self.exact / self.elements if self.elements else 1.0


@dataclass
class SideInfo:
    """One engine that ran the inputs."""
    label: str  # "quant.onnx" (the file name), "board", "simulator"
    kind: Literal["onnx", "board", "simulator"]
    path: str = ""  # model file it ran
    sha256: str = ""  # of that file
    detail: dict[str, Any] = field(default_factory=dict)  # ort_opt, agent/backend versions, target, latency...


@dataclass
class PairResult:
    """Two sides compared: bit-exact (integer vs integer) or within tolerance (ONNX vs integer)."""
    a: str
    b: str
    criterion: Literal["bit-exact", "tolerance"]
    status: str = PASSED  # PASSED, FAILED, MISMATCHED (the models do not belong together), ERROR
    message: str = ""  # for MISMATCHED / ERROR: what is wrong and what to do
    outputs: list[TensorResult] = field(default_factory=list)
    layers: list[TensorResult] = field(default_factory=list)  # intermediates, execution order (-r)
    first_divergent: TensorResult | None = None  # earliest tensor that fails, in execution order
    digits: int = 5

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    @property
    def tensors(self) -> list[TensorResult]:
        return sorted(self.outputs + self.layers, key=lambda t: t.index)

    def verdict_line(self) -> str:
        """``quant.onnx vs board: 2 outputs, consistent to 5 digits: PASSED``"""
        head = f"{self.a} vs {self.b}"
        where = ""
        if self.first_divergent is not None and not self.passed:
            fd = self.first_divergent
            where = f", first divergent layer {fd.producer or fd.name} ({fd.op or 'input'}) -> {fd.name}"
        if self.message:
            return f"{head}: {self.message}{where}: {self.status}"
        n = len(self.outputs)
        outputs = f"{n} output{'s' if n != 1 else ''}"
        layers = f", {len(self.layers)} layers" if self.layers else ""
        if self.criterion == "bit-exact":
            how = "bit-exact" if self.passed else "not bit-exact"
        else:
            full = all(t.within_digits == t.elements for t in self.outputs)
            how = (f"consistent to {self.digits} digits" if full and self.passed
                   else "consistent within rounding drift" if self.passed else "inconsistent")
        return f"{head}: {outputs}{layers}, {how}{where}: {self.status}"


@dataclass
class InputInfo:
    name: str  # program input
    onnx_name: str
    source: str  # file it came from, or "random (seed N)"
    board_shape: list[int]
    board_dtype: str
    onnx_shape: list[int]
    frame: int = 0


@dataclass
class Tolerances:
    """The verdict policy's knobs (docs/verdict.md); ``-c`` and the --max-* options set them."""
    digits: int = 5
    max_lsb: int = 16  # tolerance pairs, outputs: largest difference accepted as rounding drift
    min_cosine: float = 0.999  # tolerance pairs, outputs
    min_layer_cosine: float = 0.95  # tolerance pairs, intermediates (-r): only gross errors fail
    max_latency_ms: float | None = None  # board median frame latency budget


@dataclass
class VerifyResult:
    sides: list[SideInfo] = field(default_factory=list)
    pairs: list[PairResult] = field(default_factory=list)
    inputs: list[InputInfo] = field(default_factory=list)
    frames: int = 1
    tolerances: Tolerances = field(default_factory=Tolerances)
    dump_all: bool = False
    notes: list[str] = field(default_factory=list)  # warnings worth reading (e.g. model.bin from another file)
    latency_failure: str = ""  # set when the board exceeded --max-latency
    seconds: float = 0.0
    qverify_version: str = __version__

    @property
    def passed(self) -> bool:
        return bool(self.pairs) and all(p.passed for p in self.pairs) and not self.latency_failure

    @property
    def exit_code(self) -> int:
        if any(p.status == MISMATCHED for p in self.pairs):
            return EXIT_BAD_INPUT
        if any(p.status == ERROR for p in self.pairs):
            return EXIT_INFRA
        return EXIT_OK if self.passed else EXIT_INCONSISTENT

    @property
    def first_divergent(self) -> TensorResult | None:
        """The earliest divergent tensor, preferring bit-exact pairs (they have no drift to blur it)."""
        failing = [p for p in self.pairs if p.first_divergent is not None and not p.passed]
        failing.sort(key=lambda p: (p.criterion != "bit-exact", p.first_divergent.index))
        return failing[0].first_divergent if failing else None

    def to_dict(self) -> dict[str, Any]:
        def tensor(t: TensorResult) -> dict[str, Any]:
            return asdict(t)

        return {
            "schema": f"qverify.verify/{SCHEMA_VERSION}",
            "qverify_version": self.qverify_version,
            "passed": self.passed,
            "exit_code": self.exit_code,
            "seconds": round(self.seconds, 4),
            "frames": self.frames,
            "dump_all": self.dump_all,
            "tolerances": asdict(self.tolerances),
            "sides": [asdict(s) for s in self.sides],
            "inputs": [asdict(i) for i in self.inputs],
            "notes": list(self.notes),
            "latency_failure": self.latency_failure,
            "first_divergent": tensor(self.first_divergent) if self.first_divergent else None,
            "pairs": [{
                "a": p.a, "b": p.b, "criterion": p.criterion, "status": p.status, "passed": p.passed,
                "message": p.message, "verdict": p.verdict_line(), "digits": p.digits,
                "first_divergent": tensor(p.first_divergent) if p.first_divergent else None,
                "outputs": [tensor(t) for t in p.outputs],
                "layers": [tensor(t) for t in p.layers],
            } for p in self.pairs],
        }
