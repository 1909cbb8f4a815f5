"""Float32 ONNX kernels for nodes placed on the board's CPU (numpy only).

Also used at compile time to build the 256-entry lookup tables of elementwise ops.
"""
# Every module listed here is imported by qverify.simulator.ops.registry.load_kernels().
MODULES: tuple[str, ...] = (
    "elementwise", "activations", "erf", "variadic", "gemm", "conv", "conv_transpose",
    "pool", "global_pool", "softmax", "reduce", "resize", "shape_ops", "slicing", "pad",
    "norm", "cast", "space_depth",
)
