"""``qverify run``: run model.bin on the board and save its outputs with a manifest.

    qverify run -m model.bin [-b HOST] [-i FILE ...] [-o OUTDIR] [-r | --dump NAME,...] [--dump-layout both]
                [--dump-format txt] [--core N]

Without ``-b`` an embedded emulated board runs in this process. model.bin is pushed when the
board lacks it; the outputs (``-r``: every layer) are saved with a ``manifest.json`` (see
:mod:`qverify.client.dumpfiles`), which this module writes.
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer
from rich.table import Table

from qverify.client.board_options import BoardArg, with_board_settings
from qverify.client.boards import BoardSettings
from qverify.client.dump_command import DumpFormatArg, DumpPrecisionArg, ForceArg, SeedArg, parse_names
from qverify.client.errors import EXIT_BAD_INPUT, Failure
from qverify.client.exec_common import (CoreArg, ModelArg, check_core, dist_ms, load_model_bin,
                                        ms_text, out, say, shape_text, size_text, where_text)
from qverify.client.views import safe_text

InputArg = Annotated[list[str], typer.Option(
    "-i", "--input", help="image (jpg/png), .npy, .npz or raw .bin; NAME:FILE for multi-input models; "
                          "repeat for more input sets. Default: seeded random inputs")]


@with_board_settings()
def run_command(
    model: ModelArg,
    board: BoardArg = None,
    input_files: InputArg = [],  # noqa: B006 (typer reads the default)
    seed: SeedArg = 0,
    outdir: Annotated[Path, typer.Option("-o", "--output-dir", help="folder for the tensors and manifest.json")]
    = Path("qverify-run"),
    force: ForceArg = False,
    dump_all: Annotated[bool, typer.Option("-r", "--dump-all-nodes", help="save every layer's output, not only "
                                                                          "the model outputs")] = False,
    dump_layout: Annotated[str, typer.Option("--dump-layout", help="valid (logical tensor), aligned (native "
                                                                   "buffer, padding included) or both")] = "valid",
    dump_format: DumpFormatArg = "npy",
    dump_precision: DumpPrecisionArg = 6,
    dump_txt_axis: Annotated[Optional[int], typer.Option(
        "--dump-txt-axis", help="txt: one line per index along this axis (negative counts from the end); "
                                "tensors without that axis get one value per line")] = None,
    dequantize_values: Annotated[bool, typer.Option(
        "--dequantize", help="save float32 scale*(q-zero_point) instead of the raw integers")] = False,
    frames: Annotated[int, typer.Option("--frames", min=1, max=10_000, help="measured runs of each input set "
                                        "(the saved tensors are the last run's)")] = 1,
    warmup: Annotated[int, typer.Option("--warmup", min=0, max=10_000, help="unmeasured runs before them")] = 0,
    core: CoreArg = None,
    dump_names: Annotated[Optional[str], typer.Option(
        "--dump", help="comma-separated program tensor names: save these only (see qverify info)")] = None,
    fault: Annotated[list[str], typer.Option("--fault", hidden=True,
                                             help="embedded board only: inject a fault (testing)")] = [],  # noqa: B006
    *,
    settings: BoardSettings,
) -> None:
    """Run model.bin on the board and save its outputs (-r: every layer; --dump: the named ones) with a manifest."""
    from qverify.client import dumpfiles
    from qverify.client import inputs as inputs_mod
    from qverify.client.boards import ensure_model, open_board

    names = parse_names(dump_names)
    if names is not None and dump_all:
        raise Failure("-r saves every layer and --dump only the named ones: give one of them", EXIT_BAD_INPUT)
    if fault and board:
        raise Failure("--fault works only on the embedded emulated board (no -b)", EXIT_BAD_INPUT)
    _check_faults(fault)
    if dump_layout not in dumpfiles.LAYOUTS:
        raise Failure(f"--dump-layout {dump_layout}: choose valid, aligned or both", EXIT_BAD_INPUT)
    if dump_format not in dumpfiles.FORMATS:
        raise Failure(f"--dump-format {dump_format}: choose npy, bin or txt", EXIT_BAD_INPUT)
    writer = dumpfiles.TensorFormat(dump_format, dump_precision, dump_txt_axis)
    folder = dumpfiles.OutputFolder(outdir, force)
    try:
        folder.check()
    except dumpfiles.OutputFolderError as exc:
        raise Failure(str(exc), EXIT_BAD_INPUT) from None
    options = settings.board_options(board, fault)
    program = load_model_bin(model)
    if names is not None:
        check_names(program, names)
    ports = inputs_mod.ports_from_program(program)
    input_sets = inputs_mod.build_frames(ports, list(input_files), seed)

    say(f"connecting to {where_text(options)}")
    timings = []
    with open_board(options, program.target.name) as client:
        info = client.agent_info
        check_core(core, info, options)
        push = ensure_model(client, model, options)
        if push.sent:
            say(f"pushed {model.name} ({size_text(push.bytes)}, {push.transport})")
        with folder:
            manifest = save_run(client, push.sha256, model, program, input_sets, folder.path, writer,
                                options=options, dump="all" if dump_all else (names or "outputs"),
                                dump_layout=dump_layout, dequantize_values=dequantize_values, frames=frames,
                                warmup=warmup, core=core, timings=timings)
    _print_run(manifest, outdir, timings, dump_all)


def _check_faults(faults: list[str]) -> None:
    from qverify.agent.faults import parse_fault

    for text in faults:
        try:
            parse_fault(text)
        except ValueError as exc:
            raise Failure(str(exc), EXIT_BAD_INPUT) from None


def check_names(program, names: list[str]) -> None:
    """``--dump`` names program tensors; an unknown one is a one-line Failure listing a few valid names."""
    from qverify.client.onnx_dump import few_names

    unknown = [n for n in names if n not in program.tensors]
    if unknown:
        raise Failure(f"--dump {unknown[0]}: {program.name or 'the model'} has no tensor of that name; valid names "
                      f"include {few_names(list(program.tensors))} (qverify info lists them)", EXIT_BAD_INPUT)


def save_run(client, sha256: str, model: Path, program, input_sets: list, folder: Path, writer, *, options,
             dump: str | list[str] = "outputs", dump_layout: str = "valid", dequantize_values: bool = False,
             frames: int = 1, warmup: int = 0, core: int | None = None, timings: list | None = None,
             progress=say) -> dict[str, Any]:
    """Run ``program`` (pushed as ``sha256``) on a connected board for each input set and write its dumps
    (``dump``: "all", "outputs" or a list of tensor names) into ``folder`` with ``manifest.json``,
    each input set's tensors as soon as they arrive. Returns the manifest."""
    from qverify.client import dumpfiles

    info = client.agent_info
    manifest: dict[str, Any] = {
        "source": "board", "model": str(model), "model_sha256": sha256, "model_size": Path(model).stat().st_size,
        "program": program.name, "target": program.target.name,
        "board": {"address": None if options.embedded else client.address, "embedded": options.embedded,
                  "board_id": info.board_id, "backend": info.backend, "agent_version": info.agent_version,
                  "runtime_version": info.runtime_version},
        "format": writer.fmt, "dump_all_nodes": dump == "all", "dump_names": dump if isinstance(dump, list) else [],
        "dump_layout": dump_layout, "dequantized": dequantize_values, "frames": frames, "warmup": warmup,
        "outputs": [t.name for t in program.outputs], "input_sets": [], "files": [],
    }
    if writer.fmt == "txt":
        manifest["txt"] = {"precision": writer.precision, "axis": writer.txt_axis}
    # Outputs written by a lookup table: an offline compare judges them through it, as verify does.
    from qverify.client.verdict import lookup_anchors

    manifest["lookup_tables"] = {name: {"input": source, "table": [int(v) for v in table]}
                                 for name, (source, table) in lookup_anchors(program).items()}
    outputs = set(manifest["outputs"])
    for number, frame in enumerate(input_sets):
        if len(input_sets) > 1:
            progress(f"input set {number + 1}/{len(input_sets)}")
        outcome = client.run(sha256, frame.board, dump=dump, layout=dump_layout, frames=frames, warmup=warmup,
                             core=core)
        sub = f"set{number:03d}" if len(input_sets) > 1 else ""
        target_dir = folder / sub if sub else folder
        target_dir.mkdir(exist_ok=True)
        manifest["input_sets"].append({
            "index": number, "folder": sub or ".",
            "inputs": [{"name": name, "source": frame.sources.get(name, ""), "dtype": str(frame.board[name].dtype),
                        "shape": list(frame.board[name].shape)} for name in frame.board],
            "timing": _timing_dict(outcome.timing)})
        for dumped in sorted(outcome.dumps.values(), key=lambda d: (d.header.index, d.header.layout != "valid")):
            manifest["files"].append(_save_dump(dumped, target_dir, sub, writer, dequantize_values, number, outputs))
        if timings is not None:
            timings.append(outcome.timing)
        del outcome
    dumpfiles.write_manifest(manifest, folder / "manifest.json")
    return manifest


