"""Kernels of the simulator, one small file per op.

Two families, each registered explicitly by name:

* ``npu`` kernels (this folder) execute program nodes on the integer path.
  Signature: ``kernel(node: NodeView, inputs: list[np.ndarray], stats: LayerStats) -> list[np.ndarray]``;
  kernels add accumulator overflows and saturations to ``stats``.
* ``cpu`` kernels (``ops/cpu/``) implement ONNX ops in float32 with numpy, for nodes
  placed on the board's CPU and to build lookup tables at compile time.
  Signature: ``kernel(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]``.

``load_kernels()`` imports the kernel modules by an explicit list; nothing is found by
scanning globals or the file system.
"""
from qverify.simulator.ops.registry import (  # noqa: F401
    cpu_kernel,
    has_cpu_kernel,
    load_kernels,
    npu_kernel,
    register,
    register_cpu,
)
