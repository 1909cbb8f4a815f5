"""``qverify doctor``: preprocessing checks (placeholder until built)."""
from __future__ import annotations

from qverify.client.errors import EXIT_BAD_INPUT, Failure


def doctor_command() -> None:
    """Look for the preprocessing mistakes that lose accuracy."""
    raise Failure("qverify doctor is not built yet", EXIT_BAD_INPUT)
