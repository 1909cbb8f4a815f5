"""The ``openvino`` backend: a real runtime nobody here wrote, as a board (``pip install 'qverify[openvino]'``).

    qverify compile quant.onnx --target openvino-cpu -o model.ov
    qverify-agent serve --backend openvino [--device CPU]

model.ov is a qverify model container whose program describes the tensors and whose
``runtime_model`` is the quantized ONNX (see ``openvino_compile``). OpenVINO reads it from
memory, keeping every ONNX tensor name, and those names are the program's tensor names:

* a plain run compiles the model as it is (no extra outputs) and returns the program's
  outputs as int8 codes (uint8 ONNX codes shifted by 128, as the simulator holds them);
* a dumping run compiles, once per model, a copy with the program's tensors added as
  outputs. Exposing a tensor can change how OpenVINO fuses the graph, and so the final
  outputs (ppocr_cls moves by several LSB): the dumping run returns what *it* computed,
  so the client's plain-vs-dumping comparison sees the difference instead of hiding it;
* an isolated run builds, per node group, a sub-model whose inputs are Parameters put in
  place of the group's input tensors (found by their ONNX names) and whose results are the
  group's outputs; compiled once per (model, group).

Always compiled with f32 inference precision: OpenVINO's default on CPUs with bf16
support is bf16, which would make results depend on the host's ISA. One thread, one
stream: a board runs one inference at a time and results stay repeatable.

``openvino`` is imported lazily (at construction), never at module import; the agent
does not import onnx or onnxruntime here.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np

from qverify.agent.backends.base import Backend, BackendError, BackendInfo, ModelInvalid, ModelMismatch
from qverify.agent.backends.openvino_values import ONNX_UINT8, logical_input, to_program, to_runtime  # noqa: F401
from qverify.agent.backends.program_backed import ModelCache, ProgramBackedModel, load_program
from qverify.simulator import layout
from qverify.simulator.errors import InputError
from qverify.simulator.executor import Dump, RunCancelled, RunResult, check_feeds, dequantize, node_ranges
from qverify.simulator.program import Program
from qverify.simulator.targets import TargetProfile, get_target

log = logging.getLogger("qverify.agent")

TARGET = "openvino-cpu"
RUNTIME_FORMAT = "onnx"
INSTALL = "pip install 'qverify[openvino]'"


def _import_openvino():
    try:
        import openvino
        import openvino.properties as props
        import openvino.properties.hint as hints
    except ImportError as exc:
        raise BackendError(f"the openvino backend needs OpenVINO, which is not importable ({exc}); {INSTALL}") \
            from None
    return openvino, props, hints


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


class OpenVinoModel(ProgramBackedModel):
    """One model.ov loaded on OpenVINO: the plain compiled model, and lazily the dumping and group models."""

    def __init__(self, backend: "OpenVinoBackend", program: Program, label: str) -> None:
        self.backend = backend
        self.program = program
        self.label = label
        self._lock = threading.Lock()  # one inference at a time per model (infer requests are not shared)
        ov = backend.ov
        try:
            model = backend.core.read_model(model=bytes(program.proto.runtime_model))
        except Exception as exc:  # OpenVINO raises RuntimeError and friends for a bad ONNX
            raise ModelInvalid(f"{label}: OpenVINO cannot read its ONNX model ({_first_line(exc)}); recompile "
                               "it with 'qverify compile quant.onnx --target openvino-cpu -o model.ov'") from None
        # Dynamic ONNX dims (PP-OCR's H, W) are fixed at the shapes the program was compiled at.
        shapes = {}
        for onnx_name, tensor in zip(program.proto.onnx_inputs, program.inputs):
            shapes[onnx_name] = ov.PartialShape(list(tensor.shape))
        try:
            if shapes:
                model.reshape(shapes)
        except Exception as exc:
            raise ModelInvalid(f"{label}: OpenVINO cannot fix its input shapes {shapes} ({_first_line(exc)}); "
                               "recompile it with --input-shape") from None
        self.model = model
        self.ports = {name: port for op in model.get_ordered_ops() for port in op.outputs()
                      for name in port.get_names()}
        missing = [n for n in program.tensors if n not in self.ports]
        if missing:
            raise ModelInvalid(f"{label}: OpenVINO's model has no tensor '{missing[0]}' (and {len(missing) - 1} "
                               "more) that the program describes; recompile the model.ov from its quant.onnx")
        self.producer = {name: node.name for node in program.nodes for name in node.outputs}
        self.plain = self._compile(model, "the model")
        self._dumping: OrderedDict[frozenset | None, object] = OrderedDict()
        self._isolating: dict[tuple, object] = {}

    # ---- compiling
    def _compile(self, model, what: str):
        try:
            return self.backend.core.compile_model(model, self.backend.device, self.backend.config)
        except Exception as exc:
            raise BackendError(f"{self.label}: OpenVINO could not compile {what} for {self.backend.device} "
                               f"({_first_line(exc)})") from None

    def _dumping_model(self, names: frozenset | None):
        """Compiled copy with program tensors as extra outputs (``None``: all of them); a few kept per model."""
        compiled = self._dumping.get(names)
        if compiled is None:
            model = self.model.clone()
            present = {n for port in model.outputs for n in port.get_names()}
            wanted = [n for n in (self.program.tensors if names is None else sorted(names)) if n not in present]
            if wanted:
                model.add_outputs(wanted)
            compiled = self._compile(model, f"the model with {len(wanted)} tensors exposed")
            self._dumping[names] = compiled
            while len(self._dumping) > 4:
                self._dumping.popitem(last=False)
        return compiled

    def _isolating_model(self, ranges: list[tuple[int, int]]):
        """One compiled model holding every node group of ``ranges`` as its own island.

        Each group's input tensors (found by their ONNX names) are replaced, for their consumers,
        by Parameters; its outputs become Results. Every input a group reads from outside is cut,
        so no island reaches another or the model's own inputs: each computes its layers from
        the fed tensors alone -- a sub-model per group, compiled and run once for all of them
        (one compile instead of one per layer: 1-4 s rather than 10-30 s on the zoo's models).
        Cached per set of groups (the client asks the same plan for every frame).
        """
        key = tuple(ranges)
        cached = self._isolating.get(key)
        if cached is not None:
            return cached
        ov = self.backend.ov
        from openvino import opset13 as ops

        model = self.model.clone()
        ports = {name: port for op in model.get_ordered_ops() for port in op.outputs() for name in port.get_names()}
        plan = []  # per group: (its input names, its output names)
        cut: dict[str, object] = {}
        for start, end in ranges:
            nodes = self.program.nodes[start:end + 1]
            inside = {name for node in nodes for name in node.outputs}
            inputs = list(dict.fromkeys(name for node in nodes for name in node.inputs
                                        if name and name not in inside and name not in self.program.constants))
            plan.append((inputs, [name for node in nodes for name in node.outputs]))
            cut.update(dict.fromkeys(inputs))
        params, types = [], {}
        for name in cut:
            source = ports[name]
            param = ops.parameter(source.get_partial_shape(), source.get_element_type(), name=name)
            param.output(0).set_names({f"{name}:fed"})  # the tensor's own name stays on its producer
            for target in list(source.get_target_inputs()):
                target.replace_source_output(param.output(0))
            params.append(param)
            types[f"{name}:fed"] = source.get_element_type().get_type_name()
        outputs = list(dict.fromkeys(name for _, names in plan for name in names))
        try:
            sub = ov.Model([ops.result(ports[name]) for name in outputs], params, "isolated groups")
        except Exception as exc:  # a group whose outputs reach a tensor it was not cut at
            raise BackendError(f"{self.label}: its node groups cannot be cut out of OpenVINO's model "
                               f"({_first_line(exc)})") from None
        compiled = self._compile(sub, f"{len(ranges)} isolated node groups")
        self._isolating[key] = (compiled, plan, types)
        while len(self._isolating) > 8:
            self._isolating.pop(next(iter(self._isolating)))
        return self._isolating[key]

    # ---- values: program <-> OpenVINO
    def _onnx_feed(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Board feeds (program inputs, feed layout: NHWC int8 codes) -> the float ONNX inputs.

        The inverse of what the client does for a board: dequantize the codes with the input's
        scale and zero point and put them back in NCHW.
        """
        feed = {}
        for onnx_name, tensor in zip(self.program.proto.onnx_inputs, self.program.inputs):
            if tensor.name not in inputs:
                raise InputError(f"input '{tensor.name}' is missing")
            value = logical_input(tensor, inputs[tensor.name])
            feed[onnx_name] = dequantize(value, tensor.scale, tensor.zero_point) if tensor.quantized else value
        return feed

    def _dump(self, name: str, value: np.ndarray, dump_layout: str) -> Dump:
        """A Dump as the simulator makes one, in the openvino-cpu profile's layout (NHWC, no padding)."""
        tensor = self.program.tensors[name]
        target = self.program.target
        shape = tuple(value.shape)
        valid = value if dump_layout in ("valid", "both") else None
        aligned = layout.to_aligned(value, target, tensor.zero_point if tensor.quantized else 0) \
            if dump_layout in ("aligned", "both") else None
        a_shape = layout.aligned_shape(shape, target)
        return Dump(tensor, self.producer.get(name, ""), valid, aligned, a_shape, layout.element_strides(a_shape),
                    layout.aligned_layout(shape))

    def _selection(self, dump) -> frozenset | None:
        if dump == "all":
            return None
        if dump == "outputs":
            return frozenset(t.name for t in self.program.outputs)
        names = frozenset(dump)
        unknown = sorted(names - set(self.program.tensors))
        if unknown:
            raise InputError(f"no tensor named '{unknown[0]}' in the model; see 'qverify info'")
        return names

    def _infer(self, compiled, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every named output of one inference: tensor name -> array (copied out of OpenVINO's buffers)."""
        with self._lock:
            request = compiled.create_infer_request()
            try:
                request.infer(feed)
            except Exception as exc:
                raise BackendError(f"{self.label}: OpenVINO failed to run it ({_first_line(exc)})") from None
            out = {}
            for port in compiled.outputs:
                value = np.array(request.get_tensor(port).data, copy=True)
                for name in port.get_names():
                    out[name] = value
            return out

    # ---- runs
    def _run(self, inputs: dict[str, np.ndarray], dump: object, dump_layout: str,
             sink: Callable[[Dump], None] | None, core: int, should_stop: Callable[[], bool] | None) -> RunResult:
        if should_stop is not None and should_stop():
            raise RunCancelled("run stopped before it started: its caller gave up", 0)
        start = time.perf_counter()
        feed = self._onnx_feed(inputs)
        names = None if dump is None else self._selection(dump)
        compiled = self.plain if dump is None else self._dumping_model(names)
        values = self._infer(compiled, feed)
        result = RunResult(outputs={})
        for tensor, onnx_name in zip(self.program.outputs, self.program.proto.onnx_outputs):
            value = values.get(tensor.name)
            result.outputs[tensor.name] = to_program(tensor, value if value is not None else values[onnx_name])
        if dump is not None and sink is not None:
            wanted = set(self.program.tensors) if names is None else set(names)
            for name in self._order(wanted):
                value = result.outputs.get(name)
                if value is None:
                    if name not in values:
                        continue
                    value = to_program(self.program.tensors[name], values[name])
                sink(self._dump(name, value, dump_layout))
        result.seconds = time.perf_counter() - start
        return result

    def _order(self, names: set[str]) -> list[str]:
        """Program inputs, then node outputs in execution order (what the simulator dumps in)."""
        ordered = [t.name for t in self.program.inputs] + [n for node in self.program.nodes for n in node.outputs]
        return [n for n in dict.fromkeys(ordered) if n in names]

    def _run_isolated(self, inputs: dict[str, np.ndarray], feeds: dict[str, np.ndarray],
                      groups: list[tuple[str, str]], dump: object, dump_layout: str,
                      sink: Callable[[Dump], None] | None, core: int,
                      should_stop: Callable[[], bool] | None) -> RunResult:
        ranges = self._ranges(groups)
        check_feeds(self.program, feeds)
        given = {t.name: logical_input(t, inputs[t.name]) for t in self.program.inputs if t.name in inputs}
        wanted = set(self.program.tensors) if dump is None else (self._selection(dump) or set(self.program.tensors))
        if should_stop is not None and should_stop():
            raise RunCancelled("isolated run stopped before its first layer: its caller gave up", 0)
        started = time.perf_counter()
        compiled, plan, types = self._isolating_model(ranges)
        feed = {}
        for (start, end), (group_inputs, _) in zip(ranges, plan):
            for name in group_inputs:
                value = feeds.get(name, given.get(name))
                if value is None:
                    node = next(n for n in self.program.nodes[start:end + 1] if name in n.inputs)
                    raise InputError(f"node '{node.name}' ({node.op}) reads '{name}', which is neither fed nor "
                                     "computed in its group; feed it, or put the node that writes it in the same "
                                     "group")
                feed[f"{name}:fed"] = to_runtime(self.program.tensors[name], value, types[f"{name}:fed"])
        values = self._infer(compiled, feed)
        result = RunResult(outputs={})
        outputs = {t.name for t in self.program.outputs}
        for (start, _), (_, group_outputs) in zip(ranges, plan):
            if should_stop is not None and should_stop():  # between layers, as they are delivered
                raise RunCancelled(f"isolated run stopped before layer '{self.program.nodes[start].name}': its "
                                   "caller gave up", start)
            for name in group_outputs:
                value = to_program(self.program.tensors[name], values[name])
                if name in outputs:
                    result.outputs[name] = value
                if sink is not None and name in wanted:
                    sink(self._dump(name, value, dump_layout))
        result.seconds = time.perf_counter() - started
        return result

    def _ranges(self, groups: list[tuple[str, str]] | None) -> list[tuple[int, int]]:
        """Node-name ranges -> index ranges, by the simulator's rules (known names, in order, disjoint)."""
        return node_ranges(self.program, groups)


class OpenVinoBackend(Backend):
    """OpenVINO on one device (``CPU``) as a board. Loaded models are cached by sha256."""

    def __init__(self, target: TargetProfile | None = None, device: str = "CPU", cache_size: int = 4,
                 max_tensor_bytes: int | None = None) -> None:
        self.ov, props, hints = _import_openvino()
        # The board's target is OpenVINO's own profile whatever the agent's --target default says.
        self.target = target if target is not None and target.name.startswith("openvino") else get_target(TARGET)
        self.device = device or "CPU"
        self.max_tensor_bytes = max_tensor_bytes
        try:
            self.core = self.ov.Core()
            devices = list(self.core.available_devices)
        except Exception as exc:
            raise BackendError(f"OpenVINO cannot start ({_first_line(exc)}); check the installation ({INSTALL})") \
                from None
        if self.device not in devices:
            raise BackendError(f"--device {self.device}: OpenVINO has no such device here; available: "
                               f"{', '.join(devices) or 'none'}")
        self.config = {props.inference_num_threads: 1, props.num_streams: 1,
                       hints.performance_mode: hints.PerformanceMode.LATENCY,
                       hints.inference_precision: self.ov.Type.f32}
        try:
            self.device_name = str(self.core.get_property(self.device, "FULL_DEVICE_NAME")).strip()
        except Exception:  # the name is informative only
            self.device_name = ""
        self._cache = ModelCache(cache_size)

    def info(self) -> BackendInfo:
        device = f"{self.device}: {self.device_name}" if self.device_name else self.device
        return BackendInfo(name="openvino", runtime_version=f"OpenVINO {self.ov.get_version()} ({device}; f32)",
                           capabilities=["dump", "perf", "push", "isolate"])

    def load(self, path: Path, sha256: str) -> OpenVinoModel:
        cached = self._cache.get(sha256)
        if cached is not None:
            return cached
        label = f"model {sha256[:12]}…"  # never the store's path
        program = load_program(path, label, self.max_tensor_bytes)
        if program.target.name != self.target.name:
            raise ModelMismatch(f"{label} was compiled for target '{program.target.name}', this board runs "
                                f"OpenVINO ('{self.target.name}'); recompile with 'qverify compile quant.onnx "
                                f"--target {self.target.name} -o model.ov'")
        if program.proto.runtime_format != RUNTIME_FORMAT or not program.proto.runtime_model:
            raise ModelInvalid(f"{label} carries no OpenVINO model (runtime format "
                               f"'{program.proto.runtime_format}'); recompile with 'qverify compile quant.onnx "
                               f"--target {self.target.name} -o model.ov'")
        model = OpenVinoModel(self, program, label)
        return self._cache.put(sha256, model)

    def forget(self, sha256: str) -> None:
        self._cache.forget(sha256)

    def close(self) -> None:
        self._cache.clear()
