"""The engines that run the same inputs, behind one interface (Polygraphy-style runners).

Each side is a context manager with ``run(frame, dump_all, extra) -> SideOutput`` (``extra``:
program tensors wanted besides the outputs):

* :class:`OnnxSide`: quant.onnx in onnxruntime. ``ort_opt="all"`` is onnxruntime's
  deployed reading (fused integer kernels), ``"disabled"`` the literal graph
  (dequantize -> float op -> quantize). Outputs always come from the unmodified graph;
  for ``-r`` a copy of the graph exposes the intermediate tensors the program names.
* :class:`SimulatorSide`: the shared integer simulator on the host.
* :class:`BoardSide`: a board (or the embedded emulated board) through its agent.

A :class:`SideOutput` maps program tensor names to :class:`Observed` values, so every
pair is compared by name whatever engine produced it.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qverify.client.inputs import Frame
from qverify.simulator.program import Program


@dataclass
class Observed:
    """One tensor as a side saw it: float values, or int8 codes (values derived when asked)."""
    raw_values: np.ndarray | None = None  # float, ONNX (logical) layout
    codes: np.ndarray | None = None  # int8 codes when the side holds the tensor quantized
    aligned: np.ndarray | None = None  # the raw aligned buffer (integer sides, -r)
    layout_problem: str = ""  # aligned buffer inconsistent with the valid one
    scale: float = 0.0
    zero_point: int = 0

    @property
    def values(self) -> np.ndarray:
        """float64 values (dequantized codes); computed once, only when a comparison needs them."""
        if self.raw_values is None:
            self.raw_values = _codes_to_values(self.codes, self.scale, self.zero_point)
        return self.raw_values


@dataclass
class SideOutput:
    tensors: dict[str, Observed] = field(default_factory=dict)  # program tensor name -> value
    seconds: float = 0.0
    frame_us: list[float] = field(default_factory=list)  # board's own timing (board side)
    # Board side: the outputs as the board returned them, and the tensors whose value in
    # ``tensors`` came from a dump (with -r an output's dump is what the pairs compare).
    returned: dict[str, Observed] = field(default_factory=dict)
    dumped: set[str] = field(default_factory=set)
    # Board side: node name -> (saturated, acc_overflow), the counts of the run (its timing's layers).
    layer_counts: dict[str, tuple[int, int]] = field(default_factory=dict)


class SideError(Exception):
    """A side could not run (the message says why); infrastructure, not inconsistency."""


def _codes_to_values(codes: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return (codes.astype(np.float64) - zero_point) * float(scale)


# ----------------------------------------------------------------------------- onnx


class OnnxSide:
    kind = "onnx"

    def __init__(self, path: Path, program: Program | None, ort_opt: str = "all", threads: int = 1) -> None:
        self.path = Path(path)
        self.program = program
        self.ort_opt = ort_opt
        self.threads = threads
        self.label = self.path.name
        self._session = None
        self._exposed: dict = {}  # frozenset of names (None: all) -> (session, output names)

    def _options(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if self.ort_opt == "all"
                                            else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        options.intra_op_num_threads = self.threads
        options.log_severity_level = 3
        return options

    def __enter__(self) -> "OnnxSide":
        return self  # sessions are made on first use: a run answered from a HostCache needs none

    def _main_session(self):
        if self._session is None:
            import onnxruntime as ort

            try:
                self._session = ort.InferenceSession(str(self.path), self._options(),
                                                     providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnxruntime raises its own exception types for bad files
                raise SideError(f"{self.path}: onnxruntime cannot load it ({str(exc).splitlines()[0][:300]})") from None
        return self._session

    def __exit__(self, *exc) -> None:
        self._session = None
        self._exposed = {}

    @property
    def session(self):
        return self._main_session()

    def _exposing_session(self, names: frozenset[str] | None):
        """A session on a copy of the graph whose outputs include the program tensors asked for
        (``None``: every program tensor ONNX computes); one per set of names."""
        if names not in self._exposed:
            import onnx
            import onnxruntime as ort

            model = onnx.load(str(self.path))
            produced = {o for node in model.graph.node for o in node.output}
            present = {o.name for o in model.graph.output}
            tensors = [t for t in (self.program.tensors.values() if self.program else [])
                       if names is None or t.name in names]
            wanted = [t.name for t in tensors] + [t.info.onnx_float_name for t in tensors if t.info.onnx_float_name]
            for name in wanted:
                if name in produced and name not in present:
                    model.graph.output.add().name = name
                    present.add(name)
            session = ort.InferenceSession(model.SerializeToString(), self._options(),
                                           providers=["CPUExecutionProvider"])
            self._exposed[names] = (session, [o.name for o in session.get_outputs()])
        return self._exposed[names]

    def run(self, frame: Frame, dump_all: bool = False, extra: frozenset[str] = frozenset(),
            consistent: bool = False) -> SideOutput:
        """``consistent``: every tensor from one session (the one exposing them all) and quantized
        tensors as codes, so each layer's output is what that session computed from its own inputs
        (the reference of an isolated run). Otherwise the outputs come from the unmodified graph."""
        start = time.perf_counter()
        session = self._main_session()
        names = [o.name for o in session.get_outputs()]
        try:
            single = ((dump_all or extra) and self.ort_opt == "disabled") or consistent
            raw = {} if single else dict(zip(names, session.run(names, frame.onnx)))
            if dump_all or extra:
                exposed, exposed_names = self._exposing_session(None if dump_all else frozenset(extra))
                more = dict(zip(exposed_names, exposed.run(exposed_names, frame.onnx)))
                raw = {**more, **raw}  # outputs from the unmodified graph win
        except Exception as exc:
            raise SideError(f"onnxruntime failed to run {self.path.name}: {str(exc).splitlines()[0][:300]}") from None
        out = SideOutput(seconds=time.perf_counter() - start)
        out.tensors = self._to_program_names(raw, prefer_codes=consistent)
        return out

    def _to_program_names(self, raw: dict[str, np.ndarray], prefer_codes: bool = False) -> dict[str, Observed]:
        """ONNX tensors -> program names; uint8 codes shifted to the program's int8."""
        if self.program is None:
            return {k: Observed(np.asarray(v, dtype=np.float64)) for k, v in raw.items()}
        tensors: dict[str, Observed] = {}
        onnx_outputs = list(self.program.proto.onnx_outputs)
        for name, t in self.program.tensors.items():
            value = raw.get(name)
            if value is None and t.info.onnx_float_name:
                value = raw.get(t.info.onnx_float_name)
            if value is None:
                continue
            tensors[name] = self._observed(value, t)
        for out, onnx_name in zip(self.program.outputs, onnx_outputs):
            if prefer_codes and tensors.get(out.name) is not None and tensors[out.name].codes is not None:
                continue
            if onnx_name in raw:  # the graph output (often the dequantized float) is the model's answer
                tensors[out.name] = self._observed(raw[onnx_name], out)
        return tensors

    @staticmethod
    def _observed(value: np.ndarray, t) -> Observed:
        value = np.asarray(value)
        if value.dtype in (np.uint8, np.int8) and t.quantized:
            codes = (value ^ np.uint8(0x80)).view(np.int8) if value.dtype == np.uint8 else value  # uint8 -> int8: -128
            return Observed(None, codes, scale=t.scale, zero_point=t.zero_point)
        return Observed(value.astype(np.float64))


