"""Every tensor of an ONNX model (float or quantized) written as a dump folder.

The folder has the layout and ``manifest.json`` of ``qverify run -r -o DIR`` (see
:mod:`qverify.client.dumpfiles`), so ``qverify compare`` reads a board's dumps and an ONNX
model's dumps alike. A copy of the graph exposes every node output as a graph output
(as ``-r`` does for quant.onnx in verify); tensors computed from initializers alone
(dequantized weights, constant shapes) are not activations and are left out.

For a quantized model each tensor records the quantization of the QuantizeLinear that
produced it (its codes) or of the DequantizeLinear that read them (their float values), so
the comparison has an integer view, and the float model's name of the tensor
(``onnx_float_name``: ``X`` of ``X_QuantizeLinear_Output``), so a float model's dump pairs
with it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from qverify.client.errors import EXIT_BAD_INPUT, Failure

Progress = Callable[[str], None]


@dataclass
class GraphTensor:
    """One tensor of the graph as the dump sees it."""
    name: str
    index: int  # execution order: graph inputs first, then node outputs in node order
    producer: str  # node name ("" for a graph input); unnamed nodes get OP@k
    op: str  # ONNX op type of the producer
    float_name: str = ""  # the float model's name of this tensor (quantized models)
    scale: float = 0.0  # quantization of the codes (Q output) or of the values (DQ output)
    zero_point: int = 0
    output: bool = False


@dataclass
class GraphPlan:
    """What a dump of one ONNX model exposes."""
    model: Any  # onnx.ModelProto
    quantized: bool
    tensors: list[GraphTensor] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    def by_name(self) -> dict[str, GraphTensor]:
        return {t.name: t for t in self.tensors}


def _scalar(init: dict, name: str) -> float | int | None:
    from onnx import numpy_helper

    if name not in init:
        return None
    value = numpy_helper.to_array(init[name])
    return value.reshape(-1)[0].item() if value.size == 1 else None


def plan_graph(model) -> GraphPlan:
    """Execution order, producers, float names and quantization of every activation of ``model``."""
    from qverify.client.modelfiles import is_quantized

    graph = model.graph
    init = {t.name: t for t in graph.initializer}
    constant = set(init)
    plan = GraphPlan(model, is_quantized(model), outputs=[o.name for o in graph.output])
    for inp in graph.input:
        if inp.name not in constant:
            plan.tensors.append(GraphTensor(inp.name, len(plan.tensors), "", ""))
    q_input: dict[str, str] = {}  # Q output -> Q input
    graph_outputs = set(plan.outputs)
    dq_outputs: dict[str, list[str]] = {}  # Q output -> DQ outputs reading it
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input:
            dq_outputs.setdefault(node.input[0], []).extend(node.output)
    counts: dict[str, int] = {}
    for node in graph.node:
        inputs = [i for i in node.input if i]
        if node.op_type == "Constant" or (inputs and all(i in constant for i in inputs)):
            constant.update(node.output)  # weights, shapes: not activations
            continue
        producer = node.name or f"{node.op_type}@{counts.get(node.op_type, 0)}"
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
        scale = zero_point = None
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) >= 2:
            scale = _scalar(init, node.input[1])
            zero_point = _scalar(init, node.input[2]) if len(node.input) > 2 else 0
        for out in node.output:
            if not out:
                continue
            t = GraphTensor(out, len(plan.tensors), producer, node.op_type, output=out in graph_outputs)
            if scale is not None:  # per-axis activations (rare) keep no integer view
                t.scale, t.zero_point = float(scale), int(zero_point or 0)
            if node.op_type == "QuantizeLinear":
                q_input[out] = node.input[0]
                # The float model names this tensor as quant.onnx's graph output does when a DQ of it is one.
                named = [d for d in dq_outputs.get(out, []) if d in graph_outputs]
                t.float_name = named[0] if named else node.input[0]
            elif node.op_type == "DequantizeLinear" and node.input[0] in q_input:
                t.float_name = out if out in graph_outputs else q_input[node.input[0]]
            plan.tensors.append(t)
    return plan


def select(plan: GraphPlan, names: Sequence[str] | None) -> list[GraphTensor]:
    """The tensors to dump: all of them, or the ``names`` asked for (an unknown one is a Failure)."""
    if names is None:
        return list(plan.tensors)
    known = plan.by_name()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise Failure(f"--dump {unknown[0]}: the model has no such activation tensor; valid names include "
                      f"{few_names([t.name for t in plan.tensors])}", EXIT_BAD_INPUT)
    wanted = set(names)
    return [t for t in plan.tensors if t.name in wanted]


def few_names(names: Sequence[str], count: int = 4) -> str:
    """``a, b, c, d (and 120 more)``: a few valid names for an error line."""
    shown = ", ".join(names[:count])
    return shown + (f" (and {len(names) - count} more)" if len(names) > count else "")


def _session(model, tensors: list[GraphTensor], ort_opt: str):
    import onnxruntime as ort

    copy = type(model)()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    for t in tensors:
        if t.name not in present and t.producer:  # graph inputs are fed, not computed
            copy.graph.output.add().name = t.name
            present.add(t.name)
    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if ort_opt == "all"
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(copy.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception types
        raise Failure(f"onnxruntime cannot load the model ({str(exc).splitlines()[0][:300]})", EXIT_BAD_INPUT) \
            from None


def onnx_ports(path: Path, input_shapes: dict[str, list[int]] | None = None, program_path: Path | None = None):
    """The input ports of an ONNX model; with ``program_path`` (a model.bin compiled from it) the
    inputs are taken as that model.bin takes them (images through its embedded preprocessing)."""
    from qverify.client import inputs as inputs_mod

    if program_path is not None:
        from qverify.client.exec_common import load_model_bin

        return inputs_mod.ports_from_program(load_model_bin(program_path))
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return inputs_mod.ports_from_onnx(session.get_inputs(), input_shapes)


def dump_onnx(path: Path, frames: list, folder: Path, writer, *, names: Sequence[str] | None = None,
              ort_opt: str = "all", progress: Progress | None = None) -> dict[str, Any]:
    """Run ``path`` on ``frames`` (:class:`~qverify.client.inputs.Frame`, their ``onnx`` feeds) and
    write every activation (or the ``names``) into ``folder`` (an existing, empty folder; use
    :class:`~qverify.client.dumpfiles.OutputFolder` for all-or-nothing) with ``writer`` (a
    :class:`~qverify.client.dumpfiles.TensorFormat`). Returns the manifest, also written there."""
    import onnxruntime as ort

    from qverify.client import dumpfiles
    from qverify.client.agent_client import file_sha256
    from qverify.client.modelfiles import load_onnx

    model = load_onnx(path)
    plan = plan_graph(model)
    chosen = select(plan, names)
    if progress:
        progress(f"running {path.name} in onnxruntime on {len(frames)} input set{'s' if len(frames) != 1 else ''}")
    session = _session(model, chosen, ort_opt)
    available = {o.name for o in session.get_outputs()}
    fetch = [t.name for t in chosen if t.producer and t.name in available]
    start = time.perf_counter()
    manifest: dict[str, Any] = {
        "source": "onnx", "model": str(path), "model_sha256": file_sha256(path), "model_size": path.stat().st_size,
        "program": path.stem, "quantized": plan.quantized, "onnxruntime": ort.__version__, "ort_opt": ort_opt,
        "format": writer.fmt, "dump_all_nodes": names is None, "dump_names": list(names or []),
        "dump_layout": "valid", "dequantized": False, "frames": 1, "warmup": 0, "outputs": list(plan.outputs),
        "input_sets": [], "files": [],
    }
    if writer.fmt == "txt":
        manifest["txt"] = {"precision": writer.precision, "axis": writer.txt_axis}
    for number, frame in enumerate(frames):
        if progress and len(frames) > 1:
            progress(f"input set {number + 1}/{len(frames)}")
        try:
            values = dict(zip(fetch, session.run(fetch, frame.onnx))) if fetch else {}
        except Exception as exc:
            raise Failure(f"onnxruntime failed to run {path.name}: {str(exc).splitlines()[0][:300]}",
                          EXIT_BAD_INPUT) from None
        values.update({k: v for k, v in frame.onnx.items() if k in {t.name for t in chosen}})
        sub = f"set{number:03d}" if len(frames) > 1 else ""
        target = folder / sub if sub else folder
        target.mkdir(exist_ok=True)
        manifest["input_sets"].append({
            "index": number, "folder": sub or ".",
            "inputs": [{"name": k, "source": frame.sources.get(k, "") or _source(frame, k), "dtype": str(v.dtype),
                        "shape": list(v.shape)} for k, v in frame.onnx.items()]})
        for t in chosen:
            if t.name not in values:
                continue
            array = np.asarray(values[t.name])
            name = dumpfiles.file_name(t.index, t.name, "valid", writer.fmt)
            extra = writer.write(array, target / name)
            entry = {"file": f"{sub}/{name}" if sub else name, "tensor": t.name, "producer": t.producer,
                     "op": t.op, "onnx_float_name": t.float_name, "index": t.index, "input_set": number,
                     "output": t.output, "layout": "valid", "dtype": str(array.dtype), "shape": list(array.shape),
                     "scale": t.scale, "zero_point": t.zero_point}
            entry.update(extra)
            manifest["files"].append(entry)
    manifest["seconds"] = round(time.perf_counter() - start, 4)
    dumpfiles.write_manifest(manifest, folder / "manifest.json")
    return manifest


def _source(frame, onnx_name: str) -> str:
    """Where an ONNX input came from: frames record sources by program input name."""
    return next(iter(frame.sources.values()), "") if len(frame.sources) == 1 else ""
