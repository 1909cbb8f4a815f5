"""Board commands in the style of the vendors' model runners: ``run``, ``perf`` and ``board info``.

    qverify run -m model.bin [-b HOST] [-i FILE ...] [-o OUTDIR] [-r] [--dump-layout both] [--dump-format txt]
                [--core N]
    qverify perf -m model.bin [-b HOST] [--frames 100] [--threads 1] [--warmup 5] [--core N] [--json perf.json]
    qverify board info [-b HOST] [--json]

Without ``-b`` an embedded emulated board runs in this process. ``run`` pushes model.bin
when the board lacks it, runs it, and saves the outputs (``-r``: every layer) with a
``manifest.json`` (see :mod:`qverify.client.dumpfiles`); ``perf`` asks the agent for a
latency distribution and throughput (with ``--core``, through Runs pinned to that core: the
Perf call has no core field); ``board info`` describes the agent and its store.

:func:`register` adds the commands to the ``qverify`` typer app.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from qverify.client.boards import BoardOptions, parse_board
from qverify.client.cli import EXIT_BAD_INPUT, Failure
from qverify.client.views import safe_text

_out = Console(highlight=False)
_err = Console(stderr=True, highlight=False)

TOP_LAYERS = 10

# ---------------------------------------------------------------------------- shared options

BoardArg = Annotated[Optional[str], typer.Option(
    "-b", "--board", help="board HOST[:PORT]; without it an embedded emulated board runs here")]
PortArg = Annotated[Optional[int], typer.Option("--port", help="agent port (default 7060, or the one in -b HOST:PORT)")]
TokenArg = Annotated[Optional[str], typer.Option("--token", envvar="QVERIFY_TOKEN", help="agent token")]
TlsCaArg = Annotated[Optional[Path], typer.Option("--tls-ca", help="CA certificate of the agent's TLS")]
TlsCertArg = Annotated[Optional[Path], typer.Option("--tls-cert", help="client certificate for an mTLS agent")]
TlsKeyArg = Annotated[Optional[Path], typer.Option("--tls-key", help="private key of --tls-cert")]
TransportArg = Annotated[str, typer.Option("--transport", help="how model.bin reaches the board: sftp or grpc")]
SshUserArg = Annotated[Optional[str], typer.Option(
    "--ssh-user", help="SSH user (default: ~/.ssh/config, then $USER)")]
SshKeyArg = Annotated[Optional[Path], typer.Option(
    "--ssh-key", help="SSH private key (default: ~/.ssh/config, agent)")]
SshPortArg = Annotated[Optional[int], typer.Option("--ssh-port", help="SSH port (default: ~/.ssh/config, then 22)")]
KnownHostsArg = Annotated[Optional[Path], typer.Option(
    "--known-hosts", help="known_hosts file (default ~/.ssh/known_hosts)")]
ConnectTimeoutArg = Annotated[float, typer.Option("--connect-timeout", help="seconds to wait for the board")]
TimeoutArg = Annotated[float, typer.Option("--timeout", help="seconds a call may take on the board")]
CoreArg = Annotated[Optional[int], typer.Option(
    "--core", min=0, help="NPU core to run on, 0..npu_cores-1 (hrt_model_exec's core_id; default: any free core)")]
ModelArg = Annotated[Path, typer.Option("-m", "--model", help="compiled model.bin")]
InputArg = Annotated[list[str], typer.Option(
    "-i", "--input", help="image (jpg/png), .npy, .npz or raw .bin; NAME:FILE for multi-input models; "
                          "repeat for more input sets. Default: seeded random inputs")]


def board_options(board: str | None, *, port: int | None = None, token: str | None = None,
                  tls_ca: Path | None = None, tls_cert: Path | None = None, tls_key: Path | None = None,
                  transport: str = "sftp", ssh_user: str | None = None,
                  ssh_key: Path | None = None, ssh_port: int | None = None, known_hosts: Path | None = None,
                  connect_timeout: float = 5.0, timeout: float = 300.0) -> BoardOptions:
    """The command line's board options as :class:`BoardOptions` (raises on a bad -b or --transport)."""
    if transport not in ("sftp", "grpc"):
        raise Failure(f"--transport {transport}: choose sftp or grpc", EXIT_BAD_INPUT)
    if connect_timeout <= 0 or timeout <= 0:
        raise Failure("--connect-timeout and --timeout must be positive numbers of seconds", EXIT_BAD_INPUT)
    from qverify.client.boards import BoardSpecError, check_tls_files

    try:
        check_tls_files(tls_ca, tls_cert, tls_key)
    except BoardSpecError as exc:
        raise Failure(str(exc), EXIT_BAD_INPUT) from None
    host, agent_port = parse_board(board, port)
    ssh = None
    if host is not None and transport == "sftp":
        from qverify.client.ssh import SshOptions

        ssh = SshOptions(user=ssh_user, key=ssh_key, port=ssh_port, known_hosts=known_hosts,
                         connect_timeout=connect_timeout)
    return BoardOptions(host=host, port=agent_port, token=token, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key,
                        transport=transport, ssh=ssh,
                        connect_timeout=connect_timeout, timeout=timeout)


