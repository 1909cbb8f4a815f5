"""Execute a program the way the integer NPU does, with dump hooks and per-layer stats.

Results are a pure function of (program, inputs): integer kernels use int64 numpy and
the exact GEMM of ``qverify.simulator.gemm``; nothing depends on threads or machine.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal

import numpy as np

from qverify.simulator import fixedpoint, layout
from qverify.simulator.errors import InputError, SimulatorError
from qverify.simulator.ops import registry
from qverify.simulator.program import NodeView, Program, TensorView
from qverify.v1 import model_pb2

Layout = Literal["valid", "aligned", "both"]


class RunCancelled(SimulatorError):
    """A run stopped at a layer boundary because its caller asked (deadline, cancel)."""

    def __init__(self, message: str, layers_done: int) -> None:
        super().__init__(message)
        self.layers_done = layers_done


@dataclass
class LayerStats:
    """What one node did in one run."""
    node: str
    op: str
    onnx_op: str
    placement: str  # "npu" or "cpu"
    seconds: float = 0.0
    acc_overflow: int = 0  # accumulator values beyond int32 (saturated to int32)
    saturated: int = 0  # outputs clamped to the int8 range


@dataclass
class Dump:
    """One intermediate tensor as the board holds it, with its metadata."""
    tensor: TensorView
    producer: str
    valid: np.ndarray | None
    aligned: np.ndarray | None
    aligned_shape: tuple[int, ...]
    aligned_strides: tuple[int, ...]
    aligned_layout: str


@dataclass
class RunResult:
    outputs: dict[str, np.ndarray]  # program output name -> valid-layout array
    layers: list[LayerStats] = field(default_factory=list)
    seconds: float = 0.0


DumpSink = Callable[[Dump], None]


def quantize(x: np.ndarray, scale: float, zero_point: int) -> tuple[np.ndarray, int]:
    """Float -> int8 like ONNX QuantizeLinear (round half to even, saturate); + saturations."""
    q = np.rint(np.asarray(x, dtype=np.float32) / np.float32(scale)) + zero_point
    saturated = int(np.count_nonzero((q < -128) | (q > 127)))
    return np.clip(q, -128, 127).astype(np.int8), saturated


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """int8 -> float32 like ONNX DequantizeLinear."""
    return ((q.astype(np.int32) - zero_point).astype(np.float32) * np.float32(scale)).astype(np.float32)


def feed_shape(tensor: TensorView) -> tuple[int, ...]:
    """Shape the board expects for a program input: 4-D int8 inputs are NHWC (native, unpadded)."""
    if tensor.quantized and len(tensor.shape) == 4:
        n, c, h, w = tensor.shape
        return (n, h, w, c)
    return tensor.shape


def node_ranges(program: Program, groups: list[tuple[str, str]] | None) -> list[tuple[int, int]]:
    """Node-name ranges -> index ranges [start, end] of ``program``; None or [] is every node alone.

    Raises InputError for unknown names, reversed or overlapping ranges.
    """
    if not groups:
        return [(i, i) for i in range(len(program.nodes))]
    index = {node.name: i for i, node in enumerate(program.nodes)}
    ranges = []
    for first, last in groups:
        for name in (first, last):
            if name not in index:
                raise InputError(f"no node named '{name}' in the program; see 'qverify info'")
        if index[last] < index[first]:
            raise InputError(f"node group '{first}'..'{last}' is reversed: '{last}' runs before '{first}'")
        ranges.append((index[first], index[last]))
    ranges.sort()
    for (_, end), (start, _) in zip(ranges, ranges[1:]):
        if start <= end:
            raise InputError(f"node groups overlap at node '{program.nodes[start].name}'; give disjoint ranges")
    return ranges


def check_feeds(program: Program, feeds: dict[str, np.ndarray]) -> None:
    """Feeds of an isolated run are program tensors, in their dtype and logical shape (InputError)."""
    for name, value in feeds.items():
        tensor = program.tensors.get(name)
        if tensor is None:
            raise InputError(f"feed '{name}' is not a tensor of the program; see 'qverify info'")
        if value.dtype != tensor.dtype or tuple(value.shape) != tensor.shape:
            raise InputError(f"feed '{name}' must be {tensor.dtype}{list(tensor.shape)} (logical layout), "
                             f"got {value.dtype}{list(value.shape)}")


class Simulator:
    """Runs one program. Reusable across runs; holds no per-run state."""

    def __init__(self, program: Program | model_pb2.Program) -> None:
        self.program = program if isinstance(program, Program) else Program(program)
        registry.load_kernels()
        self._kernels = []
        for node in self.program.nodes:
            if node.on_cpu:
                self._kernels.append(self._cpu_runner(node))
            else:
                self._kernels.append(registry.npu_kernel(node.op))
        # Last reader of every tensor, so intermediates are freed as soon as possible.
        last_use: dict[str, int] = {}
        for index, node in enumerate(self.program.nodes):
            for name in node.inputs:
                last_use[name] = index
        keep = set(self.program.proto.outputs)
        self._free_after: list[list[str]] = [[] for _ in self.program.nodes]
        for name, index in last_use.items():
            if name not in keep and name not in self.program.constants:
                self._free_after[index].append(name)

    def intercept(self, node_name: str, wrapper: Callable[[Callable], Callable]) -> None:
        """Replace the kernel of node ``node_name`` by ``wrapper(kernel)``.

        The emulated board's fault injection uses this to make a layer misbehave.
        """
        for index, node in enumerate(self.program.nodes):
            if node.name == node_name:
                self._kernels[index] = wrapper(self._kernels[index])
                return
        raise InputError(f"no node named '{node_name}' in the program; see 'qverify info'")

    def node_for_tensor(self, name: str) -> str:
        """The node producing tensor ``name`` (or ``name`` itself if it is a node)."""
        for node in self.program.nodes:
            if node.name == name or name in node.outputs:
                return node.name
        raise InputError(f"no node or tensor named '{name}' in the program; see 'qverify info'")

    def _cpu_runner(self, node: NodeView) -> Callable:
        kernel = registry.cpu_kernel(node.onnx_op)
        tensors = self.program.tensors

        def run_on_cpu(node: NodeView, inputs: list, stats: LayerStats) -> list[np.ndarray]:
            floats = []
            for name, value in zip(node.inputs, inputs):
                info = tensors.get(name)
                if value is not None and info is not None and info.quantized:
                    value = dequantize(value, info.scale, info.zero_point)
                floats.append(value)
            outputs = kernel(floats, node.attrs)
            results = []
            for name, value in zip(node.outputs, outputs):
                info = tensors[name]
                if info.quantized:
                    value, saturated = quantize(value, info.scale, info.zero_point)
                    stats.saturated += saturated
                else:
                    value = np.asarray(value).astype(info.dtype, copy=False)
                results.append(value)
            return results

        return run_on_cpu

    def check_inputs(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Validate feeds (board layout) and convert them to the logical layout."""
        expected = {t.name: t for t in self.program.inputs}
        unknown = sorted(set(inputs) - set(expected))
        if unknown:
            raise InputError(f"unknown input '{unknown[0]}'; the model's inputs are: {', '.join(expected)}")
        logical = {}
        for name, tensor in expected.items():
            if name not in inputs:
                raise InputError(f"missing input '{name}' ({describe(tensor)})")
            value = np.asarray(inputs[name])
            want_shape = feed_shape(tensor)
            if value.dtype != tensor.dtype or tuple(value.shape) != want_shape:
                raise InputError(f"input '{name}' expects {tensor.dtype}{list(want_shape)}, "
                                 f"got {value.dtype}{list(value.shape)}")
            logical[name] = layout.nhwc_to_nchw(value) if want_shape != tensor.shape else value
        return logical

    def run(self, inputs: dict[str, np.ndarray], dump: Iterable[str] | Literal["all", "outputs"] | None = None,
            dump_layout: Layout = "valid", sink: DumpSink | None = None,
            should_stop: Callable[[], bool] | None = None) -> RunResult:
        """Run once. ``dump`` selects tensors passed to ``sink`` as they are produced.

        ``should_stop`` is asked before every layer; when it says yes the run ends there with
        RunCancelled, so a caller that gave up (a deadline) frees the core at the next layer
        boundary instead of when the whole network is done.
        """
        env: dict[str, np.ndarray] = dict(self.program.constants)
        env.update(self.check_inputs(inputs))
        wanted = self._dump_selection(dump)
        result = RunResult(outputs={})
        if sink is not None and wanted:
            for tensor in self.program.inputs:
                if tensor.name in wanted:
                    sink(self._make_dump(tensor, "", env[tensor.name], dump_layout))
        with fixedpoint.rounding(self.program.target.rounding):
            self._execute(env, wanted, dump_layout, sink, result, should_stop)
        result.outputs = {t.name: env[t.name] for t in self.program.outputs}
        return result

    def _execute(self, env: dict, wanted: set[str], dump_layout: Layout, sink: DumpSink | None,
                 result: RunResult, should_stop: Callable[[], bool] | None = None) -> None:
        started = time.perf_counter()
        for node, kernel, free in zip(self.program.nodes, self._kernels, self._free_after):
            if should_stop is not None and should_stop():
                raise RunCancelled(f"run stopped before layer '{node.name}' ({len(result.layers)} of "
                                   f"{len(self.program.nodes)} layers done): its caller gave up", len(result.layers))
            args = [env[name] if name else None for name in node.inputs]
            self._step(node, kernel, args, env, wanted, dump_layout, sink, result)
            for name in free:
                env.pop(name, None)
        result.seconds = time.perf_counter() - started

    def node_groups(self, groups: list[tuple[str, str]] | None) -> list[tuple[int, int]]:
        """Node-name ranges -> index ranges [start, end]; see :func:`node_ranges`."""
        return node_ranges(self.program, groups)

    def run_isolated(self, inputs: dict[str, np.ndarray], feeds: dict[str, np.ndarray],
                     groups: list[tuple[str, str]] | None = None,
                     dump: Iterable[str] | Literal["all", "outputs"] | None = "all", dump_layout: Layout = "valid",
                     sink: DumpSink | None = None, should_stop: Callable[[], bool] | None = None) -> RunResult:
        """Run each node group on its own, reading what it does not compute from ``feeds``.

        ``feeds`` are logical-layout arrays of program tensors (a reference's values);
        ``inputs`` may give program inputs (board feed layout) instead. Each group's outputs
        then measure that group alone, not the error accumulated before it. A tensor a
        group needs that is neither fed, an input nor a constant is an InputError naming it.
        """
        ranges = self.node_groups(groups)
        given = self.check_inputs(inputs) if inputs else {}
        check_feeds(self.program, feeds)
        wanted = self._dump_selection(dump)
        result = RunResult(outputs={})
        started = time.perf_counter()
        with fixedpoint.rounding(self.program.target.rounding):
            for start, end in ranges:
                env: dict[str, np.ndarray] = {}
                for index in range(start, end + 1):
                    node, kernel = self.program.nodes[index], self._kernels[index]
                    if should_stop is not None and should_stop():
                        raise RunCancelled(f"isolated run stopped before layer '{node.name}': its caller gave up",
                                           len(result.layers))
                    args = [self._isolated_input(name, env, feeds, given, node) if name else None
                            for name in node.inputs]
                    self._step(node, kernel, args, env, wanted, dump_layout, sink, result)
                result.outputs.update({t.name: env[t.name] for t in self.program.outputs if t.name in env})
        result.seconds = time.perf_counter() - started
        return result

    def _step(self, node: NodeView, kernel: Callable, args: list, env: dict, wanted: set[str], dump_layout: Layout,
              sink: DumpSink | None, result: RunResult) -> None:
        """Run one node on ``args``: its outputs into ``env``, its stats into ``result``, its dumps to ``sink``."""
        stats = LayerStats(node.name, node.op, node.onnx_op, "cpu" if node.on_cpu else "npu")
        t0 = time.perf_counter()
        outputs = kernel(node, args, stats)
        stats.seconds = time.perf_counter() - t0
        result.layers.append(stats)
        for name, value in zip(node.outputs, outputs):
            env[name] = value
            if sink is not None and name in wanted:
                sink(self._make_dump(self.program.tensors[name], node.name, value, dump_layout))

    def _isolated_input(self, name: str, env: dict, feeds: dict, given: dict, node: NodeView) -> np.ndarray:
        for source in (env, feeds, given, self.program.constants):
            if name in source:
                return source[name]
        raise InputError(f"node '{node.name}' ({node.op}) reads '{name}', which is neither fed nor computed in its "
                         "group; feed it, or put the node that writes it in the same group")

    def _dump_selection(self, dump) -> set[str]:
        if dump is None:
            return set()
        if dump == "all":
            return set(self.program.tensors)
        if dump == "outputs":
            return {t.name for t in self.program.outputs}
        names = set(dump)
        unknown = sorted(names - set(self.program.tensors))
        if unknown:
            raise InputError(f"no tensor named '{unknown[0]}' in the program; see 'qverify info'")
        return names

    def _make_dump(self, tensor: TensorView, producer: str, value: np.ndarray, dump_layout: Layout) -> Dump:
        target = self.program.target
        shape = tuple(value.shape)
        valid = value if dump_layout in ("valid", "both") else None
        aligned = None
        if tensor.info.logical_layout:  # an image held as received: aligned is the tensor itself
            if dump_layout in ("aligned", "both"):
                aligned = value
            return Dump(tensor, producer, valid, aligned, shape, layout.element_strides(shape),
                        tensor.info.logical_layout)
        if dump_layout in ("aligned", "both"):
            pad = tensor.zero_point if tensor.quantized else 0
            aligned = layout.to_aligned(value, target, pad)
        a_shape = layout.aligned_shape(shape, target)
        return Dump(tensor, producer, valid, aligned, a_shape, layout.element_strides(a_shape),
                    layout.aligned_layout(shape))


def describe(tensor: TensorView) -> str:
    text = f"{tensor.dtype}{list(feed_shape(tensor))}"
    if tensor.quantized:
        text += f" scale={tensor.scale:.6g} zero_point={tensor.zero_point}"
    return text
