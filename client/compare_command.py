"""``qverify compare DIR_A DIR_B``: offline compare of two dump folders by tensor name.

    qverify compare DIR_A DIR_B [-c DIGITS] [--json F] [--html F] [--junit F] [--bundle F.tar.gz]
    qverify compare F.tar.gz                      # replay a reproduction bundle

The folders are ``qverify run -r -o DIR`` (a board) or ``qverify dump -o DIR`` (an ONNX model)
folders; see :mod:`qverify.client.dump_compare` for the pairing and the judging, and
:mod:`qverify.client.bundle` for bundles. Exit codes as verify: 0 consistent, 1 inconsistent,
2 bad input.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from qverify.client.errors import EXIT_BAD_INPUT, Failure


def compare_command(
    folders: Annotated[list[Path], typer.Argument(
        help="two dump folders (qverify run -r -o DIR, qverify dump -o DIR), or one bundle .tar.gz to replay",
        metavar="DIR_A DIR_B | F.tar.gz",
        show_default=False)],
    digits: Annotated[int, typer.Option("-c", "--compare-digits", min=0, max=12,
                                        help="values agree when |a - b| <= 10^-N")] = 5,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="write the JSON report")] = None,
    html_out: Annotated[Optional[Path], typer.Option("--html", help="write a self-contained HTML report")] = None,
    junit_out: Annotated[Optional[Path], typer.Option("--junit", help="write a JUnit XML report")] = None,
    bundle_out: Annotated[Optional[Path], typer.Option(
        "--bundle", help="write a reproduction bundle .tar.gz (both folders, inputs, model hashes, versions, the "
                         "report); replay it with: qverify compare F.tar.gz")] = None,
    max_lsb: Annotated[int, typer.Option("--max-lsb", min=0, help="outputs: largest rounding drift, in LSB")] = 16,
    min_cosine: Annotated[float, typer.Option("--min-cosine", help="outputs: smallest cosine")] = 0.999,
    min_layer_cosine: Annotated[float, typer.Option("--min-layer-cosine",
                                                    help="intermediates: smallest cosine")] = 0.95,
    min_float_cosine: Annotated[float, typer.Option(
        "--min-float-cosine", help="a float model's dump vs a quantized one: smallest output cosine")] = 0.98,
) -> None:
    """Compare two dump folders by tensor name (a board's run -r vs an ONNX model's dump, ...), or replay a bundle."""
    from qverify.client import bundle as bundle_mod
    from qverify.client import compare_reports
    from qverify.client.dump_compare import compare_folders, read_folder
    from qverify.client.results import Tolerances

    for path in (json_out, html_out, junit_out, bundle_out):
        if path is not None and not path.absolute().parent.is_dir():
            raise Failure(f"report {path}: folder {path.absolute().parent} does not exist", EXIT_BAD_INPUT)
    for value, flag in ((min_cosine, "--min-cosine"), (min_layer_cosine, "--min-layer-cosine"),
                        (min_float_cosine, "--min-float-cosine")):
        if not 0.0 <= value <= 1.0:
            raise Failure(f"{flag} {value:g}: give a cosine between 0 and 1", EXIT_BAD_INPUT)
    tol = Tolerances(digits=digits, max_lsb=max_lsb, min_cosine=min_cosine, min_layer_cosine=min_layer_cosine)
    if len(folders) == 1 and bundle_mod.is_bundle(folders[0]):
        if bundle_out is not None:
            raise Failure("--bundle: a replayed bundle is a bundle already; leave --bundle out", EXIT_BAD_INPUT)
        with bundle_mod.open_bundle(folders[0]) as replay:
            a_path, b_path = replay.pair
            origin = replay.origin()
            compare_reports.print_origin(origin)
            compared = compare_folders(read_folder(a_path), read_folder(b_path), tol, min_float_cosine)
            _report(compared, json_out, html_out, junit_out, origin)
        raise typer.Exit(compared.result.exit_code)
    if len(folders) != 2:
        raise Failure("compare takes two dump folders (DIR_A DIR_B), or one bundle .tar.gz", EXIT_BAD_INPUT)
    a, b = (read_folder(p) for p in folders)
    if a.label == b.label:
        a.label, b.label = str(folders[0]), str(folders[1])
    compared = compare_folders(a, b, tol, min_float_cosine)
    _report(compared, json_out, html_out, junit_out, None)
    if bundle_out is not None:
        models, recorded = bundle_mod.manifest_models([a.manifest, b.manifest])
        bundle_mod.write_bundle(bundle_out, [(a.label, a.path), (b.label, b.path)],
                                report=compare_reports.to_dict(compared), models=models, recorded_models=recorded,
                                inputs=bundle_mod.input_sources([a.manifest, b.manifest]))
        compare_reports.print_written([(bundle_out, "reproduction bundle")])
    raise typer.Exit(compared.result.exit_code)


def _report(compared, json_out: Path | None, html_out: Path | None, junit_out: Path | None, origin) -> None:
    from qverify.client import compare_reports

    compare_reports.print_compare(compared)
    written = []
    for path, kind in ((json_out, "JSON"), (html_out, "HTML"), (junit_out, "JUnit XML")):
        if path is not None:
            if kind == "JSON":
                compare_reports.write_json(compared, path, origin)
            else:
                compare_reports.WRITERS[kind](compared, path)
            written.append((path, kind))
    compare_reports.print_written(written)
