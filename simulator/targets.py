"""Target profiles: the native (aligned) layout a board's NPU keeps tensors in."""
from __future__ import annotations

from dataclasses import dataclass, field

from qverify.v1 import model_pb2


@dataclass(frozen=True)
class TargetProfile:
    name: str
    c_align: int  # channels padded to a multiple of this
    w_align: int = 1  # width padded to a multiple of this (4-D tensors)
    rounding: str = "single"  # fixed-point rounding: "single" or "double" (see fixedpoint.py)
    description: str = field(default="", compare=False)

    def to_proto(self) -> model_pb2.Target:
        rounding = model_pb2.ROUNDING_DOUBLE if self.rounding == "double" else model_pb2.ROUNDING_SINGLE
        return model_pb2.Target(name=self.name, c_align=self.c_align, w_align=self.w_align, rounding=rounding)


TARGETS: dict[str, TargetProfile] = {
    t.name: t
    for t in (
        TargetProfile("sim-a16", 16, 1, "single", "NHWC, C padded to 16, single-rounding requantization"),
        TargetProfile("sim-a32", 32, 1, "single", "NHWC, C padded to 32, single-rounding requantization"),
        TargetProfile("sim-a16w8", 16, 8, "single", "NHWC, C padded to 16 and W to 8"),
        TargetProfile("sim-a16-gemmlowp", 16, 1, "double", "NHWC, C padded to 16, gemmlowp double rounding"),
        TargetProfile("sim-a32-gemmlowp", 32, 1, "double", "NHWC, C padded to 32, gemmlowp double rounding"),
        # A CPU runtime (the "openvino" backend): no padding, and its rounding is not ours, so
        # isolation holds it to the looser (double-rounding) allowances.
        TargetProfile("openvino-cpu", 1, 1, "double", "OpenVINO on the CPU: no padding (C, W not aligned), "
                      "runtime's own rounding (judged as double)"),
    )
}
DEFAULT_TARGET = "sim-a16"


def get_target(name: str) -> TargetProfile:
    try:
        return TARGETS[name]
    except KeyError:
        known = ", ".join(sorted(TARGETS))
        from qverify.simulator.errors import CompileError

        raise CompileError(f"unknown target '{name}'; known targets: {known}") from None


def from_proto(target: model_pb2.Target) -> TargetProfile:
    """The profile a program was compiled for, as recorded in it (not looked up by name)."""
    rounding = "double" if target.rounding == model_pb2.ROUNDING_DOUBLE else "single"
    known = TARGETS.get(target.name)
    return TargetProfile(target.name, max(1, target.c_align), max(1, target.w_align), rounding,
                         known.description if known else "")
