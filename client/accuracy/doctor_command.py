"""``qverify doctor``: preprocessing checks of what a pipeline feeds a quantized model.

    qverify doctor -m quant.onnx[,float.onnx] -i FILE|NAME:FILE ... [--json F]

Exit code 0: no finding; 1: findings (one line each, with the evidence and the fix); 2: bad
usage or input. The checks are in :mod:`qverify.client.accuracy.doctor`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from qverify.client.errors import EXIT_BAD_INPUT, Failure


def doctor_command(
    models: Annotated[str, typer.Option("-m", "--model", help="quant.onnx, optionally with the float model it was "
                                                              "quantized from: quant.onnx,float.onnx (any order)")],
    input_files: Annotated[list[str], typer.Option(
        "-i", "--input", help="what the pipeline feeds the model: .npy/.npz tensors or jpg/png images; "
                              "NAME:FILE for multi-input models; repeat for more frames")] = [],  # noqa: B006
    json_path: Annotated[Optional[Path], typer.Option("--json", help="also write the findings as JSON")] = None,
) -> None:
    """Look for the preprocessing mistakes that lose accuracy (range, layout, dtype, size, camera frames, channel
    order, letterbox)."""
    from qverify.client.accuracy.doctor import DoctorError, diagnose
    from qverify.client.dumpfiles import write_json_atomic

    try:
        report = diagnose([Path(m) for m in models.split(",") if m], list(input_files))
    except DoctorError as exc:
        raise Failure(str(exc), EXIT_BAD_INPUT) from None
    for finding in report.findings:
        typer.echo(finding.line())
    responder = f", with {report.float.name}'s response" if report.float else ""
    summary = (f"{len(report.findings)} finding{'s' if len(report.findings) != 1 else ''}" if report.findings
               else "no finding")
    typer.echo(f"doctor: {report.frames} frame{'s' if report.frames != 1 else ''} checked against "
               f"{report.quant.name}{responder}: {summary}")
    if json_path is not None:
        try:
            write_json_atomic(report.to_dict(), json_path)
        except OSError as exc:
            raise Failure(f"--json {json_path}: cannot write it ({exc.strerror})", EXIT_BAD_INPUT) from None
        typer.echo(f"wrote {json_path} (JSON)")
    raise typer.Exit(report.exit_code)
