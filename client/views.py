"""Terminal rendering (rich) of compile results, model info and the demo."""
from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from qverify.client.term_tables import _UNSAFE_CHARS, _visible, rows_table, short_name
from qverify.v1 import model_pb2

_console = Console(highlight=False)
_err = Console(stderr=True, highlight=False)

NAME_LIMIT = 200      # characters of one name shown in a table cell
SHAPE_LIMIT = 8       # dimensions shown before a shape is summarised
INFO_LAYER_ROWS = 200  # layers listed by `qverify info` (--json has them all)


def safe_text(value: object, limit: int | None = NAME_LIMIT) -> str:
    """``value`` as rich markup that prints literally: control characters made visible, brackets
    escaped, and longer than ``limit`` characters cut with an ellipsis."""
    text = str(value)
    if limit is not None and len(text) > limit:
        text = text[: max(1, limit - 1)] + "…"
    return escape(_UNSAFE_CHARS.sub(lambda m: _visible(m.group()), text))


def _literal(value: object) -> str:
    """Text from a model or a board, printed as it is (markup escaped, control characters visible), uncut."""
    return safe_text(value, None)


def _named(name: str) -> str:
    """A name from a model for a table cell: at most ``NAME_LIMIT`` characters, shortened between its
    tokens when it can be (a name of one huge token is cut, with an ellipsis)."""
    name = short_name(name, NAME_LIMIT)
    return name if len(name) <= NAME_LIMIT else name[: NAME_LIMIT - 1] + "…"


def dims_text(dims, sep: str = "x", limit: int = SHAPE_LIMIT) -> str:
    """A shape for people: ``1x3x224x224``; one longer than ``limit`` dims is summarised
    (``1x3x...(5000000 dims)``) without walking all of it."""
    count = len(dims)
    if count > limit:
        return sep.join(str(int(d)) for d in dims[:3]) + f"{sep}...({count} dims)"
    return sep.join(str(int(d)) for d in dims)


def list_text(values, limit: int = SHAPE_LIMIT) -> str:
    """A list of numbers for people, summarised past ``limit`` items."""
    count = len(values)
    shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in list(values[:limit]))
    return f"[{shown}, ... ({count} values)]" if count > limit else f"[{shown}]"


def progress_line(message: str) -> None:
    _err.print(f"[dim]… {message}[/dim]")


def tensor_summary(info: model_pb2.TensorInfo) -> dict:
    out = {"name": info.name, "dtype": model_pb2.DataType.Name(info.dtype).lower(), "shape": list(info.shape),
           "aligned_layout": info.aligned_layout, "aligned_shape": list(info.aligned_shape),
           "aligned_strides": list(info.aligned_strides), "producer": info.producer}
    if info.dtype == model_pb2.INT8:
        out["scale"] = info.quant.scale
        out["zero_point"] = info.quant.zero_point
        out["onnx_dtype"] = "uint8" if info.onnx_dtype == 2 else "int8"
    if info.onnx_float_name:
        out["onnx_float_name"] = info.onnx_float_name
    return out


def program_summary(program, path: Path, layers: bool = True) -> dict:
    """The JSON view of ``qverify info`` (``layers=False``: without the per-layer list)."""
    from qverify.simulator import feed_shape
    from qverify.simulator.compiler.preprocess import frame_shape

    proto = program.proto
    tensors = {t.name: t for t in proto.tensors}
    return {
        "schema": "qverify.info/1",
        "file": str(path), "name": proto.name, "target": {"name": program.target.name,
                                                          "c_align": program.target.c_align,
                                                          "w_align": program.target.w_align,
                                                          "rounding": program.target.rounding},
        "source_format": proto.source_format, "source_sha256": proto.source_sha256,
        "compiler_version": proto.compiler_version,
        "inputs": [{**tensor_summary(tensors[t.name]), "onnx_input": o, "feed_shape": list(feed_shape(t))}
                   for t, o in zip(program.inputs, proto.onnx_inputs)],
        "outputs": [{**tensor_summary(tensors[t.name]), "onnx_output": o}
                    for t, o in zip(program.outputs, proto.onnx_outputs)],
        "preprocess": [{"input": p.input, "color": p.color, "model_color": p.model_color, "mean": list(p.mean),
                        "std": list(p.std), "image_shape": list(p.image_shape),
                        "frame_shape": list(frame_shape(p))} for p in proto.preprocess],
        "layers": [{"name": n.name, "op": n.op, "onnx_op": n.onnx_op, "placement": "cpu" if n.on_cpu else "npu",
                    "inputs": n.inputs, "outputs": [tensor_summary(tensors[o]) for o in n.outputs]}
                   for n in program.nodes] if layers else [],
    }