def _check_core(core: int | None, info, options: BoardOptions) -> None:
    """--core names one of the board's NPU cores (BadRequest, exit 2, before anything runs)."""
    cores = max(1, info.npu_cores)
    if core is not None and core >= cores:
        from qverify.client.agent_client import BadRequest

        raise BadRequest(f"--core {core}: {_where(options)} has {cores} NPU core(s); give 0..{cores - 1} or leave "
                         "--core out")


def _load_model_bin(path: Path):
    """model.bin -> Program; a missing file or a quant.onnx is a ModelFileError (exit 2)."""
    from qverify.client.modelfiles import ModelFileError, sniff
    from qverify.simulator import load

    if sniff(path) != "bin":
        raise ModelFileError(f"-m {path}: is an ONNX model; this command runs a compiled model.bin "
                             f"(make it with: qverify compile {path} -o model.bin)")
    return load(path)


def _say(message: str) -> None:
    _err.print(f"[dim]… {safe_text(message, None)}[/dim]")


def _where(options: BoardOptions) -> str:
    return f"board {options.host}:{options.port}" if options.host else "the embedded emulated board"


def _ms(us: float) -> str:
    return f"{us / 1000:.3f}"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _shape_text(shape) -> str:
    from qverify.client.views import dims_text

    return dims_text(shape) or "scalar"


# ---------------------------------------------------------------------------- run


