"""``qverify perf``: latency distribution and throughput of model.bin on the board.

    qverify perf -m model.bin [-b HOST] [--frames 100] [--threads 1] [--warmup 5] [--core N] [--json perf.json]

The agent's Perf call measures the frames; with ``--core`` they are measured through Runs
pinned to that core instead (the Perf call has no core field).
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer
from rich.table import Table

from qverify.client.board_options import BoardArg, with_board_settings
from qverify.client.boards import BoardSettings
from qverify.client.errors import EXIT_BAD_INPUT, Failure
from qverify.client.exec_common import (ModelArg, check_core, dist_ms, load_model_bin, out, say,
                                        where_text)
from qverify.client.views import safe_text

TOP_LAYERS = 10  # slowest layers --layers shows


@with_board_settings()
def perf_command(
    model: ModelArg,
    board: BoardArg = None,
    input_files: Annotated[list[str], typer.Option(
        "-i", "--input", help="one set of inputs (FILE, or NAME:FILE per input); default: the agent's seeded "
                              "random inputs")] = [],  # noqa: B006
    frames: Annotated[int, typer.Option("--frames", min=1, max=10_000, help="measured frames")] = 100,
    threads: Annotated[int, typer.Option("--threads", min=1, help="concurrent runners (at most the NPU cores)")] = 1,
    core: Annotated[Optional[int], typer.Option(
        "--core", min=0, help="pin the frames to this NPU core, 0..npu_cores-1 (hrt_model_exec's core_id). The "
                              "agent's Perf call cannot pin a core, so the frames are then measured as one Run of "
                              "--frames frames on that core: one thread, inputs as with run")] = None,
    warmup: Annotated[int, typer.Option("--warmup", min=0, max=10_000, help="unmeasured frames first")] = 5,
    layers: Annotated[bool, typer.Option(
        "--layers", help=f"also time every layer (a run of the same frames on one thread); shows the "
                         f"{TOP_LAYERS} slowest")] = False,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="write the figures as JSON to this file")] = None,
    *,
    settings: BoardSettings,
) -> None:
    """Measure latency (min/median/p99/max) and throughput of model.bin on the board."""
    from qverify.client import dumpfiles
    from qverify.client import inputs as inputs_mod
    from qverify.client.boards import ensure_model, open_board
    from qverify.client.inputs import InputFileError

    if json_out is not None and not json_out.absolute().parent.is_dir():
        raise Failure(f"--json {json_out}: folder {json_out.parent} does not exist", EXIT_BAD_INPUT)
    if json_out is not None and json_out.is_dir():
        raise Failure(f"--json {json_out}: is a folder; give a file name", EXIT_BAD_INPUT)
    options = settings.board_options(board)
    program = load_model_bin(model)
    ports = inputs_mod.ports_from_program(program)
    feed = None
    if input_files:
        sets = inputs_mod.build_frames(ports, list(input_files))
        if len(sets) != 1:
            raise InputFileError(f"-i: perf takes one set of inputs, got {len(sets)}; give one file per input")
        feed = sets[0].board

    from_files = feed is not None
    if core is not None and threads != 1:
        raise Failure(f"--core {core} pins the frames to one core: leave --threads out (it is {threads})",
                      EXIT_BAD_INPUT)

    say(f"connecting to {where_text(options)}")
    with open_board(options, program.target.name) as client:
        info = client.agent_info
        check_core(core, info, options)
        push = ensure_model(client, model, options)
        where = f" on core {core}" if core is not None else ""
        if core is not None:
            if feed is None:  # Run needs inputs: the same seeded random frame `run` would send
                feed = inputs_mod.random_frame(ports, 0).board
            reply = _perf_on_core(client, push.sha256, feed, frames, warmup, core)
        else:
            reply = _perf(client, push.sha256, feed, frames, threads, warmup)
        layer_rows = None
        if layers:
            say(f"timing every layer{where}")
            layer_feed = feed if feed is not None else inputs_mod.random_frame(ports, 0).board
            outcome = client.run(push.sha256, layer_feed, frames=frames, warmup=warmup, core=core)
            layer_rows = _layer_rows(outcome.timing)
        address = client.address

    figures: dict[str, Any] = {
        "schema": "qverify.perf/1",
        "model": str(model), "model_sha256": push.sha256, "program": program.name,
        "board": {"address": None if options.embedded else address, "embedded": options.embedded,
                  "board_id": info.board_id, "backend": info.backend, "npu_cores": info.npu_cores},
        "core": core, "frames": reply.frames, "threads": reply.threads, "warmup": warmup,
        "latency_ms": dist_ms(reply.latency), "fps": reply.fps, "wall_s": reply.wall_s,
        "inputs": "files" if from_files else ("random (seed 0)" if core is not None else "random (agent)"),
    }
    if layer_rows is not None:
        figures["layers"] = layer_rows
    if json_out is not None:
        dumpfiles.write_json_atomic(figures, json_out)
    _print_perf(figures)


def _perf(client, sha: str, feed, frames: int, threads: int, warmup: int):
    """The agent's Perf, with progress: one Perf call is silent until it ends, so the warm-up runs
    as its own call first and its time per frame gives the measured frames' ETA."""
    from qverify.client.views import timed_progress

    plural = "s" if threads != 1 else ""
    estimate = None
    if warmup:
        with timed_progress(f"{warmup} warm-up frames on {threads} thread{plural}") as progress:
            warm = client.perf(sha, feed, frames=warmup, threads=threads, warmup=0)
        # The agent's own wall time leaves out the model's load and the network.
        per_frame = (warm.wall_s or progress.elapsed) / max(1, warm.frames)
        estimate = per_frame * frames
    with timed_progress(f"{frames} frames on {threads} thread{plural}", estimate=estimate):
        return client.perf(sha, feed, frames=frames, threads=threads, warmup=0)