def _shape(info: model_pb2.TensorInfo) -> str:
    return dims_text(info.shape) or "scalar"


def _quant(info: model_pb2.TensorInfo) -> str:
    if info.dtype != model_pb2.INT8:  # plain text: the tables print it without markup
        return (model_pb2.DataType.Name(info.dtype).lower() if info.dtype in model_pb2.DataType.values()
                else f"dtype {info.dtype}")
    text = f"s={info.quant.scale:.4g} zp={info.quant.zero_point}"
    if info.onnx_dtype == 2:  # held as int8, uint8 in the ONNX model: show its own zero point too
        text += f" (u8 {info.quant.zero_point + 128})"
    return text


def print_info(program, path: Path, max_layers: int = INFO_LAYER_ROWS) -> None:
    """Tables of a model; every name from the file is shown literally (no markup, no terminal
    control), long shapes and lists are summarised, and at most ``max_layers`` layers are listed."""
    summary = program_summary(program, path, layers=False)  # the layers are listed from the program below
    proto = program.proto
    tensors = {t.name: t for t in proto.tensors}
    target = program.target
    _console.print(f"[bold]{safe_text(path, None)}[/bold]  model '{safe_text(proto.name)}'  target "
                   f"{safe_text(target.name)} (NHWC, C%{target.c_align}, W%{target.w_align}, "
                   f"{safe_text(target.rounding)} rounding)  from {safe_text(proto.source_format)} "
                   f"ONNX sha256 {safe_text(proto.source_sha256[:12])}…", soft_wrap=True)
    io = [["in", _named(item["name"]), f"{item['dtype']}[{dims_text(item['feed_shape'], ',')}]",
           _shape(tensors[item["name"]]), _quant(tensors[item["name"]]), _named(item["onnx_input"])]
          for item in summary["inputs"]]
    io += [["out", _named(item["name"]), f"{item['dtype']}[{dims_text(tensors[item['name']].shape, ',')}]",
            _shape(tensors[item["name"]]), _quant(tensors[item["name"]]), _named(item["onnx_output"])]
           for item in summary["outputs"]]
    rows_table(_console, "inputs and outputs", ("", "name", "board feed", "logical", "quant", "ONNX tensor"), io,
                names=(1, 5), stack=lambda i: [f"{io[i][0]} {io[i][1]}", f"board feed {io[i][2]} · logical "
                                               f"{io[i][3]} · {io[i][4]} · ONNX {io[i][5]}"])
    for pre in summary["preprocess"]:
        if pre["frame_shape"] != pre["image_shape"]:  # NV12: the frame holds the picture in another shape
            taken = (f"{safe_text(pre['color'])} frames {list_text(pre['frame_shape'])} "
                     f"(picture NHWC {list_text(pre['image_shape'])})")
        else:
            taken = f"{safe_text(pre['color'])} NHWC {list_text(pre['image_shape'])}"
        _console.print(f"preprocess: board takes uint8 {taken}, model channels {safe_text(pre['model_color'])}, "
                       f"mean {list_text(pre['mean'])}, std {list_text(pre['std'])}", soft_wrap=True)
    nodes = program.nodes
    cpu = sum(n.on_cpu for n in nodes)
    shown = nodes[:max_layers]
    rows = []
    for index, node in enumerate(shown):
        for k, out in enumerate(node.outputs[:SHAPE_LIMIT]):
            info = tensors[out]
            head = [str(index), _named(node.name), node.op, node.onnx_op, "cpu" if node.on_cpu else "npu"]
            rows.append((head if k == 0 else [""] * 5) + [
                _named(out), _shape(info), f"{info.aligned_layout} {dims_text(info.aligned_shape)}", _quant(info)])
        if len(node.outputs) > SHAPE_LIMIT:
            rows.append([""] * 5 + [f"... {len(node.outputs) - SHAPE_LIMIT} more outputs", "", "", ""])

    def stack(i: int) -> list[str]:
        row = rows[i]
        first = f"{row[0]} {row[1]}  {row[2]} ({row[3]}) on {row[4]}" if row[0] else ""
        return [first, " · ".join(cell for cell in row[5:] if cell)]

    rows_table(_console, f"layers ({len(nodes)}, {cpu} on cpu)"
                + (f", the first {len(shown)} listed" if len(shown) < len(nodes) else ""),
                ("#", "node", "op", "onnx op", "on", "output", "logical", "aligned", "quant"), rows, names=(1, 5),
                stack=stack, right=(0,))
    if len(shown) < len(nodes):
        _console.print(f"… {len(nodes) - len(shown)} more layers; qverify info --json lists them all")


