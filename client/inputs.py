"""The same inputs for every side: the board's raw feed and the ONNX model's float feed.

Most real-world "accuracy loss" is the board and the reference being fed differently
(RGB vs BGR, mean/std, NCHW vs NHWC). Here both feeds are derived from one source in one
place, with the preprocessing spec embedded in model.bin, so they cannot drift:

* an image (jpg/png/bmp) -> the uint8 NHWC image the board takes (in the channel order
  and size the spec names; encoded as NV12 / YUV444 frames when the board takes those)
  and ``(pixel - mean) / std`` in NCHW for quant.onnx;
* a .npy/.npz/.bin tensor -> float32 in ONNX layout is quantized for the board with the
  input's scale and zero point (exactly what quant.onnx's QuantizeLinear does); a uint8
  NHWC array is an image for models with embedded preprocessing; an int8 array in the
  board layout is taken as the board's raw feed and dequantized for quant.onnx;
* nothing -> seeded random values over each input's whole valid range.

``-i`` values are ``FILE`` or ``NAME:FILE``; several values for a one-input model are
several frames.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qverify.simulator import dequantize, feed_shape, quantize
from qverify.simulator.program import Program, TensorView

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}


class InputFileError(Exception):
    """An -i file is missing, unreadable or does not fit the model; the message says what to give."""


@dataclass
class InputPort:
    """One model input as both sides see it."""
    name: str  # program input (board side)
    onnx_name: str
    onnx_shape: tuple[int, ...]  # float32 tensor quant.onnx takes
    board_shape: tuple[int, ...]  # what the board takes
    board_dtype: np.dtype
    tensor: TensorView | None = None  # program tensor (None when only an ONNX model is given)
    preprocess: object | None = None  # model_pb2.Preprocess when the board takes images


@dataclass
class Frame:
    """One set of inputs: per program input, the board feed and the ONNX feed."""
    board: dict[str, np.ndarray] = field(default_factory=dict)  # program input name -> array
    onnx: dict[str, np.ndarray] = field(default_factory=dict)  # ONNX input name -> float32 array
    sources: dict[str, str] = field(default_factory=dict)  # program input name -> where it came from


def ports_from_program(program: Program) -> list[InputPort]:
    ports = []
    onnx_names = list(program.proto.onnx_inputs) or [t.name for t in program.inputs]
    for tensor, onnx_name in zip(program.inputs, onnx_names):
        pre = program.preprocess.get(tensor.name) or program.preprocess.get(onnx_name)
        if pre is not None:
            from qverify.simulator.compiler.preprocess import frame_shape

            n, h, w, c = (int(d) for d in pre.image_shape)
            onnx_shape = (n, len(pre.mean), h, w)
            ports.append(InputPort(tensor.name, onnx_name, onnx_shape, frame_shape(pre), np.dtype(np.uint8), tensor,
                                   pre))
        else:
            ports.append(InputPort(tensor.name, onnx_name, tuple(tensor.shape), feed_shape(tensor), tensor.dtype,
                                   tensor))
    return ports


def ports_from_onnx(session_inputs, input_shapes: dict[str, list[int]] | None = None) -> list[InputPort]:
    """Ports for an ONNX-only check: the ONNX inputs (dynamic dimensions need ``input_shapes``)."""
    ports = []
    for arg in session_inputs:
        shape = (input_shapes or {}).get(arg.name) or arg.shape
        dims = [d if isinstance(d, int) and d > 0 else None for d in shape]
        if dims and dims[0] is None:
            dims[0] = 1
        if any(d is None for d in dims):
            raise InputFileError(f"ONNX input '{arg.name}' has dynamic dimensions {arg.shape}; give the model.bin "
                                 "compiled from it, or compile with --input-shape")
        ports.append(InputPort(arg.name, arg.name, tuple(dims), tuple(dims), np.dtype(np.float32)))
    return ports


def _quantize_for_board(port: InputPort, x: np.ndarray) -> np.ndarray:
    t = port.tensor
    if t is None or not t.quantized:
        return x.astype(np.float32)
    q, _ = quantize(x, t.scale, t.zero_point)
    return np.ascontiguousarray(q.transpose(0, 2, 3, 1)) if len(t.shape) == 4 else q


def _from_image_array(port: InputPort, image: np.ndarray, frame: Frame, source: str) -> None:
    from qverify.simulator.compiler.preprocess import normalize

    frame.board[port.name] = np.ascontiguousarray(image)
    frame.onnx[port.onnx_name] = normalize(image, port.preprocess)
    frame.sources[port.name] = source


def _refuse_non_finite(port: InputPort, x: np.ndarray, source: str) -> None:
    """NaN or Inf in a file is the file's fault: quantizing it would hand every side an arbitrary
    code (and onnxruntime a NaN), and the comparison would then blame the board."""
    bad = int(x.size - np.count_nonzero(np.isfinite(x)))
    if bad:
        nan = int(np.count_nonzero(np.isnan(x)))
        raise InputFileError(f"-i {source}: input '{port.onnx_name}' holds {bad} NaN/Inf value{'s' if bad != 1 else ''} "
                             f"({nan} NaN, {bad - nan} Inf) of {x.size}; give finite numbers")


def _from_float(port: InputPort, x: np.ndarray, frame: Frame, source: str) -> None:
    x = np.ascontiguousarray(x, dtype=np.float32)
    _refuse_non_finite(port, x, source)  # also float64 values beyond float32's range, now Inf
    frame.onnx[port.onnx_name] = x
    if port.preprocess is not None:
        raise InputFileError(f"{source}: model input '{port.name}' takes images (embedded preprocessing); give an "
                             f"image file or a uint8 array of shape {list(port.board_shape)}")
    frame.board[port.name] = _quantize_for_board(port, x)
    frame.sources[port.name] = source


def place_array(port: InputPort, array: np.ndarray, frame: Frame, source: str) -> None:
    """Put one user array into the frame, deciding by dtype and shape what it is."""
    a = np.asarray(array)
    if port.preprocess is not None and a.dtype == np.uint8:
        nv12 = port.preprocess.color == "NV12"
        if nv12 and tuple(a.shape) in (port.board_shape[1:3], port.board_shape[:3]):
            a = a.reshape(port.board_shape)  # (H*3/2, W) or (1, H*3/2, W): the usual ways to hold NV12
        elif a.ndim == 3:
            a = a[None]
        if tuple(a.shape) != port.board_shape:
            layout = "an NV12 frame (N, H*3/2, W, 1): Y plane, then interleaved UV" if nv12 else \
                f"(N,H,W,C), {port.preprocess.color}"
            raise InputFileError(f"{source}: image array {a.dtype}{list(a.shape)} does not fit input '{port.name}', "
                                 f"which takes uint8{list(port.board_shape)}, {layout}")
        _from_image_array(port, a, frame, source)
        return
    if a.dtype == np.int8 and port.tensor is not None and port.tensor.quantized and port.preprocess is None:
        if tuple(a.shape) != port.board_shape:
            raise InputFileError(f"{source}: int8{list(a.shape)} does not fit input '{port.name}', whose raw board "
                                 f"feed is int8{list(port.board_shape)}")
        t = port.tensor
        logical = a.transpose(0, 3, 1, 2) if len(t.shape) == 4 else a
        frame.board[port.name] = np.ascontiguousarray(a)
        frame.onnx[port.onnx_name] = np.ascontiguousarray(dequantize(logical, t.scale, t.zero_point))
        frame.sources[port.name] = source
        return
    if a.dtype.kind not in "fiu":
        raise InputFileError(f"{source}: holds {a.dtype} values; give numbers")
    if tuple(a.shape) != port.onnx_shape:
        if a.size == int(np.prod(port.onnx_shape)) and a.ndim == len(port.onnx_shape) - 1:
            a = a.reshape(port.onnx_shape)  # a missing batch dimension of 1
        else:
            raise InputFileError(f"{source}: shape {list(a.shape)} does not fit input '{port.onnx_name}', which takes "
                                 f"float32{list(port.onnx_shape)}")
    _from_float(port, a, frame, source)


def load_image(path: Path, port: InputPort) -> np.ndarray:
    """Decode an image file into the uint8 frame the board takes: (1, H, W, C) in the spec's channel
    order, or the NV12 / YUV444 frame of the image."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise InputFileError("reading image files needs Pillow: pip install pillow") from None
    pre = port.preprocess
    if pre is None:
        raise InputFileError(f"{path}: input '{port.name}' has no embedded preprocessing, so an image cannot be fed; "
                             "compile with --preprocess, or give the float input tensor as .npy")
    yuv = pre.color in ("NV12", "YUV444")  # decoded as RGB, then encoded as the camera would
    try:
        with Image.open(path) as img:
            gray = pre.color == "GRAY"
            img = img.convert("L" if gray else "RGB")
            n, h, w, c = (int(d) for d in pre.image_shape)
            if img.size != (w, h):
                img = img.resize((w, h), Image.Resampling.BILINEAR)
            pixels = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputFileError(f"{path}: not a readable image ({exc})") from None
    if yuv:
        from qverify.simulator.compiler.preprocess import encode_frame

        return encode_frame(pixels, pre.color)
    if gray:
        pixels = pixels[..., None]
    elif pre.color == "BGR":
        pixels = pixels[..., ::-1]
    return np.ascontiguousarray(pixels)[None]


