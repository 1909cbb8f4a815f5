"""What ``qverify compare`` shows and writes: a terminal table per input set, the first divergent
tensor and one verdict line, and the JSON / HTML / JUnit reports.

The result of a compare is a :class:`~qverify.client.results.VerifyResult` (one pair per input
set), so the HTML and JUnit writers of verify render it as they are. The JSON report is
verify's, under its own schema ``qverify.compare/1``, with the two folders' manifests'
provenance (model, sha256, board, inputs) beside it. Every file is written atomically.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from qverify.client.dump_compare import Compared, DumpFolder
from qverify.client.dumpfiles import write_text_atomic
from qverify.client.term_tables import rows_table

COMPARE_SCHEMA = "qverify.compare/1"
_console = Console(highlight=False)
_COLOUR = {"PASSED": "green", "FAILED": "red"}


def _folder_dict(folder: DumpFolder) -> dict[str, Any]:
    m = folder.manifest
    keep = ("source", "model", "model_sha256", "model_size", "program", "target", "board", "quantized",
            "onnxruntime", "ort_opt", "format", "dump_all_nodes", "dump_names")
    return {"path": str(folder.path), "label": folder.label, "tensors": len(folder.entries),
            "is_float": folder.is_float, **{k: m[k] for k in keep if k in m},
            "input_sets": [{"index": s.get("index"), "inputs": s.get("inputs", [])} for s in m.get("input_sets", [])]}


def to_dict(compared: Compared, origin: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON report: verify's report of the pairs (one per input set), the folders, and where a
    replayed bundle came from (``origin``)."""
    from qverify.client.reports import finite

    report = compared.result.to_dict()
    report["schema"] = COMPARE_SCHEMA
    report["criterion"] = compared.criterion
    report["folders"] = {"a": _folder_dict(compared.a), "b": _folder_dict(compared.b)}
    if origin:
        report["bundle"] = origin
    return finite(report)


def write_json(compared: Compared, path: Path, origin: dict[str, Any] | None = None) -> None:
    write_text_atomic(path, lambda: json.dumps(to_dict(compared, origin), indent=2, ensure_ascii=False,
                                               allow_nan=False) + "\n")


def write_html(compared: Compared, path: Path) -> None:
    from qverify.client.reports import render_html

    write_text_atomic(path, lambda: render_html(compared.result))


def write_junit(compared: Compared, path: Path) -> None:
    from qverify.client.reports import render_junit

    write_text_atomic(path, lambda: render_junit(compared.result))


WRITERS = {"JSON": write_json, "HTML": write_html, "JUnit XML": write_junit}


def print_compare(compared: Compared, top: int = 10, console: Console | None = None) -> None:
    """Per input set: the outputs and the least agreeing layers (tensor, elements, max |diff|, cosine,
    verdict); then the first divergent tensor and one verdict line per set."""
    console = console or _console
    result = compared.result
    for note in result.notes:
        console.print(f"note: {note}", soft_wrap=True, markup=False, style="yellow")
    for pair in result.pairs:
        if pair.criterion == "bit-exact" and pair.passed:
            continue
        worst = sorted(pair.layers, key=lambda t: (t.passed, t.cosine))[:top]
        if pair.first_divergent is not None and all(pair.first_divergent is not t for t in worst + pair.outputs):
            worst.append(pair.first_divergent)
        shown = list(pair.outputs) + sorted(worst, key=lambda t: t.index)
        cells = [[t.name, str(t.elements), f"{t.max_abs_diff:.3g}", f"{t.cosine:.5f}", "ok" if t.passed else "FAIL"]
                 for t in shown]

        def stack(i: int, shown: list = shown, cells: list = cells) -> list[str]:
            t, c = shown[i], cells[i]
            return [t.name, f"{c[1]} elements · max |diff| {c[2]} · max {t.max_lsb} LSB · cos {c[3]} · "
                            f"{'PASS' if t.passed else 'FAIL'}"]

        rows_table(console, f"{pair.a} vs {pair.b} ({compared.criterion})",
                   ("tensor", "elements", "max |diff|", "cosine", ""), cells, names=(0,), stack=stack,
                   styles=[None if t.passed else "red" for t in shown], right=(1, 2, 3))
        if len(pair.layers) > len(worst):
            console.print(f"{len(pair.layers)} layers compared, the {len(worst)} least agreeing shown; --html "
                          "plots them all", style="dim", markup=False)
    fd = result.first_divergent
    if fd is not None:
        console.print(f"first divergent tensor: {fd.name} (written by {fd.producer or 'the input'}"
                      f"{', ' + fd.op if fd.op else ''}): {fd.reason}", markup=False)
    for pair in result.pairs:  # one line each, whatever the width, for logs and grep (as verify's)
        console.print(pair.verdict_line(), style=_COLOUR.get(pair.status, "white"), soft_wrap=True, markup=False)


def print_written(written: list[tuple[Path, str]], console: Console | None = None) -> None:
    for path, kind in written:
        (console or _console).print(f"wrote {path} ({kind})", soft_wrap=True, markup=False)


def print_origin(origin: dict[str, Any], console: Console | None = None) -> None:
    """Where a replayed bundle came from: its file, when and with which versions it was made, its models
    and the verdict it recorded."""
    console = console or _console
    v = origin.get("versions", {})
    made = ", ".join(f"{k} {v[k]}" for k in ("qverify", "onnxruntime", "numpy", "python") if k in v)
    console.print(f"bundle {origin.get('file')}: {origin.get('kind', 'compare')} bundle made {origin.get('created')} "
                  f"with {made}", soft_wrap=True, markup=False)
    for m in origin.get("models", []):
        console.print(f"  model {m.get('name')} ({m.get('role')}): sha256 {m.get('sha256')}, {m.get('size')} bytes"
                      f"{'' if m.get('included') else ', not included'}", soft_wrap=True, markup=False)
    recorded = origin.get("recorded_verdict") or {}
    if recorded.get("exit_code") is not None:
        console.print(f"  recorded verdict: {'PASSED' if recorded.get('passed') else 'FAILED'} (exit code "
                      f"{recorded.get('exit_code')})", soft_wrap=True, markup=False)
