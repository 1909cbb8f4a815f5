"""What a verification found: results that know whether they passed.

A run of ``qverify`` produces one :class:`VerifyResult`. It holds the *sides* that ran the
same inputs (``quant.onnx`` in onnxruntime, the ``board``, the host ``simulator``) and one
:class:`PairResult` per pair of sides, each with a :class:`TensorResult` per compared
tensor (the model outputs, and with ``-r`` every intermediate tensor both sides have).

Besides the pairs, the board's own runs are checked against each other (``-r``, ``--repeat``):
a board must give the same outputs with and without dumps, and for the same input every
time. Each difference is a :class:`BoardFinding`.

``to_dict()`` gives the JSON report (schema: docs/report-schema.md); the JUnit and HTML
writers in :mod:`qverify.client.reports` read the same objects.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from qverify import __version__
from qverify.client.float_results import FloatReference

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
    label: str  # "quant.onnx" (the file name), "board", "simulator", the float model's file name
    kind: Literal["onnx", "board", "simulator", "float"]
    path: str = ""  # model file it ran
    sha256: str = ""  # of that file
    detail: dict[str, Any] = field(default_factory=dict)  # ort_opt, agent/backend versions, target, latency...


@dataclass
class IsolatedLayer:
    """One layer of the board fed the reference's own inputs, compared with the reference's output
    for that layer (worst frame); see :mod:`qverify.client.isolation`."""
    tensor: str
    node: str
    op: str  # program op (Conv, Lut, Reshape...)
    onnx_op: str
    kind: str  # the bound family: exact, lookup, add, requantizing, cpu
    index: int  # position of the tensor in execution order
    group: str = ""  # "" when the layer ran alone, else "first..last" of the nodes run together
    elements: int = 0
    off_by_one: int = 0
    beyond_one: int = 0
    max_lsb: int = 0
    bias: float = 0.0  # mean signed difference in LSB (board - reference)
    cosine: float = 1.0
    bound: str = ""
    passed: bool = True
    reason: str = ""


DECIDED_BY_OUTPUTS, DECIDED_BY_ISOLATION, DECIDED_BY_TWIN = "outputs", "isolation", "bit-exact twin"


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
    # Which path gave the verdict: the output rules (fast path), isolation (every layer fed the
    # reference's inputs), or the bit-exact twin. Isolation decides tolerance pairs when it ran.
    decided_by: str = ""
    isolation: list[IsolatedLayer] = field(default_factory=list)  # execution order
    drift: str = ""  # accumulated drift seen on outputs and not judged (isolation decided)

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
            what = "first wrong layer in isolation" if self.decided_by == DECIDED_BY_ISOLATION else \
                "first divergent layer"
            where = f", {what} {fd.producer or fd.name} ({fd.op or 'input'}) -> {fd.name}"
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
        if self.isolation:
            wrong = sum(not layer.passed for layer in self.isolation)
            how += (f", {len(self.isolation)} layers in isolation"
                    + (f" ({wrong} wrong)" if wrong else " all within their bounds"))
        if self.decided_by == DECIDED_BY_ISOLATION:  # the other paths read as before; JSON names every path
            how += f" [decided by {self.decided_by}]"
        return f"{head}: {outputs}{layers}, {how}{where}: {self.status}"


PLAIN_VS_DUMP, RETURNED_VS_DUMPED, NONDETERMINISTIC = "plain_vs_dump", "returned_vs_dumped", "nondeterministic"
PLAIN_LABEL = "board (plain run)"  # the board's plain runs (no dumps) as a side of the plain pairs (-r)


@dataclass
class BoardFinding:
    """The board gave two different answers for the same input in one frame (bit for bit)."""
    kind: Literal["plain_vs_dump", "returned_vs_dumped", "nondeterministic"]
    frame: int  # 0-based, as InputInfo.frame
    tensor: str  # the program output that differs
    elements: int  # elements that differ
    total: int  # elements compared
    max_lsb: int | None  # largest difference in LSB; None for float tensors
    max_abs_diff: float  # largest difference in the tensor's real units
    repeat: int = 0  # nondeterministic: the plain run (0-based) that differs from run 0
    message: str = ""  # the finding as one sentence

    @staticmethod
    def describe(kind: str, frame: int, tensor: str, elements: int, total: int, max_lsb: int | None,
                 max_abs_diff: float, repeat: int = 0, detail: str = "") -> str:
        size = detail or (f"{elements} of {total} elements, max "
                          + (f"{max_lsb} LSB (|d| {max_abs_diff:.4g})" if max_lsb is not None
                             else f"|d| {max_abs_diff:.4g}"))
        if kind == PLAIN_VS_DUMP:
            return (f"board outputs differ between a plain run and a dumping run: frame {frame}, tensor {tensor}, "
                    f"{size} — the board is only right while dumping, or returns a stale output buffer")
        if kind == RETURNED_VS_DUMPED:
            return (f"the outputs a dumping run returned differ from its own dumps of them: frame {frame}, "
                    f"tensor {tensor}, {size} — a stale output buffer")
        return (f"non-deterministic board: frame {frame}, repeat {repeat} differs from repeat 0, tensor {tensor}, "
                f"{size}")


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
    repeat: int = 1  # plain runs per frame on the board, compared bit for bit (--repeat)
    plain_run: bool = False  # with -r, every frame also ran on the board without dumps
    plain_pairs: list[PairResult] = field(default_factory=list)  # that plain run vs the references (outputs)
    board_findings: list[BoardFinding] = field(default_factory=list)
    # The float model as the golden reference (-m float.onnx,...): a warning or ok, never a failure.
    float_reference: FloatReference | None = None
    distributions: list = field(default_factory=list)  # per-layer value distributions of the board's dumps (-r)

    def __post_init__(self) -> None:
        # A report read back from JSON (farm pages) holds plain dicts: make them objects again.
        if isinstance(self.float_reference, dict):
            self.float_reference = FloatReference.from_dict(self.float_reference)
        self.board_findings = [_finding_from_dict(f) if isinstance(f, dict) else f for f in self.board_findings]
        self.plain_pairs = [_pair_from_dict(p) if isinstance(p, dict) else p for p in self.plain_pairs]

    @property
    def passed(self) -> bool:
        return (bool(self.pairs) and all(p.passed for p in self.pairs + self.plain_pairs)
                and not self.latency_failure and not self.board_findings)

    @property
    def board_runs_checked(self) -> bool:
        """Whether the board's runs were compared with each other (-r, --repeat > 1)."""
        return self.plain_run or self.repeat > 1

    def board_runs_line(self) -> str:
        """``board runs: plain and dumping runs identical, 3 repeats identical (2 frames, bit for bit): PASSED``;
        ``""`` when nothing was checked."""
        if not self.board_runs_checked:
            return ""
        if self.board_findings:
            names = {PLAIN_VS_DUMP: "plain vs dumping run", RETURNED_VS_DUMPED: "returned outputs vs dumps",
                     NONDETERMINISTIC: "non-deterministic"}
            counts = {}
            for f in self.board_findings:
                counts[names.get(f.kind, f.kind)] = counts.get(names.get(f.kind, f.kind), 0) + 1
            n = len(self.board_findings)
            return (f"board runs: {n} difference{'s' if n != 1 else ''} "
                    f"({', '.join(f'{k}: {v}' for k, v in counts.items())}): FAILED")
        checks = (["plain and dumping runs identical"] if self.plain_run else []) + (
            [f"{self.repeat} repeats identical"] if self.repeat > 1 else [])
        return f"board runs: {', '.join(checks)} ({self.frames} frame{'s' if self.frames != 1 else ''}, " \
               "bit for bit): PASSED"

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

        def pair(p: PairResult) -> dict[str, Any]:
            return {
                "a": p.a, "b": p.b, "criterion": p.criterion, "status": p.status, "passed": p.passed,
                "message": p.message, "verdict": p.verdict_line(), "digits": p.digits,
                "first_divergent": tensor(p.first_divergent) if p.first_divergent else None,
                "outputs": [tensor(t) for t in p.outputs],
                "layers": [tensor(t) for t in p.layers],
                "decided_by": p.decided_by,
                "drift": p.drift,
                "isolation": [asdict(layer) for layer in p.isolation],
            }

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
            "pairs": [pair(p) for p in self.pairs],
            "repeat": self.repeat,
            "plain_run": self.plain_run,
            "plain_pairs": [pair(p) for p in self.plain_pairs],
            "board_findings": [asdict(f) for f in self.board_findings],
            "float_reference": self.float_reference.to_dict() if self.float_reference else None,
            "distributions": [d if isinstance(d, dict) else d.to_json() for d in self.distributions],
        }


