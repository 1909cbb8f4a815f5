"""Running one frame on every side of a verification: the board's runs (a dumping or plain run,
then the plain repeats) overlap the host's onnxruntime and simulator runs; a board that dies
mid-run is recorded with the first layer it never delivered.

:class:`FrameRuns` is a part of :class:`~qverify.client.verify.Verification` (it uses its
options ``o``, its files and ``_death_layer``).
"""
from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qverify.client.agent_client import AgentError, BoardUnreachable
from qverify.client.results import PLAIN_LABEL
from qverify.client.sides import BoardSide, SideOutput
from qverify.client.verdict import lookup_anchors, tensor_order

DIED_MID_RUN = "the board stopped answering during the run"


@dataclass
class BoardRuns:
    """The board's runs of one frame: the one the pairs compare, then those without dumps."""
    main: SideOutput
    main_dumps: bool  # the main run sent dumps (-r, or a lookup table's input)
    plains: list[SideOutput] = field(default_factory=list)
    failure: AgentError | None = None  # a plain run failed after the main run succeeded


class FrameRuns:
    """The frame-running part of a Verification."""

    def _plain_run_count(self, extra: frozenset[str]) -> int:
        """Plain runs (no dumps) besides the main run: with -r one, and --repeat N in all; without
        dumps the main run is itself the first of the N."""
        if self.o.dump_all:
            return self.o.repeat
        if extra:  # the main run dumps a lookup table's input: not plain
            return self.o.repeat if self.o.repeat > 1 else 0
        return self.o.repeat - 1

    def _board_runs(self, side: BoardSide, frame, extra: frozenset[str]) -> BoardRuns:
        """All the board's runs of one frame, one after the other (the board runs one at a time);
        together they overlap the host's work."""
        runs = BoardRuns(side.run(frame, self.o.dump_all, extra), self.o.dump_all or bool(extra))
        for _ in range(self._plain_run_count(extra)):
            try:
                runs.plains.append(side.run(frame))
            except AgentError as exc:
                runs.failure = exc
                break
        return runs

    def _run_sides(self, pool: ThreadPoolExecutor, sides: list, frame, broken: dict[str, str],
                   program, number: int = 0) -> tuple[dict[str, SideOutput], BoardRuns | None]:
        """Run one frame everywhere. The board works in its own process (or server thread), so
        its runs overlap the host's onnxruntime and simulator runs instead of adding to them."""
        outputs: dict[str, SideOutput] = {}
        board_runs = None
        live = [s for s in sides if s.label not in broken]
        remote = [s for s in live if s.kind == "board"]
        extra = frozenset(source for source, _ in lookup_anchors(program).values())
        futures = {s.label: pool.submit(self._board_runs, s, frame, extra) for s in remote}
        try:
            for side in live:
                if side.kind != "board":
                    outputs[side.label] = self._host_run(side, frame, extra, number)
            for side in remote:
                runs = None
                try:
                    runs = futures[side.label].result()
                    outputs[side.label] = runs.main
                    if runs.failure is not None:
                        raise runs.failure
                    board_runs = runs
                except AgentError as exc:
                    if not _died_during_run(exc):
                        raise
                    if runs is not None:  # it died in a plain run, after every dumped tensor had arrived
                        broken[side.label] = (f"{DIED_MID_RUN} (crashed or hung) in a plain run (no dumps): "
                                              f"{str(exc).splitlines()[0][:200]}")
                    else:
                        broken[side.label] = _death_message(exc, program)
                        self._note_death(side, exc, program)
                    broken[PLAIN_LABEL] = broken[side.label]
        except BaseException:  # Ctrl-C or a host-side failure: cancel the board's run, do not wait it out
            for side in remote:
                side.cancel()
            wait(futures.values(), timeout=10)
            raise
        return outputs, board_runs

    def _host_run(self, side, frame, extra: frozenset[str], number: int) -> SideOutput:
        """A host side's run, from the shared cache when another board's verification made it."""
        if self.o.host_cache is None:
            return side.run(frame, self.o.dump_all, extra)
        key = (side.kind, _sha(self.files.onnx), _sha(self.files.bin), tuple(self.o.inputs), self.o.seed, number,
               self.o.dump_all, extra, self.o.ort_opt)
        return self.o.host_cache.get(key, lambda: side.run(frame, self.o.dump_all, extra))

    @staticmethod
    def _plain_output(runs: BoardRuns, extra: frozenset[str]) -> SideOutput:
        """The first plain run as a side of the plain pairs. A lookup-table output is judged through
        its table's input, which a plain run does not send: it is taken from the dumping run, and
        the plain outputs must equal the dumping run's anyway (a finding otherwise)."""
        plain = runs.plains[0]
        anchors = {name: runs.main.tensors[name] for name in extra if name in runs.main.tensors}
        return SideOutput(tensors={**anchors, **plain.tensors}, seconds=plain.seconds, frame_us=plain.frame_us,
                          returned=plain.returned)

    def _note_death(self, side, exc: AgentError, program, always: bool = False) -> None:
        """Name the first tensor the board never delivered: it stopped at or after its producer."""
        from qverify.client.results import TensorResult

        received = set(exc.received) | set(exc.outputs_received)
        order = tensor_order(program)
        pending = [(index, name, producer, op, placement) for name, (index, producer, op, placement) in order.items()
                   if producer and name not in received]
        if not pending or not (self.o.dump_all or always):
            return
        index, name, producer, op, placement = min(pending)
        tensor = program.tensors[name]
        self._death_layer[side.label] = TensorResult(
            name=name, kind="layer", index=index, producer=producer, op=op, placement=placement,
            shape=list(tensor.shape), elements=0, scale=tensor.scale or None, max_abs_diff=0.0, within_digits=0,
            exact=0, off_by_one=0, beyond_one=0, max_lsb=0, cosine=0.0, passed=False,
            reason="the board stopped answering at or after this layer")


def add_board_distributions(collector, program, board: SideOutput) -> None:
    """One frame of the board's dumping run into a
    :class:`~qverify.client.accuracy.distributions.DistributionCollector`: every dumped tensor
    (int8 codes with their scale and zero point, or floats), and each layer's saturation and
    accumulator-overflow counts under its first output's name."""
    for name in board.dumped:
        observed, tensor = board.tensors.get(name), program.tensors.get(name)
        if observed is None or tensor is None:
            continue
        axis = -1 if tensor.info.logical_layout == "NHWC" else 1  # an image held as received: channels last
        if observed.codes is not None:
            collector.add(name, observed.codes, scale=observed.scale, zero_point=observed.zero_point,
                          channel_axis=axis)
        elif observed.raw_values is not None:
            collector.add(name, observed.raw_values, channel_axis=axis)
    for node in program.nodes:
        counts = board.layer_counts.get(node.name)
        if counts is not None and node.outputs:
            tensor = program.tensors.get(node.outputs[0])
            collector.add_counts(node.outputs[0], saturated=counts[0], acc_overflow=counts[1],
                                 elements=int(np.prod(tensor.shape)) if tensor is not None else None)


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