def print_compile_summary(program, path: Path, digest: str) -> None:
    cpu = [n.name for n in program.nodes if n.on_cpu]
    _console.print(f"wrote {safe_text(path, None)} ({path.stat().st_size} bytes, sha256 {digest[:16]}…): "
                   f"{len(program.nodes)} layers, {len(cpu)} on cpu, target {safe_text(program.target.name)}")
    if cpu:
        _console.print("on cpu (float32): " + ", ".join(safe_text(n) for n in cpu[:10]) + (" …" if len(cpu) > 10 else ""))


def print_demo(result) -> None:
    table = Table(title=f"{result.model}: simulator (integer, embedded preprocessing) vs onnxruntime (quant.onnx)")
    for col in ("image", "max |diff|", f"within 1e-{result.images[0].comparison.digits}", "exact LSB", "±1 LSB",
                ">1 LSB", "cosine", "class sim/ort"):
        table.add_column(col, justify="right")
    for r in result.images:
        c = r.comparison
        table.add_row(str(r.image), f"{c.max_abs_diff:.4g}", f"{c.within_digits}/{c.elements}", str(c.exact),
                      str(c.off_by_one), str(c.beyond_one), f"{c.cosine:.6f}",
                      f"{r.sim_class}/{r.ort_class}" + ("" if r.sim_class == r.ort_class else " ✗"))
    _console.print(f"quantized {result.quant_onnx}\ncompiled  {result.model_bin} ({result.layers} layers, "
                   f"{result.cpu_layers} on cpu, sha256 {result.sha256[:16]}…)")
    _console.print(table)
    agree = sum(r.sim_class == r.ort_class for r in result.images)
    verdict = "PASSED" if result.classes_agree else "FAILED"
    _console.print(f"{result.model}: simulator vs onnxruntime: {agree}/{len(result.images)} classifications "
                   f"identical, simulator {1000 * result.sim_seconds / len(result.images):.1f} ms/image, "
                   f"onnxruntime {1000 * result.ort_seconds / len(result.images):.1f} ms/image: {verdict}")
    sys.stdout.flush()