def _require_file(path: Path) -> None:
    """A folder and a missing file are different mistakes; say which."""
    if path.is_dir():
        raise InputFileError(f"-i {path}: is a folder; give a file (an image, .npy, .npz or raw .bin), one -i per "
                             "file")
    if not path.is_file():
        raise InputFileError(f"-i {path}: no such file")


def _load_file(path: Path, port: InputPort, frame: Frame) -> None:
    source = str(path)
    _require_file(path)
    suffix = path.suffix.lower()
    try:
        if suffix in IMAGE_SUFFIXES:
            _from_image_array(port, load_image(path, port), frame, source)
        elif suffix == ".npy":
            place_array(port, np.load(path, allow_pickle=False), frame, source)
        elif suffix == ".bin":
            place_array(port, _raw_bin(path, port), frame, source)
        else:
            raise InputFileError(f"-i {path}: unknown kind of file; give .jpg/.png images, .npy, .npz or raw .bin")
    except InputFileError:
        raise
    except (ValueError, OSError) as exc:
        raise InputFileError(f"-i {path}: cannot read it ({exc})") from None


def _raw_bin(path: Path, port: InputPort) -> np.ndarray:
    """Raw bytes: dtype and shape come from the model, chosen by the file's size."""
    data = path.read_bytes()
    choices = [(np.dtype(np.float32), port.onnx_shape)]
    if port.preprocess is not None:
        choices.append((np.dtype(np.uint8), port.board_shape))
    elif port.tensor is not None and port.tensor.quantized:
        choices.append((np.dtype(np.int8), port.board_shape))
    for dtype, shape in choices:
        if len(data) == dtype.itemsize * int(np.prod(shape)):
            return np.frombuffer(data, dtype=dtype).reshape(shape)
    wanted = " or ".join(f"{dt.itemsize * int(np.prod(s))} bytes ({dt}{list(s)})" for dt, s in choices)
    raise InputFileError(f"-i {path}: {len(data)} bytes do not fit input '{port.name}', which needs {wanted}")


