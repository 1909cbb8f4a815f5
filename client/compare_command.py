"""``qverify compare DIR_A DIR_B``: offline compare of two dump folders (placeholder until built)."""
from __future__ import annotations

from qverify.client.errors import EXIT_BAD_INPUT, Failure


def compare_command() -> None:
    """Compare two dump folders by tensor name."""
    raise Failure("qverify compare is not built yet", EXIT_BAD_INPUT)
