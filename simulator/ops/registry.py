"""Explicit kernel registries (``@register("Conv")``, ``@register_cpu("Conv")``)."""
from __future__ import annotations

import importlib
from typing import Callable

_NPU: dict[str, Callable] = {}
_CPU: dict[str, Callable] = {}

# The kernel modules, listed by hand: adding a kernel means adding its file here.
NPU_MODULES = (
    "conv", "conv_transpose", "matmul", "matmul_act", "global_avgpool", "add", "mul", "concat", "lut", "maxpool", "avgpool",
    "resize", "softmax", "reshape", "transpose", "slice", "split", "pad", "gather",
    "preprocess",
)
CPU_MODULES: tuple[str, ...] = ()  # filled in by qverify.simulator.ops.cpu.MODULES

_loaded = False


def register(op: str) -> Callable[[Callable], Callable]:
    """Register the integer (NPU) kernel of program op ``op``."""
    def wrap(fn: Callable) -> Callable:
        if op in _NPU:
            raise RuntimeError(f"npu kernel {op!r} registered twice")
        _NPU[op] = fn
        return fn
    return wrap


def register_cpu(op: str) -> Callable[[Callable], Callable]:
    """Register the float32 (CPU) kernel of ONNX op ``op``."""
    def wrap(fn: Callable) -> Callable:
        if op in _CPU:
            raise RuntimeError(f"cpu kernel {op!r} registered twice")
        _CPU[op] = fn
        return fn
    return wrap


def load_kernels() -> None:
    global _loaded
    if _loaded:
        return
    from qverify.simulator.ops import cpu

    for name in NPU_MODULES:
        importlib.import_module(f"qverify.simulator.ops.{name}")
    for name in cpu.MODULES:
        importlib.import_module(f"qverify.simulator.ops.cpu.{name}")
    _loaded = True


def npu_kernel(op: str) -> Callable:
    load_kernels()
    return _NPU[op]


def cpu_kernel(op: str) -> Callable:
    load_kernels()
    return _CPU[op]


def has_cpu_kernel(op: str) -> bool:
    load_kernels()
    return op in _CPU


def npu_ops() -> set[str]:
    load_kernels()
    return set(_NPU)


def cpu_ops() -> list[str]:
    load_kernels()
    return sorted(_CPU)