# ----------------------------------------------------------------------- integer sides


def _valid_to_logical(array: np.ndarray, tensor) -> np.ndarray:
    """Board/simulator valid dumps and outputs are in the logical (ONNX) layout, except images."""
    if tensor.info.logical_layout == "NHWC" or array.shape == tuple(tensor.shape):
        return array
    return array.reshape(tensor.shape)


def observe_integer(tensor, valid: np.ndarray, aligned: np.ndarray | None = None) -> Observed:
    valid = _valid_to_logical(np.asarray(valid), tensor)
    if tensor.quantized:
        return Observed(None, valid.astype(np.int8, copy=False), aligned, scale=tensor.scale,
                        zero_point=tensor.zero_point)
    return Observed(valid.astype(np.float64), None, aligned)


class SimulatorSide:
    kind = "simulator"
    label = "simulator"

    def __init__(self, program: Program, layout: str = "valid") -> None:
        self.program = program
        self.layout = layout
        self._sim = None

    def __enter__(self) -> "SimulatorSide":
        from qverify.simulator import Simulator

        self._sim = Simulator(self.program)
        return self

    def __exit__(self, *exc) -> None:
        self._sim = None

    def run(self, frame: Frame, dump_all: bool = False, extra: frozenset[str] = frozenset()) -> SideOutput:
        out = SideOutput()
        tensors = self.program.tensors

        def sink(dump) -> None:
            out.tensors[dump.tensor.name] = observe_integer(dump.tensor, dump.valid, dump.aligned)

        start = time.perf_counter()
        dump = "all" if dump_all else (sorted(extra) if extra else None)
        result = self._sim.run(frame.board, dump=dump, dump_layout=self.layout if dump_all else "valid",
                               sink=sink if dump else None)
        out.seconds = time.perf_counter() - start
        for name, value in result.outputs.items():
            if name not in out.tensors:
                out.tensors[name] = observe_integer(tensors[name], value)
        return out