def run_command(
    model: ModelArg,
    board: BoardArg = None,
    input_files: InputArg = [],  # noqa: B006 (typer reads the default)
    seed: Annotated[int, typer.Option("--seed", help="seed of the random inputs")] = 0,
    outdir: Annotated[Path, typer.Option("-o", "--output-dir", help="folder for the tensors and manifest.json")]
    = Path("qverify-run"),
    force: Annotated[bool, typer.Option("--force", help="replace the content of a non-empty OUTDIR")] = False,
    dump_all: Annotated[bool, typer.Option("-r", "--dump-all-nodes", help="save every layer's output, not only "
                                                                          "the model outputs")] = False,
    dump_layout: Annotated[str, typer.Option("--dump-layout", help="valid (logical tensor), aligned (native "
                                                                   "buffer, padding included) or both")] = "valid",
    dump_format: Annotated[str, typer.Option("--dump-format", help="npy, bin (raw little-endian) or txt")] = "npy",
    dump_precision: Annotated[int, typer.Option("--dump-precision", min=0, max=20,
                                                help="txt: decimals of float values")] = 6,
    dump_txt_axis: Annotated[Optional[int], typer.Option(
        "--dump-txt-axis", help="txt: one line per index along this axis (negative counts from the end); "
                                "tensors without that axis get one value per line")] = None,
    dequantize_values: Annotated[bool, typer.Option(
        "--dequantize", help="save float32 scale*(q-zero_point) instead of the raw integers")] = False,
    frames: Annotated[int, typer.Option("--frames", min=1, max=10_000, help="measured runs of each input set "
                                        "(the saved tensors are the last run's)")] = 1,
    warmup: Annotated[int, typer.Option("--warmup", min=0, max=10_000, help="unmeasured runs before them")] = 0,
    core: CoreArg = None,
    port: PortArg = None,
    token: TokenArg = None,
    tls_ca: TlsCaArg = None,
    tls_cert: TlsCertArg = None,
    tls_key: TlsKeyArg = None,
    transport: TransportArg = "sftp",
    ssh_user: SshUserArg = None,
    ssh_key: SshKeyArg = None,
    ssh_port: SshPortArg = None,
    known_hosts: KnownHostsArg = None,
    connect_timeout: ConnectTimeoutArg = 5.0,
    timeout: TimeoutArg = 300.0,
) -> None:
    """Run model.bin on the board and save its outputs (-r: every layer) with a manifest."""
    from qverify.client import dumpfiles
    from qverify.client import inputs as inputs_mod
    from qverify.client.boards import ensure_model, open_board

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
    options = board_options(board, port=port, token=token, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, transport=transport, ssh_user=ssh_user,
                            ssh_key=ssh_key, ssh_port=ssh_port, known_hosts=known_hosts,
                            connect_timeout=connect_timeout, timeout=timeout)
    program = _load_model_bin(model)
    ports = inputs_mod.ports_from_program(program)
    input_sets = inputs_mod.build_frames(ports, list(input_files), seed)

    _say(f"connecting to {_where(options)}")
    timings = []
    with open_board(options, program.target.name) as client:
        info = client.agent_info
        _check_core(core, info, options)
        push = ensure_model(client, model, options)
        if push.sent:
            _say(f"pushed {model.name} ({_size(push.bytes)}, {push.transport})")
        manifest: dict[str, Any] = {
            "model": str(model), "model_sha256": push.sha256, "program": program.name,
            "target": program.target.name,
            "board": {"address": None if options.embedded else client.address, "embedded": options.embedded,
                      "board_id": info.board_id, "backend": info.backend, "agent_version": info.agent_version,
                      "runtime_version": info.runtime_version},
            "format": dump_format, "dump_all_nodes": dump_all, "dump_layout": dump_layout,
            "dequantized": dequantize_values, "frames": frames, "warmup": warmup,
            "outputs": [t.name for t in program.outputs], "input_sets": [], "files": [],
        }
        if dump_format == "txt":
            manifest["txt"] = {"precision": dump_precision, "axis": dump_txt_axis}
        outputs = set(manifest["outputs"])
        # Each input set's tensors are written as soon as they arrive (memory holds one set);
        # the folder appears only once everything is written.
        with folder:
            for number, frame in enumerate(input_sets):
                if len(input_sets) > 1:
                    _say(f"input set {number + 1}/{len(input_sets)}")
                outcome = client.run(push.sha256, frame.board, dump="all" if dump_all else "outputs",
                                     layout=dump_layout, frames=frames, warmup=warmup, core=core)
                sub = f"set{number:03d}" if len(input_sets) > 1 else ""
                target_dir = folder.path / sub if sub else folder.path
                target_dir.mkdir(exist_ok=True)
                manifest["input_sets"].append({
                    "index": number, "folder": sub or ".",
                    "inputs": [{"name": p.name, "source": frame.sources.get(p.name, ""),
                                "dtype": str(frame.board[p.name].dtype), "shape": list(frame.board[p.name].shape)}
                               for p in ports],
                    "timing": _timing_dict(outcome.timing)})
                for dumped in sorted(outcome.dumps.values(),
                                     key=lambda d: (d.header.index, d.header.layout != "valid")):
                    manifest["files"].append(_save_dump(dumped, target_dir, sub, writer, dequantize_values, number,
                                                        outputs))
                timings.append(outcome.timing)
                del outcome
            dumpfiles.write_manifest(manifest, folder.path / "manifest.json")
    _print_run(manifest, outdir, timings, dump_all)


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
    return {"frames": len(timing.frame_us), "latency_ms": _dist_ms(model), "queue_wait_ms": timing.queue_wait_us / 1000,
            "core": timing.core,
            "layers": [{"node": layer.node, "op": layer.op, "placement": layer.placement,
                        "median_ms": statistics.median(layer.frame_us) / 1000 if layer.frame_us else None,
                        "acc_overflow": layer.acc_overflow, "saturated": layer.saturated}
                       for layer in timing.layers]}


def _dist_ms(dist) -> dict[str, float]:
    return {"min": dist.min_us / 1000, "median": dist.median_us / 1000, "mean": dist.mean_us / 1000,
            "p99": dist.p99_us / 1000, "max": dist.max_us / 1000}


def _print_run(manifest: dict, outdir: Path, timings: list, dump_all: bool) -> None:
    files = manifest["files"]
    shown = [f for f in files if f["output"]] if dump_all else files
    where = "the embedded emulated board" if manifest["board"]["embedded"] else manifest["board"]["address"]
    table = Table(title=f"{safe_text(manifest['program'] or Path(manifest['model']).name)} on {safe_text(where)}",
                  title_justify="left")
    for column in ("tensor", "layout", "shape", "dtype", "file"):
        table.add_column(column, overflow="fold")
    for f in shown:
        table.add_row(safe_text(f["tensor"]), f["layout"], _shape_text(f["shape"]), f["dtype"], safe_text(f["file"]))
    _out.print(table)
    if dump_all:
        _out.print(f"{len(files)} files ({len(files) - len(shown)} layer dumps besides the outputs); "
                   "manifest.json lists them all", soft_wrap=True)
    for number, timing in enumerate(timings):
        if timing is None:
            continue
        prefix = f"input set {number}: " if len(timings) > 1 else ""
        d = timing.model
        count = len(timing.frame_us)
        stats = (f"{_ms(d.median_us)} ms" if count == 1 else
                 f"min {_ms(d.min_us)} / median {_ms(d.median_us)} / p99 {_ms(d.p99_us)} / max {_ms(d.max_us)} ms")
        _out.print(f"{prefix}latency over {count} frame{'s' if count != 1 else ''}: {stats} "
                   f"(queue wait {_ms(timing.queue_wait_us)} ms, core {timing.core})", soft_wrap=True)
    _out.print(f"saved {len(files)} file{'s' if len(files) != 1 else ''} to {safe_text(outdir, None)} "
               f"({manifest['format']}), manifest {safe_text(outdir / 'manifest.json', None)}", soft_wrap=True)