def print_verify(result, top: int = 8, findings: int = 10) -> None:
    """A table per pair (outputs, then the least agreeing layers), the board's differences with
    itself (at most ``findings`` of them), then one verdict line per pair and one for the board's runs.

    A bit-exact pair that passed has no table: every row would read 100 %, and its verdict line
    says it all."""
    colour = {"PASSED": "green", "FAILED": "red", "MISMATCHED": "yellow", "ERROR": "red"}
    for note in result.notes:
        _console.print(f"[yellow]note:[/yellow] {_literal(note)}")
    # The plain-run pairs repeat the outputs' rows: a table only when they fail.
    for pair in result.pairs + [p for p in result.plain_pairs if not p.passed]:
        if pair.criterion == "bit-exact" and pair.passed:
            continue
        rows = list(pair.outputs)
        worst = sorted(pair.layers, key=lambda t: (t.passed, t.cosine))[:top]
        if pair.first_divergent is not None and all(pair.first_divergent is not t for t in rows + worst):
            worst.append(pair.first_divergent)
        if not rows and not worst:
            continue
        shown = rows + sorted(worst, key=lambda t: t.index)
        cells = [[t.name, t.op or t.kind, f"{t.max_abs_diff:.3g}", f"{100 * t.digits_fraction:.1f}%",
                  f"{t.exact}/{t.off_by_one}/{t.beyond_one}", f"{t.cosine:.5f}", "ok" if t.passed else "FAIL"]
                 for t in shown]
        digits = f"≤1e-{pair.digits}"

        def stack(i: int, shown: list = shown, cells: list = cells, digits: str = digits) -> list[str]:
            t, c = shown[i], cells[i]
            return [t.name, f"exact {t.exact} · ±1 {t.off_by_one} · >1 {t.beyond_one} · max {t.max_lsb} LSB · "
                            f"cos {c[5]} · {'PASS' if t.passed else 'FAIL'}",
                    f"{c[1]} · max |diff| {c[2]} · {digits} {c[3]}"]

        rows_table(_console, f"{pair.a} vs {pair.b} ({pair.criterion})",
                    ("tensor", "op", "max |diff|", digits, "LSB =/±1/>1", "cosine", ""), cells, names=(0,),
                    stack=stack, styles=[None if t.passed else "red" for t in shown], right=(2, 3, 4, 5))
        if pair.layers and len(pair.layers) > len(worst):
            _console.print(f"[dim]{len(pair.layers)} layers compared, the {len(worst)} least agreeing shown; "
                           "--html plots them all along the network[/dim]")
    from qverify.client.float_views import print_layer_tables

    print_layer_tables(_console, result, top, _literal)
    if result.latency_failure:
        _console.print(f"[red]{_literal(result.latency_failure)}[/red]")
    fd = result.first_divergent
    for pair in result.pairs:
        _print_isolation(pair)
    if fd is not None:
        what = "first wrong layer in isolation" if any(
            p.first_divergent is fd and p.decided_by == "isolation" for p in result.pairs) else "first divergent layer"
        _console.print(f"{what}: [bold]{_literal(fd.producer or fd.name)}[/bold] ({_literal(fd.op or 'input')})"
                       f" writing {_literal(fd.name)}: {_literal(fd.reason)}")
    for finding in result.board_findings[:findings]:
        _console.print(f"[red]{_literal(finding.message)}[/red]", soft_wrap=True)
    if len(result.board_findings) > findings:
        _console.print(f"[red]… {len(result.board_findings) - findings} more differences of the board with itself "
                       "(all of them are in --json, --junit and --html)[/red]")
    for pair in result.pairs + result.plain_pairs:
        _console.print(f"[{colour.get(pair.status, 'white')}]{_literal(pair.verdict_line())}[/]", soft_wrap=True)
    line = result.board_runs_line()
    if line:
        _console.print(f"[{'red' if result.board_findings else 'green'}]{_literal(line)}[/]", soft_wrap=True)
    if result.float_reference is not None:
        from qverify.client.float_views import print_float_verdict

        print_float_verdict(_console, result.float_reference, _literal)