class BoardSide:
    """A model on a board: ``client`` is a connected :class:`~qverify.client.agent_client.BoardClient`.

    With dumps (``-r``) the board sends each tensor once, as the aligned buffer it holds
    (padding included); the valid tensor is cut out of it here with the shapes the board
    reports, and the padding is checked. Asking for both layouts would send every tensor
    twice for no extra information.
    """
    kind = "board"
    label = "board"

    def __init__(self, client, sha256: str, program: Program, chunk_bytes: int = 4 << 20,
                 native_isolation: bool = True, core: int | None = None) -> None:
        self.client = client
        self.core = core  # NPU core of every run (None: any free core)
        self.sha256 = sha256
        self.program = program
        self.chunk_bytes = chunk_bytes
        self.native_isolation = native_isolation  # False: rewire even when the agent could isolate

    def __enter__(self) -> "BoardSide":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def cancel(self) -> None:
        """Abandon a run in flight: closing the channel cancels the call; the board stays usable."""
        self.client.close()

    def run(self, frame: Frame, dump_all: bool = False, extra: frozenset[str] = frozenset()) -> SideOutput:
        start = time.perf_counter()
        dump = "all" if dump_all else (sorted(extra) if extra else None)
        outcome = self.client.run(self.sha256, frame.board, dump=dump, layout="aligned",
                                  chunk_bytes=self.chunk_bytes, core=self.core)
        out = self._observe(outcome)
        out.seconds = time.perf_counter() - start
        return out

    @property
    def can_isolate(self) -> bool:
        """Whether the board runs node groups on fed tensors itself (agent capability "isolate")."""
        info = getattr(self.client, "agent_info", None)
        return self.native_isolation and info is not None and "isolate" in info.capabilities

    def run_isolated(self, frame: Frame, requests: list) -> SideOutput:
        """Every layer fed the reference's tensors; ``requests`` are (groups, feeds) pairs, groups as
        node index ranges (see :mod:`qverify.client.isolation`). Aligned buffers, padding checked.

        A board that isolates itself (capability "isolate", protocol 1.1) gets RunRequest.isolate;
        any other gets, per request, the program rewired so each group reads its feeds as inputs,
        pushed and run whole."""
        if not self.can_isolate:
            return self._run_rewired(frame, requests)
        start = time.perf_counter()
        out = SideOutput()
        nodes = self.program.nodes
        for groups, feeds in requests:
            named = [(nodes[a].name, nodes[b].name) for a, b in groups]
            try:
                outcome = self.client.run(self.sha256, frame.board, dump="all", layout="aligned",
                                          chunk_bytes=self.chunk_bytes, isolate=True, feeds=feeds, groups=named,
                                          core=self.core)
            except Exception as exc:  # what earlier requests delivered counts as received too
                if hasattr(exc, "received"):
                    exc.received = sorted(out.dumped) + list(exc.received)
                raise
            part = self._observe(outcome)
            out.tensors.update({k: v for k, v in part.tensors.items() if k in part.dumped})
            out.dumped |= part.dumped
        out.seconds = time.perf_counter() - start
        return out

    def _run_rewired(self, frame: Frame, requests: list) -> SideOutput:
        import hashlib

        from qverify.client.isolation import FED_SUFFIX, feed_layout, rewire
        from qverify.simulator import modelfile

        start = time.perf_counter()
        out = SideOutput()
        for groups, feeds in requests:
            proto, added = rewire(self.program.proto, groups, set(feeds))
            data = modelfile.encode(proto)
            sha = hashlib.sha256(data).hexdigest()
            if not self.client.has(sha):
                self.client.push_bytes(data, sha)
            inputs = {name: frame.board[name] for name in proto.inputs if name in frame.board}
            for name in added:
                tensor = self.program.tensors[name[:-len(FED_SUFFIX)]]
                inputs[name] = feed_layout(feeds[name[:-len(FED_SUFFIX)]], tensor.quantized)
            produced = {name for a, b in groups for node in self.program.nodes[a:b + 1] for name in node.outputs}
            outcome = self.client.run(sha, inputs, dump=sorted(produced), layout="aligned",
                                      chunk_bytes=self.chunk_bytes, core=self.core)
            part = self._observe(outcome)
            out.tensors.update({k: v for k, v in part.tensors.items() if k in produced and k in part.dumped})
            out.dumped |= produced & part.dumped
        out.seconds = time.perf_counter() - start
        return out

    def _observe(self, outcome) -> SideOutput:
        """A RunOutcome as program tensors: valid cut out of each aligned dump, padding checked."""
        from qverify.simulator.layout import to_valid

        out = SideOutput()
        tensors = self.program.tensors
        for (name, layout), dumped in outcome.dumps.items():
            tensor = tensors.get(name)
            if tensor is None:
                continue
            aligned = dumped.array
            valid = aligned if tensor.info.logical_layout else to_valid(aligned, tuple(tensor.shape))
            observed = observe_integer(tensor, valid, aligned)
            observed.layout_problem = check_aligned(tensor, aligned, valid, self.program.target)
            out.tensors[name] = observed
            out.dumped.add(name)
        for name, value in outcome.outputs.items():
            if name in tensors:
                out.returned[name] = observe_integer(tensors[name], value)
                out.tensors.setdefault(name, out.returned[name])
        if outcome.timing is not None:
            out.frame_us = list(outcome.timing.frame_us)
            out.layer_counts = {layer.node: (int(layer.saturated), int(layer.acc_overflow))
                                for layer in outcome.timing.layers}
        return out


