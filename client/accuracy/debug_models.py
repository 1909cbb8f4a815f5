"""The float model and quant.onnx of ``qverify debug``: recognised, checked to belong together,
rewritten into one switchable session, and fed the same inputs.

``-m`` takes the two files in any order; the one with QuantizeLinear/DequantizeLinear nodes is
quant.onnx. A QOperator model, a float model quant.onnx was not quantized from, and a
missing file are bad input (exit 2), said in one line.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qverify.client.accuracy.qdq_edit import QdqEditError, SwitchedModel, check_qdq, rewrite
from qverify.client.errors import EXIT_BAD_INPUT, Failure


@dataclass
class DebugModels:
    """The two models, the switchable session's graph and the plain float session."""
    float_path: Path
    quant_path: Path
    float_model: object  # onnx.ModelProto
    quant_model: object
    switched: SwitchedModel

    def session(self, model_bytes: bytes, threads: int = 1):
        """An onnxruntime CPU session (all graph optimisations, ``threads`` intra-op threads)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def _load(path: Path):
    import onnx

    from qverify.client.modelfiles import ModelFileError, sniff

    try:
        if sniff(path) != "onnx":
            raise Failure(f"-m {path}: a model.bin; debug takes the float ONNX model and the QDQ quant.onnx",
                          EXIT_BAD_INPUT)
    except ModelFileError as exc:
        raise Failure(str(exc), EXIT_BAD_INPUT) from None
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf's DecodeError and friends: the file is not an ONNX model
        raise Failure(f"-m {path}: not a readable ONNX model ({str(exc).splitlines()[0][:200]})",
                      EXIT_BAD_INPUT) from None


def open_models(spec: str) -> DebugModels:
    """``-m float.onnx,quant.onnx`` (any order) loaded, checked and rewritten; Failure (exit 2) otherwise."""
    from qverify.client.modelfiles import float_pairing_problem, is_quantized

    paths = [Path(p) for p in spec.split(",") if p.strip()]
    if len(paths) != 2:
        raise Failure(f"-m {spec}: give two files, the float model and the quant.onnx made from it "
                      "(-m float.onnx,quant.onnx)", EXIT_BAD_INPUT)
    models = [(p, _load(p)) for p in paths]
    quant = [(p, m) for p, m in models if is_quantized(m)]
    floats = [(p, m) for p, m in models if not is_quantized(m)]
    if len(quant) != 1:
        which = "both are quantized" if quant else "neither is quantized"
        raise Failure(f"-m {spec}: {which}; give the float model and the QDQ quant.onnx quantized from it",
                      EXIT_BAD_INPUT)
    (q_path, q_model), (f_path, f_model) = quant[0], floats[0]
    try:
        check_qdq(q_model, q_path)
    except QdqEditError as exc:
        raise Failure(str(exc), EXIT_BAD_INPUT) from None
    problem = float_pairing_problem(f_path, f_model, q_path, q_model)
    if problem:
        if "float model" not in problem:
            problem += f": give the float model {q_path.name} was quantized from"
        raise Failure(problem, EXIT_BAD_INPUT)
    try:
        switched = rewrite(q_model, f_model)
    except QdqEditError as exc:
        raise Failure(f"{q_path.name}: {exc}", EXIT_BAD_INPUT) from None
    return DebugModels(f_path, q_path, f_model, q_model, switched)


def _input_range(quant_model, name: str) -> tuple[float, float] | None:
    """The float range the QuantizeLinear of graph input ``name`` represents (its calibrated range)."""
    from onnx import numpy_helper

    consts = {i.name: numpy_helper.to_array(i) for i in quant_model.graph.initializer}
    for node in quant_model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] == name and node.input[1] in consts:
            scale = float(np.ravel(consts[node.input[1]])[0])
            zp_arr = consts.get(node.input[2]) if len(node.input) > 2 else None
            zero = int(np.ravel(zp_arr)[0]) if zp_arr is not None else 0
            lo, hi = (0, 255) if zp_arr is not None and zp_arr.dtype == np.uint8 else (-128, 127)
            return (lo - zero) * scale, (hi - zero) * scale
    return None


def build_inputs(models: DebugModels, specs: list[str], seed: int,
                 preprocess: str | None = None) -> tuple[list[dict[str, np.ndarray]], str]:
    """The float feeds of the float model (and quant.onnx) for ``-i`` values, and where they came from.

    Without ``-i``: one seeded random frame, uniform over each input's calibrated range (the
    range of its QuantizeLinear). Images need ``preprocess`` (the compile command's spec)."""
    from qverify.client import inputs as inputs_mod

    session = models.session(models.float_model.SerializeToString())
    try:
        ports = inputs_mod.ports_from_onnx(session.get_inputs())
    except inputs_mod.InputFileError as exc:
        raise Failure(str(exc), EXIT_BAD_INPUT) from None
    if not specs:
        rng = np.random.default_rng(seed)
        frame = {}
        for port in ports:
            lo, hi = _input_range(models.quant_model, port.onnx_name) or (-1.0, 1.0)
            frame[port.onnx_name] = rng.uniform(lo, hi, port.onnx_shape).astype(np.float32)
        return [frame], f"seeded random values over each input's calibrated range (seed {seed})"
    if preprocess:
        ports = _with_preprocess(ports, preprocess)
    try:
        frames = inputs_mod.build_frames(ports, list(specs), seed)
    except inputs_mod.InputFileError as exc:
        raise Failure(str(exc), EXIT_BAD_INPUT) from None
    return [f.onnx for f in frames], f"{len(frames)} input set{'s' if len(frames) != 1 else ''} from -i"


def _with_preprocess(ports, text: str):
    """Ports that take images through ``--preprocess`` (the spec ``qverify compile`` embeds)."""
    from qverify.simulator.compiler import PreprocessSpec
    from qverify.simulator.compiler.preprocess import frame_shape
    from qverify.v1 import model_pb2

    try:
        spec = PreprocessSpec.parse(text)
    except ValueError as exc:
        raise Failure(f"--preprocess: {exc}", EXIT_BAD_INPUT) from None
    for port in ports:
        if len(port.onnx_shape) != 4 or len(spec.mean) != port.onnx_shape[1]:
            raise Failure(f"--preprocess: input '{port.onnx_name}' is {list(port.onnx_shape)}; give one mean and "
                          "std per channel of an NCHW input", EXIT_BAD_INPUT)
        n, _, h, w = port.onnx_shape
        port.preprocess = model_pb2.Preprocess(input=port.onnx_name, color=spec.color, model_color=spec.model_color,
                                               mean=spec.mean, std=spec.std,
                                               image_shape=[n, h, w, 1 if spec.color == "GRAY" else 3])
        port.board_shape = frame_shape(port.preprocess)
        port.board_dtype = np.dtype(np.uint8)
    return ports
