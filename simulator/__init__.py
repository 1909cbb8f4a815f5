"""qverify.simulator: the shared integer simulator (executor) and its compiler.

Runtime API (numpy + protobuf only, what boards import)::

    from qverify.simulator import load, Simulator
    program = load("model.bin")
    sim = Simulator(program)
    result = sim.run({"x": feed}, dump="all", dump_layout="both", sink=my_sink)

Compiler API (host only, imports onnx)::

    from qverify.simulator.compiler import compile_model
"""
from qverify.simulator.errors import CompileError, InputError, ModelFormatError, SimulatorError
from qverify.simulator.executor import (
    Dump,
    LayerStats,
    RunResult,
    Simulator,
    dequantize,
    feed_shape,
    quantize,
)
from qverify.simulator.modelfile import decode, encode, save
from qverify.simulator.program import Program
from qverify.simulator.targets import TARGETS, get_target


def load(path) -> Program:
    """Read and validate model.bin; raises ModelFormatError with an actionable message."""
    from qverify.simulator import modelfile

    return Program(modelfile.load(path))


__all__ = [
    "CompileError", "InputError", "ModelFormatError", "SimulatorError", "Dump", "LayerStats", "RunResult",
    "Simulator", "Program", "TARGETS", "get_target", "load", "save", "encode", "decode", "dequantize",
    "quantize", "feed_shape",
]