def check_aligned(tensor, aligned: np.ndarray, valid: np.ndarray, target) -> str:
    """'' when the aligned buffer holds exactly the valid tensor, padded with the zero point
    (the hardware's convention: padding must not leak into the next layer's arithmetic)."""
    from qverify.simulator.layout import to_aligned

    if tensor.info.logical_layout:  # an image held as received: the aligned buffer is the tensor
        return "" if np.array_equal(aligned, valid) else "aligned buffer differs from the valid tensor"
    fill = tensor.zero_point if tensor.quantized else 0
    expected = to_aligned(valid, target, fill)
    if expected.shape != aligned.shape:
        return f"aligned shape {list(aligned.shape)} is not the target's {list(expected.shape)}"
    bad = int(np.count_nonzero(aligned != expected))
    return f"{bad} padding elements are not the zero point ({fill})" if bad else ""


class HostCache:
    """Host-side results shared by verifications of the same model on several boards (a farm
    run): onnxruntime and the simulator give the same answer for the same inputs whatever
    board is checked, so each is computed once. Thread-safe; one computation per key."""

    def __init__(self) -> None:
        self._values: dict = {}
        self._locks: dict = {}
        self._guard = threading.Lock()

    def get(self, key, compute):
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._values:
                self._values[key] = compute()
            return self._values[key]
