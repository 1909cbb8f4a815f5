"""``qverify debug ...``: accuracy-debugging commands (placeholder until built)."""
from __future__ import annotations

import typer

debug_app = typer.Typer(no_args_is_help=True, help="Accuracy debugging: which layers cost the accuracy.")