def random_frame(ports: list[InputPort], seed: int) -> Frame:
    """Seeded random inputs covering each input's valid range (all int8 codes, all pixel values)."""
    rng = np.random.default_rng(seed)
    frame = Frame()
    for port in ports:
        source = f"random (seed {seed})"
        if port.preprocess is not None:
            _from_image_array(port, rng.integers(0, 256, port.board_shape, dtype=np.uint8), frame, source)
        elif port.tensor is not None and port.tensor.quantized:
            place_array(port, rng.integers(-128, 128, port.board_shape, dtype=np.int8), frame, source)
        else:
            _from_float(port, rng.standard_normal(port.onnx_shape).astype(np.float32), frame, source)
    return frame


def build_frames(ports: list[InputPort], specs: list[str], seed: int = 0) -> list[Frame]:
    """Frames from ``-i`` values (``FILE`` or ``NAME:FILE``), or one random frame without any."""
    if not specs:
        return [random_frame(ports, seed)]
    by_name = {p.name: p for p in ports} | {p.onnx_name: p for p in ports}
    named: dict[str, list[Path]] = {}
    for spec in specs:
        name, sep, file = spec.partition(":")
        if sep and name in by_name and file:
            named.setdefault(by_name[name].name, []).append(Path(file))
        elif sep and name and file and not Path(spec).exists():
            # NAME:FILE with a NAME the model lacks (a file whose name holds ':' is taken as a file)
            names = ", ".join(dict.fromkeys(n for p in ports for n in (p.onnx_name, p.name)))
            raise InputFileError(f"-i {spec}: the model has no input named '{name}' (its inputs: {names}), and "
                                 f"there is no file '{spec}'; write NAME:FILE with one of those names, or FILE")
        elif len(ports) == 1:
            named.setdefault(ports[0].name, []).append(Path(spec))
        elif Path(spec).suffix.lower() == ".npz":
            named.setdefault("", []).append(Path(spec))
        else:
            names = ", ".join(p.onnx_name for p in ports)
            raise InputFileError(f"-i {spec}: the model has several inputs ({names}); write NAME:FILE")
    frames: list[Frame] = []
    for npz in named.pop("", []):
        frames.append(_npz_frame(npz, ports, by_name))
    if named:
        counts = {len(v) for v in named.values()}
        if len(counts) != 1:
            raise InputFileError("-i: give every input the same number of files (one per frame)")
        missing = [p.onnx_name for p in ports if p.name not in named]
        if missing:
            raise InputFileError(f"-i: no file for input {', '.join(missing)}; give NAME:FILE for each input")
        for i in range(counts.pop()):
            frame = Frame()
            for port in ports:
                path = named[port.name][i]
                if path.suffix.lower() == ".npz":
                    _npz_into(path, port, frame)
                else:
                    _load_file(path, port, frame)
            frames.append(frame)
    return frames


def _npz_into(path: Path, port: InputPort, frame: Frame) -> None:
    with _open_npz(path) as npz:
        key = next((k for k in (port.onnx_name, port.name) if k in npz.files), None)
        if key is None and len(npz.files) == 1:
            key = npz.files[0]
        if key is None:
            raise InputFileError(f"-i {path}: has arrays {npz.files}, none named '{port.onnx_name}'")
        place_array(port, npz[key], frame, f"{path}[{key}]")


def _npz_frame(path: Path, ports: list[InputPort], by_name: dict[str, InputPort]) -> Frame:
    frame = Frame()
    for port in ports:
        _npz_into(path, port, frame)
    return frame


def _open_npz(path: Path):
    _require_file(path)
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputFileError(f"-i {path}: not a readable .npz ({exc})") from None
