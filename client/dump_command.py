"""``qverify dump``: every tensor of an ONNX model (float or quant.onnx) to a dump folder.

    qverify dump -m MODEL.onnx [-i FILE ...] -o DIR [--dump NAME,...] [--force] [--dump-format npy|bin|txt]
                 [--inputs-like model.bin] [--ort-opt all|disabled]

The folder has the format and ``manifest.json`` of ``qverify run -r -o DIR`` (see
:mod:`qverify.client.onnx_dump`), so ``qverify compare`` compares it with a board's dumps.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from qverify.client.errors import EXIT_BAD_INPUT, Failure

# The dump-folder options `qverify run` shares.
DumpNamesArg = Annotated[Optional[str], typer.Option(
    "--dump", help="comma-separated tensor names: dump these only (default: every tensor)")]
SeedArg = Annotated[int, typer.Option("--seed", help="seed of the random inputs")]
ForceArg = Annotated[bool, typer.Option("--force", help="replace the content of a non-empty OUTDIR")]
DumpFormatArg = Annotated[str, typer.Option("--dump-format", help="npy, bin (raw little-endian) or txt")]
DumpPrecisionArg = Annotated[int, typer.Option("--dump-precision", min=0, max=20, help="txt: decimals of float values")]


def parse_names(text: str | None) -> list[str] | None:
    """``--dump a,b`` -> ["a", "b"]; None when not given; an empty list is a Failure."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise Failure("--dump: give comma-separated tensor names, e.g. --dump conv1_out,prob", EXIT_BAD_INPUT)
    return list(dict.fromkeys(names))


def dump_command(
    model: Annotated[Path, typer.Option("-m", "--model", help="ONNX model: float, or quantized (quant.onnx)")],
    input_files: Annotated[list[str], typer.Option(
        "-i", "--input", help="image (with --inputs-like), .npy, .npz or raw .bin; NAME:FILE for multi-input "
                              "models; repeat for more input sets. Default: seeded random inputs")] = [],  # noqa: B006
    seed: SeedArg = 0,
    outdir: Annotated[Path, typer.Option("-o", "--output-dir", help="folder for the tensors and manifest.json")]
    = Path("qverify-dump"),
    force: ForceArg = False,
    dump_names: DumpNamesArg = None,
    dump_format: DumpFormatArg = "npy",
    dump_precision: DumpPrecisionArg = 6,
    inputs_like: Annotated[Optional[Path], typer.Option(
        "--inputs-like", help="model.bin compiled from this model: take the inputs as it does (images through "
                              "its embedded preprocessing, random inputs over its input range)")] = None,
    ort_opt: Annotated[str, typer.Option("--ort-opt", help="onnxruntime's reading: all (fused integer kernels) "
                                                           "or disabled (literal graph)")] = "all",
    input_shape: Annotated[list[str], typer.Option(
        "--input-shape", help="NAME:1,3,224,224 for dynamic ONNX inputs")] = [],  # noqa: B006
) -> None:
    """Write every tensor of an ONNX model, in the format of `qverify run -r -o DIR`."""
    from qverify.client import dumpfiles
    from qverify.client import inputs as inputs_mod
    from qverify.client.exec_common import out, say
    from qverify.client.modelfiles import sniff
    from qverify.client.onnx_dump import dump_onnx, onnx_ports
    from qverify.client.views import safe_text

    if dump_format not in dumpfiles.FORMATS:
        raise Failure(f"--dump-format {dump_format}: choose npy, bin or txt", EXIT_BAD_INPUT)
    if ort_opt not in ("all", "disabled"):
        raise Failure(f"--ort-opt {ort_opt}: choose all or disabled", EXIT_BAD_INPUT)
    if sniff(model) != "onnx":
        raise Failure(f"-m {model}: is a model.bin; dump a board's tensors with: qverify run -m {model} -r -o DIR",
                      EXIT_BAD_INPUT)
    names = parse_names(dump_names)
    folder = dumpfiles.OutputFolder(outdir, force)
    try:
        folder.check()
    except dumpfiles.OutputFolderError as exc:
        raise Failure(str(exc), EXIT_BAD_INPUT) from None
    shapes = {}
    for text in input_shape:
        name, _, dims = text.rpartition(":")
        try:
            shapes[name] = [int(d) for d in dims.split(",")]
        except ValueError:
            raise Failure(f"--input-shape '{text}' must look like NAME:1,3,224,224", EXIT_BAD_INPUT) from None
    images = [spec for spec in input_files if Path(spec.partition(":")[2] or spec).suffix.lower()
              in inputs_mod.IMAGE_SUFFIXES]
    if images and inputs_like is None:
        raise Failure(f"-i {images[0]}: an ONNX model takes tensors, not images; add --inputs-like model.bin (the "
                      "model.bin with the embedded preprocessing) or give the float input tensor as .npy",
                      EXIT_BAD_INPUT)
    ports = onnx_ports(model, shapes, inputs_like)
    frames = inputs_mod.build_frames(ports, list(input_files), seed)
    with folder:
        manifest = dump_onnx(model, frames, folder.path, dumpfiles.TensorFormat(dump_format, dump_precision),
                             names=names, ort_opt=ort_opt, progress=say)
    files = manifest["files"]
    kind = "quantized" if manifest["quantized"] else "float"
    out.print(f"saved {len(files)} file{'s' if len(files) != 1 else ''} of {safe_text(model.name)} ({kind}) to "
              f"{safe_text(outdir, None)} ({dump_format}), manifest {safe_text(outdir / 'manifest.json', None)}",
              soft_wrap=True)