_FINDING_KEYS = {"kind", "frame", "tensor", "elements", "total", "max_lsb", "max_abs_diff", "repeat", "message"}


def _finding_from_dict(data: dict[str, Any]) -> BoardFinding:
    known = {k: v for k, v in data.items() if k in _FINDING_KEYS}
    if known.get("max_abs_diff") is None:  # JSON null = a non-finite figure
        known["max_abs_diff"] = float("nan")
    return BoardFinding(**known)


def _tensor_from_dict(data: dict[str, Any] | None) -> TensorResult | None:
    if data is None:
        return None
    known = {k: v for k, v in data.items() if k in TensorResult.__dataclass_fields__}
    for key in ("max_abs_diff", "cosine"):  # JSON null = a non-finite figure
        if known.get(key) is None:
            known[key] = float("nan")
    return TensorResult(**known)


def _pair_from_dict(data: dict[str, Any]) -> PairResult:
    known = {k: v for k, v in data.items()
             if k in PairResult.__dataclass_fields__ and k not in ("outputs", "layers", "first_divergent", "isolation")}
    isolated = [IsolatedLayer(**{k: v for k, v in layer.items() if k in IsolatedLayer.__dataclass_fields__})
                for layer in data.get("isolation", [])]
    return PairResult(**known, outputs=[_tensor_from_dict(t) for t in data.get("outputs", [])],
                      layers=[_tensor_from_dict(t) for t in data.get("layers", [])],
                      first_divergent=_tensor_from_dict(data.get("first_divergent")), isolation=isolated)