def _save_dump(dumped, folder: Path, sub: str, writer, dequantize_values: bool, set_index: int,
               outputs: set[str]) -> dict[str, Any]:
    from qverify.client import dumpfiles
    from qverify.simulator import dequantize
    from qverify.simulator.program import dtype_of

    h = dumped.header
    array = dumped.array
    board_dtype = dtype_of(h.dtype)
    if dequantize_values and board_dtype == np.int8:
        array = dequantize(array, h.scale, h.zero_point)
    name = dumpfiles.file_name(h.index, h.name, h.layout, writer.fmt)
    extra = writer.write(array, folder / name)
    entry = {
        "file": f"{sub}/{name}" if sub else name, "tensor": h.name, "producer": h.producer,
        "onnx_float_name": h.onnx_float_name, "index": h.index, "input_set": set_index,
        "output": h.name in outputs, "layout": h.layout, "dtype": str(array.dtype), "shape": list(array.shape),
        "board_dtype": str(board_dtype), "logical_shape": [int(d) for d in h.shape],
        "aligned_layout": h.aligned_layout, "aligned_shape": [int(d) for d in h.aligned_shape],
        "aligned_strides": [int(d) for d in h.aligned_strides], "scale": float(h.scale),
        "zero_point": int(h.zero_point), "placement": h.placement or None,
    }
    entry.update(extra)
    return entry


