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

Without ``board`` an embedded emulated board runs in this process. Infrastructure failures
raise (:class:`~qverify.client.agent_client.AgentError`, :class:`~qverify.client.ssh.SshError`);
bad files raise :class:`~qverify.client.modelfiles.ModelFileError` or
:class:`~qverify.client.inputs.InputFileError`; everything else is in the result.
"""
from __future__ import annotations

import contextlib
import functools
import statistics
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from qverify.client import inputs as inputs_mod
from qverify.client.agent_client import AgentError, BoardUnreachable
from qverify.client.boards import BoardOptions, ensure_model, open_board, parse_board
from qverify.client.modelfiles import ModelFileError, classify, load_onnx, pairing_problem
from qverify.client.results import (
    FAILED, MISMATCHED, InputInfo, PairResult, SideInfo, Tolerances, VerifyResult,
)
from qverify.client.sides import BoardSide, HostCache, OnnxSide, SimulatorSide, SideOutput
from qverify.client.verdict import PairComparer, lookup_anchors, tensor_order

Progress = Callable[[str], None]
DIED_MID_RUN = "the board stopped answering during the run"


@dataclass
class VerifyOptions:
    """Everything the CLI can set; the keyword arguments of :func:`verify`."""
    board: str | None = None
    port: int | None = None
    token: str | None = None
    tls_ca: Path | None = None
    transport: str = "sftp"
    ssh: object | None = None  # SshOptions
    run_sim: bool | None = None  # None: on when a board runs a model.bin
    inputs: Sequence[str] = ()
    seed: int = 0
    dump_all: bool = False
    ort_opt: str = "all"
    tolerances: Tolerances = field(default_factory=Tolerances)
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    connect_timeout: float = 5.0
    timeout: float = 300.0
    faults: Sequence[str] = ()  # embedded board only: --fault injections (tests, demos)
    host_cache: HostCache | None = None  # share onnxruntime/simulator results across boards (farm runs)


def verify(models: Sequence[str | Path] | str, board: str | None = None, *, progress: Progress | None = None,
           push_progress: Callable[[int, int], None] | None = None, **options) -> VerifyResult:
    """Verify ``models`` (paths, or one comma-separated string) on ``board``; see :class:`VerifyOptions`."""
    if isinstance(models, (str, Path)):
        models = [m for m in str(models).split(",") if m]
    opts = VerifyOptions(board=board, **options)
    return Verification([Path(m) for m in models], opts, progress or (lambda message: None), push_progress).run()


class Verification:
    def __init__(self, models: list[Path], options: VerifyOptions, progress: Progress,
                 push_progress: Callable[[int, int], None] | None) -> None:
        self.files = classify(models)
        self.o = options
        self.say = progress
        self.push_progress = push_progress
        self.result = VerifyResult(tolerances=options.tolerances, dump_all=options.dump_all)
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
        result.seconds = time.perf_counter() - start
        return result

    def _board_side(self, stack: contextlib.ExitStack, program) -> BoardSide:
        host, port = parse_board(self.o.board, self.o.port)
        options = BoardOptions(host=host, port=port, token=self.o.token, tls_ca=self.o.tls_ca,
                               transport=self.o.transport, ssh=self.o.ssh, connect_timeout=self.o.connect_timeout,
                               timeout=self.o.timeout, faults=list(self.o.faults))
        where = f"board {host}:{port}" if host else "the embedded emulated board (127.0.0.1)"
        self.say(f"connecting to {where}")
        client = stack.enter_context(open_board(options, program.target.name))
        info = client.agent_info
        self.say(f"making sure {self.files.bin.name} is on the board")
        push = ensure_model(client, self.files.bin, options, self.push_progress)
        self.result.sides.append(SideInfo("board", "board", str(self.files.bin), push.sha256, {
            "address": client.address, "embedded": options.embedded, "board_id": info.board_id,
            "agent_version": info.agent_version, "protocol_version": info.protocol_version,
            "backend": info.backend, "runtime_version": info.runtime_version,
            "driver_version": info.driver_version, "firmware_version": info.firmware_version,
            "target": program.target.name, "pushed": push.sent, "push_transport": push.transport,
            "push_seconds": round(push.seconds, 4), "faults": list(info.faults)}))
        return BoardSide(client, push.sha256, program)

    def _run_sides(self, pool: ThreadPoolExecutor, sides: list, frame, broken: dict[str, str],
                   program, number: int = 0) -> dict[str, SideOutput]:
        """Run one frame everywhere. The board works in its own process (or server thread), so
        its run overlaps the host's onnxruntime and simulator runs instead of adding to them."""
        outputs: dict[str, SideOutput] = {}
        live = [s for s in sides if s.label not in broken]
        remote = [s for s in live if s.kind == "board"]
        extra = frozenset(source for source, _ in lookup_anchors(program).values())
        futures = {s.label: pool.submit(s.run, frame, self.o.dump_all, extra) for s in remote}
        try:
            for side in live:
                if side.kind != "board":
                    outputs[side.label] = self._host_run(side, frame, extra, number)
            for side in remote:
                try:
                    outputs[side.label] = futures[side.label].result()
                except AgentError as exc:
                    if not _died_during_run(exc):
                        raise
                    broken[side.label] = _death_message(exc, program)
                    self._note_death(side, exc, program)
        except BaseException:  # Ctrl-C or a host-side failure: cancel the board's run, do not wait it out
            for side in remote:
                side.cancel()
            wait(futures.values(), timeout=10)
            raise
        return outputs

    def _host_run(self, side, frame, extra: frozenset[str], number: int) -> SideOutput:
        """A host side's run, from the shared cache when another board's verification made it."""
        if self.o.host_cache is None:
            return side.run(frame, self.o.dump_all, extra)
        key = (side.kind, _sha(self.files.onnx), _sha(self.files.bin), tuple(self.o.inputs), self.o.seed, number,
               self.o.dump_all, extra, self.o.ort_opt)
        return self.o.host_cache.get(key, lambda: side.run(frame, self.o.dump_all, extra))

    def _compare_frame(self, outputs: dict[str, SideOutput], sides: list, pairs: list, comparers: list,
                       frame_us: list[float]) -> None:
        board_out = next((outputs[s.label] for s in sides if s.kind == "board" and s.label in outputs), None)
        if board_out is not None:
            frame_us += board_out.frame_us
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

    def _compare(self, sides: list, frames: list, program, explicit_sim: bool) -> None:
        pairs = self._pairs(sides, explicit_sim)
        comparers = [PairComparer(a.label, b.label, criterion, program, self.o.tolerances) for a, b, criterion in pairs]
        broken: dict[str, str] = {}  # side label -> why it could not run
        frame_us: list[float] = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="qverify-board") as pool:
            for number, frame in enumerate(frames):
                self.say(f"frame {number + 1}/{len(frames)}: running on {', '.join(s.label for s in sides)}")
                outputs = self._run_sides(pool, sides, frame, broken, program, number)
                self._compare_frame(outputs, sides, pairs, comparers, frame_us)
        for (a, b, _), comparer in zip(pairs, comparers):
            pair = comparer.finish()
            dead = broken.get(a.label) or broken.get(b.label)
            if dead:
                pair.status, pair.message = FAILED, dead
                pair.first_divergent = self._death_layer.get(a.label) or self._death_layer.get(b.label)
            self.result.pairs.append(pair)
        self._latency(frame_us)

    def _note_death(self, side, exc: AgentError, program) -> None:
        """Name the first tensor the board never delivered: it stopped at or after its producer."""
        from qverify.client.results import TensorResult

        received = set(exc.received) | set(exc.outputs_received)
        order = tensor_order(program)
        pending = [(index, name, producer, op, placement) for name, (index, producer, op, placement) in order.items()
                   if producer and name not in received]
        if not pending or not self.o.dump_all:
            return
        index, name, producer, op, placement = min(pending)
        tensor = program.tensors[name]
        self._death_layer[side.label] = TensorResult(
            name=name, kind="layer", index=index, producer=producer, op=op, placement=placement,
            shape=list(tensor.shape), elements=0, scale=tensor.scale or None, max_abs_diff=0.0, within_digits=0,
            exact=0, off_by_one=0, beyond_one=0, max_lsb=0, cosine=0.0, passed=False,
            reason="the board stopped answering at or after this layer")

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


def _died_during_run(exc: AgentError) -> bool:
    """The board answered before and stopped in the middle of a run: a board failure, not the lab's."""
    return isinstance(exc, BoardUnreachable) or bool(exc.received)


def _death_message(exc: AgentError, program) -> str:
    got = len(exc.received)
    return (f"{DIED_MID_RUN} (crashed or hung) after delivering {got} tensor"
            f"{'s' if got != 1 else ''}: {str(exc).splitlines()[0][:200]}")


@functools.lru_cache(maxsize=64)
def _sha_cached(path: str, size: int, mtime_ns: int) -> str:
    from qverify.client.agent_client import file_sha256

    return file_sha256(Path(path))


def _sha(path: Path | None) -> str:
    if not path:
        return ""
    st = Path(path).stat()
    return _sha_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
