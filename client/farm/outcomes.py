"""What a farm run found: one :class:`JobResult` per (board, model) pair, three outcomes apart.

* ``consistent``: every pair of sides agreed (exit 0);
* ``inconsistent``: the board or the compiler is wrong (exit 1) — never retried;
* ``infra``: the lab is wrong — board offline, unreachable, transfer cut, reservation
  failed (exit 3); retried with backoff before being reported.

The farm's exit code is the worst outcome, with the same meanings as ``qverify``'s.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from qverify import __version__

CONSISTENT, INCONSISTENT, INFRA = "consistent", "inconsistent", "infra"
OUTCOME_EXIT = {CONSISTENT: 0, INCONSISTENT: 1, INFRA: 3}


@dataclass
class Latency:
    """Board latency of one pair (Perf over ``frames`` frames), in milliseconds."""
    frames: int = 0
    min_ms: float = 0.0
    median_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    mean_ms: float = 0.0


@dataclass
class Regression:
    """A pair that got worse than its last good run (filled in from the history)."""
    board: str
    model: str
    kind: str  # "newly_inconsistent", "agreement_dropped", "latency_up"
    message: str
    previous_run: str = ""  # run id of the last good run compared against


@dataclass
class JobResult:
    board: str
    model: str
    outcome: str  # CONSISTENT, INCONSISTENT, INFRA
    message: str = ""  # verdict lines, or what went wrong
    attempts: int = 1
    seconds: float = 0.0
    skipped: bool = False  # not run at all (board offline)
    # Figures for the history (worst over the job's pairs of sides):
    min_exact_fraction: float | None = None  # integer view: share of elements exactly equal, worst tensor
    min_cosine: float | None = None
    max_lsb: int | None = None
    first_divergent: str = ""  # node name, "" when none
    float_cosine: float | None = None  # float model vs quant.onnx, worst output (quantization loss); None: no float model
    first_divergent_tensor: str = ""
    latency: Latency | None = None
    versions: dict[str, str] = field(default_factory=dict)  # agent, backend, runtime, driver, firmware, target
    model_sha256: dict[str, str] = field(default_factory=dict)  # "onnx"/"bin" -> sha256
    report: dict[str, Any] | None = None  # the pair's full verify report (VerifyResult.to_dict())

    @property
    def exit_code(self) -> int:
        return OUTCOME_EXIT[self.outcome]


@dataclass
class BoardStatus:
    name: str
    address: str = ""  # host:port actually used (from labgrid for places)
    place: str = ""  # labgrid place, if any
    online: bool = True
    error: str = ""  # why it is offline
    versions: dict[str, str] = field(default_factory=dict)


@dataclass
class FarmResult:
    run_id: str
    inventory: str
    started: str  # ISO 8601 UTC
    finished: str = ""
    boards: list[BoardStatus] = field(default_factory=list)
    jobs: list[JobResult] = field(default_factory=list)
    regressions: list[Regression] = field(default_factory=list)
    qverify_version: str = __version__

    @property
    def exit_code(self) -> int:
        return max((j.exit_code for j in self.jobs), default=0)

    def counts(self) -> dict[str, int]:
        out = {CONSISTENT: 0, INCONSISTENT: 0, INFRA: 0}
        for job in self.jobs:
            out[job.outcome] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "qverify.farm/1", **asdict(self), "exit_code": self.exit_code, "counts": self.counts()}