def _timing_dict(timing) -> dict[str, Any] | None:
    if timing is None:
        return None
    model = timing.model
    return {"frames": len(timing.frame_us), "latency_ms": dist_ms(model), "queue_wait_ms": timing.queue_wait_us / 1000,
            "core": timing.core,
            "layers": [{"node": layer.node, "op": layer.op, "placement": layer.placement,
                        "median_ms": statistics.median(layer.frame_us) / 1000 if layer.frame_us else None,
                        "acc_overflow": layer.acc_overflow, "saturated": layer.saturated}
                       for layer in timing.layers]}




def _print_run(manifest: dict, outdir: Path, timings: list, dump_all: bool) -> None:
    files = manifest["files"]
    shown = [f for f in files if f["output"]] if dump_all else files
    where = "the embedded emulated board" if manifest["board"]["embedded"] else manifest["board"]["address"]
    table = Table(title=f"{safe_text(manifest['program'] or Path(manifest['model']).name)} on {safe_text(where)}",
                  title_justify="left")
    for column in ("tensor", "layout", "shape", "dtype", "file"):
        table.add_column(column, overflow="fold")
    for f in shown:
        table.add_row(safe_text(f["tensor"]), f["layout"], shape_text(f["shape"]), f["dtype"], safe_text(f["file"]))
    out.print(table)
    if dump_all:
        out.print(f"{len(files)} files ({len(files) - len(shown)} layer dumps besides the outputs); "
                   "manifest.json lists them all", soft_wrap=True)
    for number, timing in enumerate(timings):
        if timing is None:
            continue
        prefix = f"input set {number}: " if len(timings) > 1 else ""
        d = timing.model
        count = len(timing.frame_us)
        stats = (f"{ms_text(d.median_us)} ms" if count == 1 else
                 f"min {ms_text(d.min_us)} / median {ms_text(d.median_us)} / p99 {ms_text(d.p99_us)} / max {ms_text(d.max_us)} ms")
        out.print(f"{prefix}latency over {count} frame{'s' if count != 1 else ''}: {stats} "
                   f"(queue wait {ms_text(timing.queue_wait_us)} ms, core {timing.core})", soft_wrap=True)
    out.print(f"saved {len(files)} file{'s' if len(files) != 1 else ''} to {safe_text(outdir, None)} "
               f"({manifest['format']}), manifest {safe_text(outdir / 'manifest.json', None)}", soft_wrap=True)