# ---------------------------------------------------------------------------- perf


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
    port: PortArg = None,
    token: TokenArg = None,
    tls_ca: TlsCaArg = None,
    tls_cert: TlsCertArg = None,
    tls_key: TlsKeyArg = None,
    transport: TransportArg = "sftp",
    ssh_user: SshUserArg = None,
    ssh_key: SshKeyArg = None,
    ssh_port: SshPortArg = None,
    known_hosts: KnownHostsArg = None,
    connect_timeout: ConnectTimeoutArg = 5.0,
    timeout: TimeoutArg = 300.0,
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
    options = board_options(board, port=port, token=token, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, transport=transport, ssh_user=ssh_user,
                            ssh_key=ssh_key, ssh_port=ssh_port, known_hosts=known_hosts,
                            connect_timeout=connect_timeout, timeout=timeout)
    program = _load_model_bin(model)
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

    _say(f"connecting to {_where(options)}")
    with open_board(options, program.target.name) as client:
        info = client.agent_info
        _check_core(core, info, options)
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
            _say(f"timing every layer{where}")
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
        "latency_ms": _dist_ms(reply.latency), "fps": reply.fps, "wall_s": reply.wall_s,
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
    _out.print(table)
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
        _out.print(top)
    _out.print(f"FPS {figures['fps']:.2f}, median latency {lat['median']:.3f} ms over {figures['frames']} frames on "
               f"{figures['threads']} thread{'s' if figures['threads'] != 1 else ''}", soft_wrap=True)


# ---------------------------------------------------------------------------- board info

board_app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                        help="The board's agent: versions, resources, stored models.")


@board_app.command("info")
def board_info_command(
    board: BoardArg = None,
    json_out: Annotated[bool, typer.Option("--json", help="print machine-readable JSON instead of tables")] = False,
    port: PortArg = None,
    token: TokenArg = None,
    tls_ca: TlsCaArg = None,
    tls_cert: TlsCertArg = None,
    tls_key: TlsKeyArg = None,
    connect_timeout: ConnectTimeoutArg = 5.0,
    timeout: TimeoutArg = 60.0,
) -> None:
    """Describe the board's agent (versions, target, resources, limits) and the models in its store."""
    from qverify.client.boards import open_board

    options = board_options(board, port=port, token=token, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, transport="grpc",
                            connect_timeout=connect_timeout, timeout=timeout)
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
        ("cpus / memory", f"{s['cpu_count']} / {_size(s['memory_bytes'])}"),
        ("npu cores", str(s["npu_cores"])),
        ("model store", f"{safe_text(store['path'])}: {_size(store['used_bytes'])} used of "
                        f"{_size(store['capacity_bytes'])}, {_size(store['free_bytes'])} free on disk"),
        ("limits", f"model {_size(limits['max_model_bytes'])}, message {_size(limits['max_message_bytes'])}, "
                   f"inputs {_size(limits['max_input_bytes'])}, queue {limits['max_queue']} per core"),
        ("capabilities", _items_text(s["capabilities"]) or "-"),
        ("active faults", _items_text(s["faults"]) or "none"),
    ]
    for key, value in rows:
        style = "[red]" if key == "active faults" and s["faults"] else ""
        table.add_row(key, f"{style}{value}" + ("[/]" if style else ""))
    _out.print(table)
    if not s["models"]:
        _out.print("no models stored")
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
        models.add_row(safe_text(m["sha256"][:12]), _size(m["size_bytes"]), safe_text(m["name"] or "-"),
                       safe_text(m["target"] or "-"), used)
    _out.print(models)
    if len(shown) < len(stored):
        _out.print(f"… {len(stored) - len(shown)} more models; qverify board info --json lists them all")


# ---------------------------------------------------------------------------- registration


def register(app: typer.Typer) -> None:
    """Add ``run``, ``perf`` and ``board info`` to the ``qverify`` app."""
    app.command("run")(run_command)
    app.command("perf")(perf_command)
    app.add_typer(board_app, name="board")
