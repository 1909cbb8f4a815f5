"""``qverify debug curve --apply``: the curve's suggestion measured on a board.

quant.onnx is compiled twice, as it is and with the suggested nodes on the CPU as float
islands (``--run-on-cpu`` with the float model: their float weights, float32 between
them, as the curve measured them), both run on the board (``-b``, or the embedded
emulated board) on the same inputs, and each board's outputs are measured against the
float model's: the improvement the suggestion actually brings, not the one the ONNX
curve predicts.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qverify.client.accuracy.debug_models import DebugModels
from qverify.client.accuracy.sensitivity import metric_values
from qverify.client.errors import EXIT_BAD_INPUT, Failure


@dataclass
class ApplyResult:
    where: str  # the board's address, or "the embedded emulated board"
    nodes: list[str]
    before: dict[str, float]  # float model vs board, quant.onnx compiled as it is
    after: dict[str, float]  # ... compiled with the suggestion's --run-on-cpu
    frames: int


def _compile(models: DebugModels, nodes: list[str], out: Path):
    from qverify.simulator.compiler import compile_model
    from qverify.simulator.errors import CompileError
    from qverify.simulator.modelfile import save

    try:
        program = compile_model(models.quant_path, run_on_cpu=nodes,
                                float_model=models.float_path if nodes else None)
    except CompileError as exc:
        raise Failure(f"--apply: cannot compile {models.quant_path.name} with --run-on-cpu {','.join(nodes)} "
                      f"and float model {models.float_path.name}: {exc}", EXIT_BAD_INPUT) from None
    save(program, out)
    from qverify.simulator import load

    return load(out)


def _board_outputs(client, sha: str, program, frames) -> list[list[np.ndarray]]:
    outputs = []
    for frame in frames:
        outcome = client.run(sha, frame.board, dump="outputs", layout="valid", dequantized=True)
        row = []
        for tensor in program.outputs:
            dumped = outcome.dumps[(tensor.name, "valid")]
            array = np.asarray(dumped.array, dtype=np.float32)
            row.append(array.reshape(tensor.shape) if array.size == int(np.prod(tensor.shape)) else array)
        outputs.append(row)
    return outputs


def apply_on_board(models: DebugModels, nodes: list[str], specs: list[str], seed: int, options) -> ApplyResult:
    """Float model vs board before and after keeping ``nodes`` in float (on the board's CPU)."""
    from qverify.client import inputs as inputs_mod
    from qverify.client.boards import ensure_model, open_board

    with tempfile.TemporaryDirectory(prefix="qverify-apply-") as tmp:
        before_prog = _compile(models, [], Path(tmp) / "model.bin")
        after_prog = _compile(models, nodes, Path(tmp) / "model_cpu.bin")
        try:
            frames = inputs_mod.build_frames(inputs_mod.ports_from_program(before_prog), list(specs), seed)
        except inputs_mod.InputFileError as exc:
            raise Failure(str(exc), EXIT_BAD_INPUT) from None
        float_session = models.session(models.float_model.SerializeToString())
        reference = [float_session.run(None, f.onnx) for f in frames]
        with open_board(options, before_prog.target.name) as client:
            results = []
            for program, path in ((before_prog, Path(tmp) / "model.bin"), (after_prog, Path(tmp) / "model_cpu.bin")):
                push = ensure_model(client, path, options)
                results.append(metric_values(reference, _board_outputs(client, push.sha256, program, frames)))
            where = "the embedded emulated board" if options.embedded else client.address
    return ApplyResult(where, nodes, results[0], results[1], len(frames))
