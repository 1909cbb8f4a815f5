"""Host side of the ``openvino`` backend: quant.onnx -> model.ov (``qverify compile --target openvino-cpu``).

model.ov is an ordinary qverify model container (header, version, sha256, Program): the
Program is what the simulator's compiler makes of the same quant.onnx for the target
``openvino-cpu`` -- the description of every tensor (names, shapes, quantization) and node
the client compares by -- plus the runtime's own model in ``runtime_model``. That model is
the quantized ONNX itself (``runtime_format = "onnx"``): OpenVINO reads ONNX from memory and
keeps every ONNX tensor name, which are the program's tensor names, so nothing is converted
on the host and the file does not depend on the OpenVINO version that runs it.

This module runs on the host only (it imports onnx through the compiler); the agent never
imports it.
"""
from __future__ import annotations

from pathlib import Path

from qverify.v1 import model_pb2

TARGET = "openvino-cpu"
RUNTIME_FORMAT = "onnx"


def is_openvino_target(name: str) -> bool:
    """Whether a target profile name is run by the ``openvino`` backend (no bit-exact twin on the host)."""
    return name.startswith("openvino")


def compile_openvino(source: str | Path, input_shapes: dict[str, list[int]] | None = None,
                     target: str = TARGET) -> model_pb2.Program:
    """The model.ov program of quant.onnx at ``source``; CompileError (one line) when it cannot be described."""
    from qverify.simulator.compiler import compile_model

    from qverify.simulator.errors import CompileError

    if not target.startswith("openvino"):
        raise CompileError(f"target '{target}' is not an OpenVINO target; use openvino-cpu")
    program = compile_model(source, target=target, input_shapes=input_shapes)  # names the bad file, if it is
    try:
        program.runtime_model = Path(source).read_bytes()
    except OSError as exc:
        raise CompileError(f"{source}: cannot be read ({exc.strerror}); check the path") from None
    program.runtime_format = RUNTIME_FORMAT
    return program
