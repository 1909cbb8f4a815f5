"""``qverify.verify(...)``: run the same inputs everywhere and compare every pair.

    import qverify
    result = qverify.verify(["quant.onnx", "model.bin"], board="192.168.1.10", dump_all=True)
    print(result.passed, result.first_divergent)

Which sides run is decided by the models given (recognised by content):

========================  ==========================================================
``quant.onnx,model.bin``  quant.onnx vs board; with the simulator on (default when a
                          board runs a model.bin): board vs simulator (bit-exact), and
                          with an explicit ``-s`` also quant.onnx vs simulator
``model.bin``             board vs simulator (bit-exact)
``quant.onnx`` with -s    quant.onnx vs simulator (compiled in memory)
========================  ==========================================================

A float model among them (``float.onnx,quant.onnx,model.bin``, or ``float.onnx,quant.onnx``
with -s) is the golden reference: it must be the model quant.onnx was quantized from
(MISMATCHED otherwise), and every compared tensor gets float vs quant.onnx vs board cosines
and a triage (:mod:`~qverify.client.float_reference`), a warning of its own that never
changes the verdict. A float model needs quant.onnx beside it.

The board is also compared with itself: with ``dump_all`` every frame also runs on the board
without dumps (a plain run), compared with the references and bit for bit with the dumping
run; ``repeat=N`` runs every frame N times without dumps, and the N outputs must be
bit-identical. A difference is a :class:`~qverify.client.results.BoardFinding`.

Without ``board`` an embedded emulated board runs in this process. Infrastructure failures
raise (:class:`~qverify.client.agent_client.AgentError`, :class:`~qverify.client.ssh.SshError`);
bad files raise :class:`~qverify.client.modelfiles.ModelFileError` or
:class:`~qverify.client.inputs.InputFileError`; everything else is in the result.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from qverify.client import inputs as inputs_mod
from qverify.client.agent_client import AgentError
from qverify.client.boards import BoardSettings, ensure_model, open_board
from qverify.client.float_reference import DEFAULT_MIN_FLOAT_COSINE, FloatComparer, FloatRun, FloatSide
from qverify.client.modelfiles import (
    ModelFileError, board_runtime, classify, float_pairing_problem, load_onnx, pairing_problem,
)
from qverify.client.results import (
    DECIDED_BY_OUTPUTS, DECIDED_BY_TWIN, FAILED, MISMATCHED, PLAIN_LABEL, InputInfo, PairResult, SideInfo,
    Tolerances, VerifyResult,
)
from qverify.client.sides import BoardSide, HostCache, OnnxSide, SimulatorSide, SideOutput
from qverify.client.verdict import BoardRunChecker, PairComparer, lookup_anchors
from qverify.client.verify_isolation import IsolationPass, decide
from qverify.client.verify_runs import (  # noqa: F401  (re-exported)
    DIED_MID_RUN, FrameRuns, _death_message, _died_during_run, _sha, add_board_distributions,
)

Progress = Callable[[str], None]
_RUNTIME_NAMES = {"openvino": "OpenVINO"}  # board runtimes whose model the host simulator cannot run


@dataclass
class VerifyOptions(BoardSettings):
    """Everything the CLI can set; the keyword arguments of :func:`verify` (the board's
    settings, port to timeout, are those of :class:`~qverify.client.boards.BoardSettings`)."""
    board: str | None = None
    run_sim: bool | None = None  # None: on when a board runs a model.bin
    inputs: Sequence[str] = ()
    seed: int = 0
    dump_all: bool = False
    ort_opt: str = "all"
    tolerances: Tolerances = field(default_factory=Tolerances)
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    faults: Sequence[str] = ()  # embedded board only: --fault injections (tests, demos)
    host_cache: HostCache | None = None  # share onnxruntime/simulator results across boards (farm runs)
    repeat: int = 1  # plain runs of every frame on the board, compared bit for bit (hrt_model_exec's frame_count)
    # Isolated per-layer verification of quant.onnx vs board: "auto" when no bit-exact twin
    # runs or the outputs are beyond drift, "always", or "never" (output rules only).
    isolate: str = "auto"
    core: int | None = None  # NPU core of every board run (hrt_model_exec's core_id); None: any free core
    min_float_cosine: float = DEFAULT_MIN_FLOAT_COSINE  # float vs quant.onnx outputs: below it, a warning
    # With dump_all and a board: per-layer histograms, channel ranges and saturation counts
    # (host CPU per frame; farm jobs leave them off unless an entry asks).
    distributions: bool = True


def verify(models: Sequence[str | Path] | str, board: str | None = None, *, progress: Progress | None = None,
           push_progress: Callable[[int, int], None] | None = None, **options) -> VerifyResult:
    """Verify ``models`` (paths, or one comma-separated string) on ``board``; see :class:`VerifyOptions`."""
    if isinstance(models, (str, Path)):
        models = [m for m in str(models).split(",") if m]
    opts = VerifyOptions(board=board, **options)
    return Verification([Path(m) for m in models], opts, progress or (lambda message: None), push_progress).run()


class Verification(FrameRuns):
    def __init__(self, models: list[Path], options: VerifyOptions, progress: Progress,
                 push_progress: Callable[[int, int], None] | None) -> None:
        self.files = classify(models)
        self.o = options
        self.say = progress
        self.push_progress = push_progress
        if options.repeat < 1:
            raise ValueError(f"repeat must be 1 or more, not {options.repeat}")
        if options.isolate not in ("auto", "always", "never"):
            raise ValueError(f"isolate must be auto, always or never, not {options.isolate!r}")
        self.result = VerifyResult(tolerances=options.tolerances, dump_all=options.dump_all, repeat=options.repeat)
        self._death_layer: dict = {}  # side label -> the tensor it never delivered (crash during -r)

    # ------------------------------------------------------------------ planning
    def _program(self):
        from qverify.simulator import load

        if self.files.bin is not None:
            return load(self.files.bin)
        from qverify.simulator import Program
        from qverify.simulator.compiler import compile_model

        self.say(f"compiling {self.files.onnx.name} in memory for the simulator")
        return Program(compile_model(self.files.onnx, input_shapes=dict(self.o.input_shapes)))

    def _plan(self) -> tuple[bool, bool, bool]:
        """(onnx side, board side, simulator side)."""
        has_onnx, has_bin = self.files.onnx is not None, self.files.bin is not None
        if not has_bin:
            if self.o.board is not None:
                raise ModelFileError("a board runs model.bin: give -m quant.onnx,model.bin "
                                     "(make it with: qverify compile quant.onnx -o model.bin)")
            if not self.o.run_sim:
                raise ModelFileError("with only quant.onnx there is nothing to compare it with: add -s (simulator), "
                                     "or give model.bin too")
            return True, False, True
        run_sim = True if not has_onnx else (self.o.run_sim is not False)
        return has_onnx, True, run_sim

    # ------------------------------------------------------------------ running
    def run(self) -> VerifyResult:
        start = time.perf_counter()
        with_onnx, with_board, with_sim = self._plan()
        program = self._program()
        runtime = board_runtime(program)
        if runtime:  # a model.ov: a runtime's own model, no bit-exact twin on the host
            with_sim = self._runtime_plan(runtime, with_onnx)
        onnx_model = load_onnx(self.files.onnx) if with_onnx else None
        result = self.result
        if with_onnx and self.files.bin is not None:
            problem, note = pairing_problem(self.files.onnx, onnx_model, program)
            if note:
                result.notes.append(note)
            if problem:
                result.pairs.append(PairResult(self.files.onnx.name, self.files.bin.name, "tolerance",
                                               status=MISMATCHED, message=f"do not belong together: {problem}"))
                result.seconds = time.perf_counter() - start
                return result
        if self.files.float is not None and self._float_mismatch(onnx_model):
            result.seconds = time.perf_counter() - start
            return result
        if not with_board and self.o.repeat > 1:
            result.notes.append("--repeat runs a board several times; without a board side it does nothing")
            result.repeat = 1  # nothing was repeated
        result.plain_run = bool(with_board and self.o.dump_all)
        ports = inputs_mod.ports_from_program(program)
        frames = inputs_mod.build_frames(ports, list(self.o.inputs), self.o.seed)
        result.frames = len(frames)
        for i, frame in enumerate(frames):
            for port in ports:
                result.inputs.append(InputInfo(port.name, port.onnx_name, frame.sources.get(port.name, ""),
                                               list(frame.board[port.name].shape), str(frame.board[port.name].dtype),
                                               list(frame.onnx[port.onnx_name].shape), i))
        with contextlib.ExitStack() as stack:
            sides = []
            if with_onnx:
                onnx_side = stack.enter_context(OnnxSide(self.files.onnx, program, self.o.ort_opt))
                sides.append(onnx_side)
                result.sides.append(SideInfo(onnx_side.label, "onnx", str(self.files.onnx), _sha(self.files.onnx),
                                             {"ort_opt": self.o.ort_opt, "onnxruntime": _ort_version()}))
            if with_board:
                sides.append(stack.enter_context(self._board_side(stack, program)))
            if with_sim:
                sim = stack.enter_context(SimulatorSide(program))
                sides.append(sim)
                result.sides.append(SideInfo("simulator", "simulator", str(self.files.bin or self.files.onnx),
                                             _sha(self.files.bin) if self.files.bin else "",
                                             {"target": program.target.name}))
            self._compare(sides, frames, program, explicit_sim=bool(self.o.run_sim))
        if runtime:
            self._runtime_exposure(runtime)
        result.seconds = time.perf_counter() - start
        return result

    def _float_mismatch(self, onnx_model) -> bool:
        """Whether the float model is not the one quant.onnx was quantized from (a MISMATCHED pair)."""
        problem = float_pairing_problem(self.files.float, load_onnx(self.files.float), self.files.onnx, onnx_model)
        if problem:
            self.result.pairs.append(PairResult(self.files.float.name, self.files.onnx.name, "tolerance",
                                                status=MISMATCHED, message=f"do not belong together: {problem}"))
        else:
            self.result.sides.append(SideInfo(self.files.float.name, "float", str(self.files.float),
                                              _sha(self.files.float), {"ort_opt": self.o.ort_opt,
                                                                       "onnxruntime": _ort_version()}))
        return bool(problem)

    def _float_run(self, sides: list, program) -> FloatRun | None:
        by_kind = {s.kind: s for s in sides}
        if self.files.float is None or "onnx" not in by_kind:
            return None
        integer = by_kind.get("board") or by_kind.get("simulator")
        comparer = FloatComparer(self.files.float.name, by_kind["onnx"].label, integer.label if integer else "",
                                 program, self.o.min_float_cosine, self.o.tolerances.digits)
        key = ("float", _sha(self.files.float), _sha(self.files.bin), tuple(self.o.inputs), self.o.seed,
               self.o.dump_all, self.o.ort_opt)
        return FloatRun(FloatSide(self.files.float, program, self.o.ort_opt), comparer, self.o.dump_all,
                        self.o.host_cache, key)

    def _runtime_plan(self, runtime: str, with_onnx: bool) -> bool:
        """Sides for a board running a runtime's own model (model.ov): quant.onnx and the board, never the
        simulator (it cannot run that model). Returns whether the simulator runs (never)."""
        name = self.files.bin.name
        if not with_onnx:
            raise ModelFileError(f"{name} runs on an {runtime} board, which has no bit-exact twin on this host: give "
                                 f"quant.onnx too (-m quant.onnx,{name})")
        if self.o.board is None:
            raise ModelFileError(f"{name} runs on an {runtime} board and the embedded emulated board runs model.bin "
                                 f"only: start 'qverify-agent serve --backend {runtime}' and give -b HOST:PORT")
        self.result.notes.append(f"board vs simulator does not apply to an {_RUNTIME_NAMES.get(runtime, runtime)} "
                                 "board (no bit-exact twin): quant.onnx vs board is decided by isolation")
        return False

    def _runtime_exposure(self, runtime: str) -> None:
        """A runtime that fuses its graph may compute other final outputs when intermediates are
        exposed as extra outputs (dumps): that is a property of the runtime, reported as a note,
        while the plain run (no dumps) is compared with quant.onnx on its own (the plain pair)."""
        moved = [f for f in self.result.board_findings if f.kind == "plain_vs_dump"]
        if not moved:
            if self.result.plain_run and not self.result.board_findings:
                self.result.notes.append(f"exposing the intermediate tensors as extra outputs did not change "
                                         f"{_RUNTIME_NAMES.get(runtime, runtime)}'s final outputs (plain run and "
                                         "dumping run identical)")
            return
        self.result.board_findings = [f for f in self.result.board_findings if f.kind != "plain_vs_dump"]
        worst = max(moved, key=lambda f: (f.max_lsb or 0, f.elements))
        frames = sorted({f.frame for f in moved})
        self.result.notes.append(
            f"exposing the intermediate tensors as extra outputs changed {_RUNTIME_NAMES.get(runtime, runtime)}'s "
            f"final outputs in {len(frames)} of {self.result.frames} frame(s) (worst: {worst.tensor}, "
            f"{worst.elements} of {worst.total} elements, max {worst.max_lsb} LSB): the runtime fuses the graph "
            "differently when a tensor is an output, so the dumped layers are those of that graph; the plain "
            "run (no dumps) is the board's answer, compared with quant.onnx in the plain pair")

    def _board_side(self, stack: contextlib.ExitStack, program) -> BoardSide:
        options = self.o.board_options(self.o.board, list(self.o.faults))
        host, port = options.host, options.port
        where = f"board {host}:{port}" if host else "the embedded emulated board (127.0.0.1)"
        self.say(f"connecting to {where}")
        client = stack.enter_context(open_board(options, program.target.name))
        info = client.agent_info
        if self.o.core is not None and not 0 <= self.o.core < max(1, info.npu_cores):
            from qverify.client.agent_client import BadRequest

            raise BadRequest(f"--core {self.o.core}: {where} has {info.npu_cores} NPU core(s); give 0.."
                             f"{max(1, info.npu_cores) - 1} or leave --core out")
        self.say(f"making sure {self.files.bin.name} is on the board")
        push = ensure_model(client, self.files.bin, options, self.push_progress)
        self.result.sides.append(SideInfo("board", "board", str(self.files.bin), push.sha256, {
            "address": client.address, "embedded": options.embedded, "board_id": info.board_id,
            "agent_version": info.agent_version, "protocol_version": info.protocol_version,
            "backend": info.backend, "runtime_version": info.runtime_version,
            "driver_version": info.driver_version, "firmware_version": info.firmware_version,
            "target": program.target.name, "pushed": push.sent, "push_transport": push.transport,
            "push_seconds": round(push.seconds, 4), "faults": list(info.faults)}))
        return BoardSide(client, push.sha256, program, core=self.o.core)

    def _compare_frame(self, outputs: dict[str, SideOutput], sides: list, pairs: list, comparers: list,
                       frame_us: list[float], program, collector) -> None:
        board_out = next((outputs[s.label] for s in sides if s.kind == "board" and s.label in outputs), None)
        if board_out is not None:
            frame_us += board_out.frame_us
            if collector is not None and board_out.dumped:
                add_board_distributions(collector, program, board_out)
        for (a, b, _), comparer in zip(pairs, comparers):
            if a.label in outputs and b.label in outputs:
                comparer.add_frame(outputs[a.label], outputs[b.label], self.o.dump_all)

    def _pairs(self, sides: list, explicit_sim: bool) -> list[tuple[object, object, str]]:
        by_kind = {s.kind: s for s in sides}
        pairs = []
        onnx, board, sim = by_kind.get("onnx"), by_kind.get("board"), by_kind.get("simulator")
        if onnx and board:
            pairs.append((onnx, board, "tolerance"))
        if onnx and sim and (explicit_sim or not board):
            pairs.append((onnx, sim, "tolerance"))
        if board and sim:
            pairs.append((board, sim, "bit-exact"))
        return pairs

    def _plain_pairs(self, sides: list) -> list[tuple[str, str, str]]:
        """With -r, the board's plain run against the references its dumping run is compared with."""
        by_kind = {s.kind: s for s in sides}
        if not self.o.dump_all or "board" not in by_kind:
            return []
        pairs = []
        if "onnx" in by_kind:
            pairs.append((by_kind["onnx"].label, PLAIN_LABEL, "tolerance"))
        if "simulator" in by_kind:
            pairs.append((PLAIN_LABEL, by_kind["simulator"].label, "bit-exact"))
        return pairs

    def _compare(self, sides: list, frames: list, program, explicit_sim: bool) -> None:
        pairs = self._pairs(sides, explicit_sim)
        comparers = [PairComparer(a.label, b.label, criterion, program, self.o.tolerances) for a, b, criterion in pairs]
        plain_pairs = self._plain_pairs(sides)
        plain_comparers = [PairComparer(a, b, criterion, program, self.o.tolerances) for a, b, criterion in plain_pairs]
        checker = BoardRunChecker(program)
        extra = frozenset(source for source, _ in lookup_anchors(program).values())
        broken: dict[str, str] = {}  # side label -> why it could not run
        frame_us: list[float] = []
        board_work, plain = "", self._plain_run_count(extra)
        if any(s.kind == "board" for s in sides) and plain:
            board_work = (f" (board: a dumping run and {plain} plain run{'s' if plain != 1 else ''})"
                          if self.o.dump_all or extra else f" (board: {plain + 1} plain runs)")
        onnx_board = next(((a, b) for a, b, c in pairs if a.kind == "onnx" and b.kind == "board"), None)
        twin = any(c == "bit-exact" for _, _, c in pairs)
        isolation = None
        float_run = self._float_run(sides, program)
        collector = None
        if self.o.dump_all and self.o.distributions and any(s.kind == "board" for s in sides):
            from qverify.client.accuracy.distributions import DistributionCollector

            collector = DistributionCollector()
        if onnx_board and (self.o.isolate == "always" or (self.o.isolate == "auto" and not twin)):
            # Before the entire runs: a board that dies in isolation names the layer it died in.
            isolation = self._isolation(*onnx_board, frames, program, broken)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="qverify-board") as pool:
            for number, frame in enumerate(frames):
                self.say(f"frame {number + 1}/{len(frames)}: running on {', '.join(s.label for s in sides)}"
                         f"{board_work}")
                outputs, runs = self._run_sides(pool, sides, frame, broken, program, number)
                self._compare_frame(outputs, sides, pairs, comparers, frame_us, program, collector)
                if float_run is not None:
                    float_run.add_frame(frame, number, outputs)
                if runs is None:
                    continue
                checker.add_frame(number, runs.main if runs.main_dumps else None,
                                  runs.plains if runs.main_dumps else [runs.main, *runs.plains])
                if plain_pairs and runs.plains:
                    outputs[PLAIN_LABEL] = self._plain_output(runs, extra)
                    for (a, b, _), comparer in zip(plain_pairs, plain_comparers):
                        if a in outputs and b in outputs:
                            comparer.add_frame(outputs[a], outputs[b], False)
        self.result.pairs += [self._finish(comparer, a.label, b.label, broken)
                              for (a, b, _), comparer in zip(pairs, comparers)]
        for pair, (a, b, criterion) in zip(self.result.pairs, pairs):
            if criterion == "bit-exact":
                pair.decided_by = DECIDED_BY_TWIN
            elif (a, b) != onnx_board:
                pair.decided_by = DECIDED_BY_OUTPUTS
            else:
                if (isolation is None and self.o.isolate == "auto" and not pair.passed and not pair.message
                        and b.label not in broken):  # beyond drift with a twin: find the layer
                    isolation = self._isolation(a, b, frames, program, broken)
                decide(pair, isolation, broken.get(b.label, ""))
        self.result.plain_pairs += [self._finish(comparer, a, b, broken)
                                    for (a, b, _), comparer in zip(plain_pairs, plain_comparers)]
        self.result.board_findings += checker.findings
        self._latency(frame_us)
        if collector is not None:
            self._distributions(collector)
        if float_run is not None:
            board_loss = bool(self.result.board_findings) or not all(
                p.passed for p in self.result.pairs + self.result.plain_pairs)
            self.result.float_reference = float_run.finish(self.result.pairs, board_loss)

    def _distributions(self, collector) -> None:
        """-r: the board's per-layer distributions, then quant.onnx's weights (when given)."""
        from qverify.client.accuracy.distributions import weight_distributions

        self.result.distributions = collector.summaries()
        if self.files.onnx is not None:
            self.result.distributions += weight_distributions(self.files.onnx)

    # ------------------------------------------------------------------ isolation
    def _isolation(self, onnx_side, board_side, frames: list, program, broken: dict[str, str]):
        """The isolation pass (:mod:`~qverify.client.verify_isolation`) of quant.onnx vs the board."""
        key = ("onnx-all", _sha(self.files.onnx), _sha(self.files.bin), tuple(self.o.inputs), self.o.seed,
               self.o.ort_opt)
        return IsolationPass(program, self.say, self.result.notes, self.o.host_cache, key,
                             lambda side, exc: self._isolation_death(side, exc, program)).run(
            onnx_side, board_side, frames, broken)

    def _isolation_death(self, side, exc: AgentError, program) -> str | None:
        if not _died_during_run(exc):
            return None
        self._note_death(side, exc, program, always=True)
        return _death_message(exc, program)

    def _finish(self, comparer: PairComparer, a: str, b: str, broken: dict[str, str]) -> PairResult:
        pair = comparer.finish()
        dead = broken.get(a) or broken.get(b)
        if dead:
            pair.status, pair.message = FAILED, dead
            pair.first_divergent = self._death_layer.get(a) or self._death_layer.get(b)
        return pair

    def _latency(self, frame_us: list[float]) -> None:
        if not frame_us:
            return
        median_ms = statistics.median(frame_us) / 1000.0
        for side in self.result.sides:
            if side.kind == "board":
                side.detail["median_frame_ms"] = round(median_ms, 3)
        budget = self.o.tolerances.max_latency_ms
        if budget is not None and median_ms > budget:
            self.result.latency_failure = (f"board median frame latency {median_ms:.1f} ms exceeds "
                                           f"--max-latency {budget:g} ms")


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
