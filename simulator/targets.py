"""Target profiles: the native (aligned) layout a board's NPU keeps tensors in."""
from __future__ import annotations

from dataclasses import dataclass

from qverify.v1 import model_pb2


@dataclass(frozen=True)
class TargetProfile:
    name: str
    c_align: int  # channels padded to a multiple of this
    w_align: int = 1  # width padded to a multiple of this (4-D tensors)
    description: str = ""

    def to_proto(self) -> model_pb2.Target:
        return model_pb2.Target(name=self.name, c_align=self.c_align, w_align=self.w_align)


TARGETS: dict[str, TargetProfile] = {
    t.name: t
    for t in (
        TargetProfile("sim-a16", 16, 1, "NHWC, C padded to 16 (int8 NPUs with 16-lane MACs)"),
        TargetProfile("sim-a32", 32, 1, "NHWC, C padded to 32 (int8 NPUs with 32-lane MACs)"),
        TargetProfile("sim-a16w8", 16, 8, "NHWC, C padded to 16 and W to 8"),
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
    known = TARGETS.get(target.name)
    return known or TargetProfile(target.name, max(1, target.c_align), max(1, target.w_align))
