"""``qverify debug ...``: which quantized nodes cost the accuracy, and what keeping them in float brings.

    qverify debug sensitivity -m float.onnx,quant.onnx [-i ...] [--metric cosine|mse|l1|top1] [--top N]
                              [--json F] [--html F]
    qverify debug curve -m float.onnx,quant.onnx [-i ...] [--target-cosine 0.99] [--json F] [--html F]
                        [--apply [-b HOST ...]]

The work is in :mod:`.sensitivity`, :mod:`.curve`, :mod:`.debug_apply` and :mod:`.debug_report`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from qverify.client.board_options import BoardArg, with_board_settings
from qverify.client.boards import BoardSettings
from qverify.client.errors import EXIT_BAD_INPUT, Failure

debug_app = typer.Typer(no_args_is_help=True, help="Accuracy debugging: which layers cost the accuracy.")

ModelsArg = Annotated[str, typer.Option("-m", "--model", help="the float model and the QDQ quant.onnx quantized "
                                                               "from it, comma-separated, in any order")]
InputArg = Annotated[list[str], typer.Option(
    "-i", "--input", help=".npy/.npz float input (or an image with --preprocess); repeat for more input sets. "
                          "Default: seeded random inputs over the calibrated range")]
PreprocessArg = Annotated[Optional[str], typer.Option(
    "--preprocess", help="how images become the float input, as for 'qverify compile --preprocess'")]
SeedArg = Annotated[int, typer.Option("--seed", help="seed of the random inputs")]
JsonArg = Annotated[Optional[Path], typer.Option("--json", help="write the report as JSON")]
HtmlArg = Annotated[Optional[Path], typer.Option("--html", help="write a self-contained HTML report")]
JobsArg = Annotated[int, typer.Option("--jobs", min=1, max=64,
                                      help="variants run in parallel (threads)")]


def _prepare(models_spec: str, input_files: list[str], seed: int, preprocess: str | None, metric: str,
             jobs: int, outputs: list[Optional[Path]]):
    from qverify.client.accuracy import sensitivity
    from qverify.client.accuracy.debug_models import build_inputs, open_models

    if metric not in sensitivity.METRICS:
        raise Failure(f"--metric {metric}: choose {', '.join(sensitivity.METRICS)}", EXIT_BAD_INPUT)
    for path in outputs:
        if path is not None and (path.is_dir() or not path.absolute().parent.is_dir()):
            raise Failure(f"{path}: cannot write a report there (a folder, or its folder does not exist)",
                          EXIT_BAD_INPUT)
    models = open_models(models_spec)
    frames, source = build_inputs(models, list(input_files), seed, preprocess)
    return models, sensitivity.VariantRunner(models, frames, workers=jobs), source


def _progress(label: str):
    from qverify.client.views import timed_progress

    return lambda total: timed_progress(label, total=total)


def _sensitivity(runner, metric: str, source: str):
    from qverify.client.accuracy.sensitivity import analyse

    result = analyse(runner, metric, _progress("sensitivity: one variant per node, weight and activation"))
    result.inputs = source
    return result


def _write(doc: dict, json_path: Optional[Path], html_path: Optional[Path]) -> None:
    from qverify.client.accuracy import debug_report
    from qverify.client.views import print_written

    written = []
    if json_path is not None:
        debug_report.write_json(doc, json_path)
        written.append((json_path, "JSON"))
    if html_path is not None:
        debug_report.write_html(doc, html_path)
        written.append((html_path, "HTML"))
    print_written(written)


@debug_app.command("sensitivity")
def sensitivity_command(
    models: ModelsArg,
    input_files: InputArg = [],  # noqa: B006 (typer reads the default)
    preprocess: PreprocessArg = None,
    seed: SeedArg = 0,
    metric: Annotated[str, typer.Option("--metric", help="cosine, mse, l1 or top1 of the model output vs the "
                                                         "float model's")] = "cosine",
    top: Annotated[int, typer.Option("--top", min=1, help="nodes shown")] = 10,
    json_path: JsonArg = None,
    html_path: HtmlArg = None,
    jobs: JobsArg = 2,
) -> None:
    """Rank quant.onnx's nodes by what taking out their quantization (all, weights, activations) gains."""
    from qverify.client.accuracy import debug_report, debug_views

    model_set, runner, source = _prepare(models, input_files, seed, preprocess, metric, jobs, [json_path, html_path])
    result = _sensitivity(runner, metric, source)
    debug_views.print_sensitivity(result, top)
    _write(debug_report.to_dict(model_set.float_path, model_set.quant_path, result), json_path, html_path)


@debug_app.command("curve")
@with_board_settings()
def curve_command(
    models: ModelsArg,
    board: BoardArg = None,
    input_files: InputArg = [],  # noqa: B006 (typer reads the default)
    preprocess: PreprocessArg = None,
    seed: SeedArg = 0,
    target: Annotated[float, typer.Option("--target-cosine", min=0.0, max=1.0,
                                          help="cosine vs the float model the suggestion must reach")] = 0.99,
    apply: Annotated[bool, typer.Option("--apply", help="compile with the suggestion and measure it on the board "
                                                        "(-b, or the embedded emulated board)")] = False,
    json_path: JsonArg = None,
    html_path: HtmlArg = None,
    jobs: JobsArg = 2,
    *,
    settings: BoardSettings,
) -> None:
    """Cosine vs the float model as the k most sensitive nodes stay in float; suggest the smallest k."""
    from qverify.client.accuracy import curve as curve_mod
    from qverify.client.accuracy import debug_report, debug_views

    if board is not None and not apply:
        raise Failure("-b is used only with --apply (the curve itself runs in onnxruntime here)", EXIT_BAD_INPUT)
    model_set, runner, source = _prepare(models, input_files, seed, preprocess, "cosine", jobs,
                                         [json_path, html_path])
    result = _sensitivity(runner, "cosine", source)
    curves = curve_mod.curves(result, runner, _progress("cumulative curves: k = 0..N for each ranking"))
    suggestion = curve_mod.suggest(curves[0], target)
    debug_views.print_curve(result, curves, suggestion, model_set.quant_path, model_set.float_path)
    applied = None
    if apply:
        from qverify.client.accuracy.debug_apply import apply_on_board

        applied = apply_on_board(model_set, suggestion.nodes, list(input_files), seed, settings.board_options(board))
        debug_views.print_apply(applied)
    _write(debug_report.to_dict(model_set.float_path, model_set.quant_path, result, curves, suggestion, applied),
           json_path, html_path)
