"""Well-hashed but malformed model.bin files: the reproducers of the loader fuzz findings.

Each one is a valid container (magic, version, length, sha256) around a program that a
kernel could not run. ``python tests/fuzz_corpus/reproducers.py`` rewrites the ``*.bin``
files beside it; ``tests/test_fuzz_loader.py`` checks the checked-in files are refused.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np

from qverify.simulator.modelfile import encode
from qverify.simulator.program import make_attr, make_constant
from qverify.v1 import model_pb2

HERE = Path(__file__).resolve().parent


def tiny_program() -> model_pb2.Program:
    """A valid two-node int8 program: Conv 3->4 channels, 3x3, then a Lut."""
    rng = np.random.default_rng(3)

    def tensor(name: str, shape: list[int], producer: str = "", scale: float = 0.05, zp: int = -3):
        return model_pb2.TensorInfo(name=name, onnx_name=name, dtype=model_pb2.INT8, shape=shape,
                                    quant=model_pb2.QuantParams(scale=scale, zero_point=zp), producer=producer)

    conv_attrs = {"x_zp": -3, "y_zp": -3, "w_zp": 0, "qmin": -128, "qmax": 127, "group": 1,
                  "strides": [1, 1], "dilations": [1, 1], "pads": [1, 1, 1, 1]}
    return model_pb2.Program(
        name="tiny", target=model_pb2.Target(name="sim-a16", c_align=16, w_align=1),
        inputs=["x"], outputs=["z"], onnx_inputs=["x"], onnx_outputs=["z"],
        tensors=[tensor("x", [1, 3, 8, 8]), tensor("y", [1, 4, 8, 8], "conv"), tensor("z", [1, 4, 8, 8], "lut")],
        constants=[make_constant("w", rng.integers(-128, 128, size=(4, 3, 3, 3), dtype=np.int8)),
                   make_constant("b", rng.integers(-1000, 1000, size=(4,), dtype=np.int32)),
                   make_constant("m0", np.full((4,), 1 << 30, dtype=np.int32)),
                   make_constant("shift", np.array([-7, -8, -6, -9], dtype=np.int32)),
                   make_constant("table", np.arange(-128, 128, dtype=np.int8))],
        nodes=[model_pb2.Node(name="conv", op="Conv", inputs=["x"], outputs=["y"],
                              constants=["w", "b", "m0", "shift"], placement=model_pb2.NPU, onnx_op="Conv",
                              attrs={k: make_attr(v) for k, v in conv_attrs.items()}),
               model_pb2.Node(name="lut", op="Lut", inputs=["y"], outputs=["z"], constants=["table"],
                              placement=model_pb2.NPU, onnx_op="Sigmoid")],
    )


def _no_inputs(p: model_pb2.Program) -> None:
    del p.nodes[1].inputs[:]


def _output_never_written(p: model_pb2.Program) -> None:
    p.tensors.add(name="orphan", dtype=model_pb2.INT8, shape=[1, 4, 8, 8],
                  quant=model_pb2.QuantParams(scale=0.05, zero_point=0))
    p.outputs.append("orphan")
    p.onnx_outputs.append("orphan")


def _attr_wrong_type(p: model_pb2.Program) -> None:
    p.nodes[0].attrs["strides"].CopyFrom(make_attr("2"))


def _huge_dims(p: model_pb2.Program) -> None:
    p.tensors[2].shape[:] = [1, 4, 1 << 40, 1 << 40]


def _negative_dims(p: model_pb2.Program) -> None:
    p.tensors[1].shape[:] = [1, 4, -8, 8]


def _alignment_zero(p: model_pb2.Program) -> None:
    p.target.c_align = 0


def _nan_scale(p: model_pb2.Program) -> None:
    p.tensors[1].quant.scale = math.nan


def _zero_scale(p: model_pb2.Program) -> None:
    p.tensors[2].quant.scale = 0.0


def _huge_input(p: model_pb2.Program) -> None:
    p.tensors[0].shape[:] = [1, 3, 16384, 16384]  # 768 MiB int8, 12 GiB at C padded to 16


def _short_lut(p: model_pb2.Program) -> None:
    p.constants[4].CopyFrom(make_constant("table", np.arange(-128, 0, dtype=np.int8)))


def _bad_multiplier(p: model_pb2.Program) -> None:
    p.constants[3].CopyFrom(make_constant("shift", np.array([-7, -8, 40, -9], dtype=np.int32)))


# file stem -> (mutation, fragments the one-line refusal must contain)
REPRODUCERS: dict[str, tuple[Callable[[model_pb2.Program], None], tuple[str, ...]]] = {
    "node_without_inputs": (_no_inputs, ("node 'lut' (Lut)", "0 inputs")),
    "output_never_written": (_output_never_written, ("'orphan'", "never written")),
    "attribute_wrong_type": (_attr_wrong_type, ("node 'conv' (Conv)", "'strides'", "integers")),
    "huge_dims": (_huge_dims, ("tensor 'z'", "over the limit")),
    "negative_dims": (_negative_dims, ("tensor 'y'", "-8")),
    "alignment_zero": (_alignment_zero, ("target 'sim-a16'", "c_align 0")),
    "nan_scale": (_nan_scale, ("tensor 'y'", "scale nan")),
    "zero_scale": (_zero_scale, ("tensor 'z'", "scale 0.0")),
    "huge_declared_input": (_huge_input, ("tensor 'x'", "over the limit")),
    "lut_too_short": (_short_lut, ("node 'lut' (Lut)", "table", "[256]")),
    "shift_out_of_range": (_bad_multiplier, ("node 'conv' (Conv)", "shift", "40")),
}


def reproducer_bytes(stem: str) -> bytes:
    program = tiny_program()
    REPRODUCERS[stem][0](program)
    return encode(program)


if __name__ == "__main__":
    for stem in REPRODUCERS:
        (HERE / f"{stem}.bin").write_bytes(reproducer_bytes(stem))
