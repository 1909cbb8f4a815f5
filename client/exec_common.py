"""What ``run``, ``perf`` and ``board info`` share besides the board options
(:mod:`qverify.client.board_options`): the model and core options, the check of ``--core``
against the board, progress lines and number formats."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from qverify.client.boards import BoardOptions
from qverify.client.views import safe_text

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

CoreArg = Annotated[Optional[int], typer.Option(
    "--core", min=0, help="NPU core to run on, 0..npu_cores-1 (hrt_model_exec's core_id; default: any free core)")]
ModelArg = Annotated[Path, typer.Option("-m", "--model", help="compiled model.bin")]


def check_core(core: int | None, info, options: BoardOptions) -> None:
    """--core names one of the board's NPU cores (BadRequest, exit 2, before anything runs)."""
    cores = max(1, info.npu_cores)
    if core is not None and core >= cores:
        from qverify.client.agent_client import BadRequest

        raise BadRequest(f"--core {core}: {where_text(options)} has {cores} NPU core(s); give 0..{cores - 1} or leave "
                         "--core out")


def load_model_bin(path: Path):
    """model.bin -> Program; a missing file or a quant.onnx is a ModelFileError (exit 2)."""
    from qverify.client.modelfiles import ModelFileError, sniff
    from qverify.simulator import load

    if sniff(path) != "bin":
        raise ModelFileError(f"-m {path}: is an ONNX model; this command runs a compiled model.bin "
                             f"(make it with: qverify compile {path} -o model.bin)")
    return load(path)


def say(message: str) -> None:
    err.print(f"[dim]… {safe_text(message, None)}[/dim]")


def where_text(options: BoardOptions) -> str:
    return f"board {options.host}:{options.port}" if options.host else "the embedded emulated board"


def ms_text(us: float) -> str:
    return f"{us / 1000:.3f}"


def size_text(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def shape_text(shape) -> str:
    from qverify.client.views import dims_text

    return dims_text(shape) or "scalar"



def dist_ms(dist) -> dict[str, float]:
    return {"min": dist.min_us / 1000, "median": dist.median_us / 1000, "mean": dist.mean_us / 1000,
            "p99": dist.p99_us / 1000, "max": dist.max_us / 1000}
