"""qverify.simulator: the shared integer simulator (executor) and its compiler.

Runtime API (numpy + protobuf only, what boards import)::

    from qverify.simulator import load, Simulator
    program = load("model.bin")
    sim = Simulator(program)
    result = sim.run({"x": feed}, dump="all", dump_layout="both", sink=my_sink)

Compiler API (host only, imports onnx)::

    from qverify.simulator.compiler import compile_model
"""
from qverify._version import __version__
from qverify.simulator.errors import CompileError, InputError, ModelFormatError, ProgramError, SimulatorError
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
from qverify.simulator.validate import DEFAULT_MAX_TENSOR_BYTES


def load(path, max_tensor_bytes: int | None = None) -> Program:
    """Read and validate model.bin; raises ModelFormatError with an actionable message.

    Validation covers the container and the program's semantics (every node can run, see
    ``qverify.simulator.validate``). ``max_tensor_bytes`` bounds every declared tensor and
    kernel working array (default ``DEFAULT_MAX_TENSOR_BYTES``, 1 GiB); a board passes its own.
    """
    from qverify.simulator import modelfile

    return modelfile.decode_program(modelfile.read(path), str(path), max_tensor_bytes)


__all__ = [
    "__version__",
    "CompileError", "InputError", "ModelFormatError", "ProgramError", "SimulatorError", "DEFAULT_MAX_TENSOR_BYTES",
    "Dump", "LayerStats", "RunResult",
    "Simulator", "Program", "TARGETS", "get_target", "load", "save", "encode", "decode", "dequantize",
    "quantize", "feed_shape",
]
