"""``qverify board info``: the board's agent (versions, target, resources, limits) and its store."""
from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from qverify.client.board_options import BoardArg, with_board_settings
from qverify.client.boards import BoardOptions, BoardSettings
from qverify.client.exec_common import out, size_text
from qverify.client.views import safe_text

board_app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                        help="The board's agent: versions, resources, stored models.")


@board_app.command("info")
@with_board_settings(push=False, timeout=60.0)
def board_info_command(
    board: BoardArg = None,
    json_out: Annotated[bool, typer.Option("--json", help="print machine-readable JSON instead of tables")] = False,
    *,
    settings: BoardSettings,
) -> None:
    """Describe the board's agent (versions, target, resources, limits) and the models in its store."""
    from qverify.client.boards import open_board

    options = settings.board_options(board)
    with open_board(options) as client:
        summary = board_summary(client, options)
    if json_out:
        import json

        print(json.dumps(summary, indent=2))
    else:
        _print_board(summary)


def board_summary(client, options: BoardOptions) -> dict[str, Any]:
    """AgentInfo and the store's models as plain JSON-able data."""
    from qverify.v1 import board_agent_pb2 as pb
    from qverify.v1 import model_pb2

    info = client.agent_info
    models = client._call(client.stub.ListModels, pb.ListModelsRequest())
    limits = info.limits
    return {
        "schema": "qverify.board/1",
        "address": None if options.embedded else client.address, "embedded": options.embedded,
        "agent_version": info.agent_version, "protocol_version": info.protocol_version, "board_id": info.board_id,
        "hostname": info.hostname, "backend": info.backend, "runtime_version": info.runtime_version,
        "driver_version": info.driver_version, "firmware_version": info.firmware_version,
        "target": {"name": info.target.name, "c_align": info.target.c_align, "w_align": info.target.w_align,
                   "rounding": "double" if info.target.rounding == model_pb2.ROUNDING_DOUBLE else "single"},
        "cpu_count": info.cpu_count, "memory_bytes": info.memory_bytes, "npu_cores": info.npu_cores,
        "model_store": {"path": info.model_store_path, "free_bytes": info.model_store_free_bytes,
                        "used_bytes": models.used_bytes, "capacity_bytes": models.capacity_bytes},
        "limits": {"max_model_bytes": limits.max_model_bytes, "max_message_bytes": limits.max_message_bytes,
                   "store_capacity_bytes": limits.store_capacity_bytes, "max_queue": limits.max_queue,
                   "max_input_bytes": limits.max_input_bytes},
        "capabilities": list(info.capabilities), "faults": list(info.faults),
        "models": [{"sha256": m.sha256, "size_bytes": m.size_bytes, "name": m.name, "target": m.target,
                    "last_used_unix_ms": m.last_used_unix_ms} for m in models.models],
    }


BOARD_MODEL_ROWS = 100  # stored models listed by `board info` (--json has them all)
BOARD_LIST_ITEMS = 32  # capabilities / faults shown before a count


def _items_text(values: list) -> str:
    """A board-sent list for one cell: each item made literal, long lists cut with a count."""
    shown = ", ".join(safe_text(v) for v in values[:BOARD_LIST_ITEMS])
    return shown + (f", ... ({len(values)} in all)" if len(values) > BOARD_LIST_ITEMS else "")


def _print_board(s: dict) -> None:
    """Everything here came from the board: shown literally (no markup, no terminal control)."""
    import datetime

    where = "the embedded emulated board (this process)" if s["embedded"] else s["address"]
    table = Table(title=f"{safe_text(s['board_id'])} ({safe_text(where)})", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    t = s["target"]
    store = s["model_store"]
    limits = s["limits"]
    rows = [
        ("agent", f"qverify-agent {safe_text(s['agent_version'])}, protocol {safe_text(s['protocol_version'])}"),
        ("hostname", safe_text(s["hostname"])),
        ("backend", safe_text(s["backend"])),
        ("runtime / driver / firmware", " / ".join(safe_text(v or "-") for v in (
            s["runtime_version"], s["driver_version"], s["firmware_version"]))),
        ("target", f"{safe_text(t['name'])} (NHWC, C%{t['c_align']}, W%{t['w_align']}, {t['rounding']} rounding)"),
        ("cpus / memory", f"{s['cpu_count']} / {size_text(s['memory_bytes'])}"),
        ("npu cores", str(s["npu_cores"])),
        ("model store", f"{safe_text(store['path'])}: {size_text(store['used_bytes'])} used of "
                        f"{size_text(store['capacity_bytes'])}, {size_text(store['free_bytes'])} free on disk"),
        ("limits", f"model {size_text(limits['max_model_bytes'])}, message {size_text(limits['max_message_bytes'])}, "
                   f"inputs {size_text(limits['max_input_bytes'])}, queue {limits['max_queue']} per core"),
        ("capabilities", _items_text(s["capabilities"]) or "-"),
        ("active faults", _items_text(s["faults"]) or "none"),
    ]
    for key, value in rows:
        style = "[red]" if key == "active faults" and s["faults"] else ""
        table.add_row(key, f"{style}{value}" + ("[/]" if style else ""))
    out.print(table)
    if not s["models"]:
        out.print("no models stored")
        return
    stored = sorted(s["models"], key=lambda m: m["last_used_unix_ms"], reverse=True)
    shown = stored[:BOARD_MODEL_ROWS]
    title = f"stored models ({len(stored)}" + (f", the {len(shown)} used last listed)" if len(shown) < len(stored)
                                                 else ")")
    models = Table(title=title, title_justify="left")
    for column, justify in (("sha256", "left"), ("size", "right"), ("name", "left"), ("target", "left"),
                            ("last used", "left")):
        models.add_column(column, justify=justify, overflow="fold")
    for m in shown:
        try:
            used = (datetime.datetime.fromtimestamp(m["last_used_unix_ms"] / 1000).strftime("%Y-%m-%d %H:%M:%S")
                    if m["last_used_unix_ms"] else "-")
        except (ValueError, OverflowError, OSError):  # a time the board made up
            used = "?"
        models.add_row(safe_text(m["sha256"][:12]), size_text(m["size_bytes"]), safe_text(m["name"] or "-"),
                       safe_text(m["target"] or "-"), used)
    out.print(models)
    if len(shown) < len(stored):
        out.print(f"… {len(stored) - len(shown)} more models; qverify board info --json lists them all")