def _perf_on_core(client, sha: str, feed, frames: int, warmup: int, core: int):
    """Perf's figures from Runs pinned to ``core``, in batches so progress and ETA are real
    (the timing of every frame comes back, so the distribution is exact)."""
    from qverify.client.views import timed_progress
    from qverify.v1 import board_agent_pb2 as pb

    if warmup:
        with timed_progress(f"{warmup} warm-up frames on core {core}"):
            client.run(sha, feed, frames=warmup, core=core)
    from qverify.client.agent_client import ProtocolViolation

    batch = (frames + 19) // 20  # about 20 steps
    frame_us: list[float] = []
    started = time.perf_counter()
    with timed_progress(f"{frames} frames on core {core}", total=frames) as progress:
        for first in range(0, frames, batch):
            count = min(batch, frames - first)
            outcome = client.run(sha, feed, frames=count, core=core)
            if len(outcome.timing.frame_us) != count:
                raise ProtocolViolation(f"board {client.address} timed {len(outcome.timing.frame_us)} frames of a "
                                        f"run of {count}; its qverify-agent is broken or does not match this "
                                        "qverify")
            frame_us += outcome.timing.frame_us
            progress.step(count)
    wall = time.perf_counter() - started
    values = np.sort(np.asarray(frame_us, dtype=np.float64))
    latency = pb.Distribution(min_us=float(values[0]), median_us=float(np.median(values)),
                              p99_us=float(np.percentile(values, 99)), max_us=float(values[-1]),
                              mean_us=float(values.mean()))
    fps = 1e6 / latency.mean_us if latency.mean_us > 0 else 0.0
    return pb.PerfReply(latency=latency, fps=fps, frames=len(values), threads=1, wall_s=wall)


def _layer_rows(timing) -> list[dict[str, Any]]:
    rows = []
    for layer in (timing.layers if timing is not None else []):
        if not layer.frame_us:
            continue
        rows.append({"node": layer.node, "op": layer.op, "placement": layer.placement,
                     "median_ms": statistics.median(layer.frame_us) / 1000, "max_ms": max(layer.frame_us) / 1000})
    total = sum(r["median_ms"] for r in rows) or 1.0
    for r in rows:
        r["share"] = r["median_ms"] / total
    return sorted(rows, key=lambda r: r["median_ms"], reverse=True)


def _print_perf(figures: dict) -> None:
    lat = figures["latency_ms"]
    where = "the embedded emulated board" if figures["board"]["embedded"] else figures["board"]["address"]
    table = Table(title=f"{safe_text(figures['program'] or Path(figures['model']).name)} on {safe_text(where)}",
                  title_justify="left", show_header=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("frames", str(figures["frames"]))
    table.add_row("threads", str(figures["threads"]))
    if figures.get("core") is not None:
        table.add_row("core", str(figures["core"]))
    table.add_row("warm-up", str(figures["warmup"]))
    for key in ("min", "median", "mean", "p99", "max"):
        table.add_row(f"latency {key}", f"{lat[key]:.3f} ms")
    table.add_row("FPS", f"{figures['fps']:.2f}")
    table.add_row("wall time", f"{figures['wall_s']:.3f} s")
    out.print(table)
    rows = figures.get("layers")
    if rows:
        top = Table(title=f"{min(TOP_LAYERS, len(rows))} slowest of {len(rows)} layers (median over the frames)",
                    title_justify="left")
        for column, justify in (("node", "left"), ("op", "left"), ("on", "left"), ("median ms", "right"),
                                ("max ms", "right"), ("share", "right")):
            top.add_column(column, justify=justify, overflow="fold")
        for r in rows[:TOP_LAYERS]:
            top.add_row(safe_text(r["node"]), safe_text(r["op"]), r["placement"], f"{r['median_ms']:.3f}",
                        f"{r['max_ms']:.3f}", f"{100 * r['share']:.1f}%")
        out.print(top)
    out.print(f"FPS {figures['fps']:.2f}, median latency {lat['median']:.3f} ms over {figures['frames']} frames on "
               f"{figures['threads']} thread{'s' if figures['threads'] != 1 else ''}", soft_wrap=True)
