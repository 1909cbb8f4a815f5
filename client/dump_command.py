"""``qverify dump``: every tensor of an ONNX model to a dump folder (placeholder until built)."""
from __future__ import annotations

from qverify.client.errors import EXIT_BAD_INPUT, Failure


def dump_command() -> None:
    """Write every tensor of an ONNX model, in the format of ``qverify run -r -o DIR``."""
    raise Failure("qverify dump is not built yet", EXIT_BAD_INPUT)