def _print_isolation(pair) -> None:
    """Entire vs isolated error of the worst layers (wrong ones first), and the drift note."""
    from qverify.client import isolation_views

    if not pair.isolation:
        return
    rows = isolation_views.terminal_rows(pair)

    def stack(i: int) -> list[str]:
        layer, op, entire, isolated, verdict = rows[i]
        return [f"{layer}  {op}", f"entire {entire} · isolated {isolated} · {verdict}"]

    rows_table(_console, f"{pair.a} vs {pair.b}: layers in isolation (fed {pair.a}'s inputs)",
                ("layer", "op", "entire", "isolated", ""), rows, names=(0,), stack=stack,
                styles=["red" if row[-1] == "WRONG" else None for row in rows])
    if pair.drift:
        _console.print(f"[yellow]{_literal(pair.drift)}[/yellow]", soft_wrap=True)


def print_written(written: list[tuple[Path, str]]) -> None:
    """One line per report written: ``wrote report.json (JSON)``."""
    for path, kind in written:
        _console.print(f"wrote {_literal(path)} ({kind})", soft_wrap=True)


def _seconds(value: float) -> str:
    value = max(0.0, value)
    if value < 60:
        return f"{value:.1f} s"
    minutes, rest = divmod(int(round(value)), 60)
    return f"{minutes} min {rest:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class timed_progress:
    """Progress of long work with its elapsed time and an ETA.

    ``total`` steps (or None: unknown, elapsed time only) advanced with ``step()``; or, for work
    that reports nothing while it runs (one RPC), ``estimate`` seconds from an earlier
    measurement, shown as an ETA that is labelled an estimate. On a terminal a live line;
    elsewhere one line at the start and one with the elapsed time at the end (logs stay short).
    """

    def __init__(self, label: str, total: int | None = None, estimate: float | None = None,
                 console: Console | None = None) -> None:
        self.label = label
        self.total = total
        self.estimate = estimate
        self.console = console or _err
        self.done = 0
        self._live = None
        self._task = None
        self._start = 0.0

    def __enter__(self) -> "timed_progress":
        import time

        self._start = time.monotonic()
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, \
                TimeElapsedColumn, TimeRemainingColumn

            columns = [SpinnerColumn(), TextColumn("{task.description}")]
            if self.total is not None:
                columns += [BarColumn(), MofNCompleteColumn()]
            columns += [TextColumn("elapsed"), TimeElapsedColumn()]
            if self.total is not None:
                columns += [TextColumn("ETA"), TimeRemainingColumn()]
            elif self.estimate is not None:
                columns += [TextColumn(f"ETA about {_seconds(self.estimate)} in all")]
            self._live = Progress(*columns, console=self.console, transient=True)
            self._live.start()
            self._task = self._live.add_task(safe_text(self.label, None), total=self.total)
        else:
            about = f" (about {_seconds(self.estimate)})" if self.estimate is not None else ""
            self.console.print(f"[dim]… {safe_text(self.label, None)}{about}[/dim]")
        return self

    def step(self, count: int = 1) -> None:
        """``count`` more steps done."""
        self.done += count
        if self._live is not None:
            self._live.update(self._task, completed=self.done)

    @property
    def elapsed(self) -> float:
        import time

        return time.monotonic() - self._start

    def line(self) -> str:
        """What the work took, e.g. ``quantizing: done in 12.3 s``."""
        return f"{self.label}: done in {_seconds(self.elapsed)}"

    def __exit__(self, exc_type, *exc) -> None:
        if self._live is not None:
            self._live.stop()
        if exc_type is None:
            self.console.print(f"[dim]… {safe_text(self.line(), None)}[/dim]")


class push_progress:
    """A progress bar for model pushes, shown only for large models on a terminal."""
    THRESHOLD = 8 << 20

    def __enter__(self):
        self._bar = None
        self._task = None
        return self.update

    def update(self, done: int, total: int) -> None:
        if total < self.THRESHOLD or not _err.is_terminal:
            return
        if self._bar is None:
            from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

            self._bar = Progress("pushing model.bin", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                                 console=_err, transient=True)
            self._bar.start()
            self._task = self._bar.add_task("push", total=total)
        self._bar.update(self._task, completed=done)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
