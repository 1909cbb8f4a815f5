"""Embedded preprocessing: the board takes the camera's uint8 image; the host computes the
matching ONNX input from the spec stored in model.bin, and the two never drift."""
from __future__ import annotations

import numpy as np
import pytest

import synthetic
from qverify.simulator import Program, Simulator, quantize
from qverify.simulator.compiler import CompileError, PreprocessSpec, compile_model
from qverify.simulator.compiler.preprocess import normalize


@pytest.fixture(scope="module")
def quant_path(tmp_path_factory):
    return synthetic.quantize(synthetic.small_cnn(seed=8), tmp_path_factory.mktemp("pre") / "q.onnx")


@pytest.mark.parametrize("spec_text,channels", [
    ("bgr:model=rgb:mean=123.7,116.3,103.5:std=58.4,57.1,57.4", 3),
    ("rgb:model=rgb:mean=127.5,127.5,127.5:std=127.5,127.5,127.5", 3),
    ("gray:mean=120,120,120:std=60,60,60", 1),
])
def test_board_on_the_image_equals_host_normalization_bit_for_bit(quant_path, spec_text, channels):
    board = Program(compile_model(quant_path, preprocess=PreprocessSpec.parse(spec_text)))
    host = Program(compile_model(quant_path))
    pre = board.proto.preprocess[0]
    assert list(pre.image_shape) == [1, 16, 16, channels]
    assert board.inputs[0].dtype == np.uint8
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1, 16, 16, channels), dtype=np.uint8)
    x = normalize(image, pre)  # what the host feeds the ONNX model
    assert x.shape == (1, 3, 16, 16) and x.dtype == np.float32
    inp = host.inputs[0]
    q, _ = quantize(x, inp.scale, inp.zero_point)
    want = Simulator(host).run({inp.name: q.transpose(0, 2, 3, 1)}).outputs
    got = Simulator(board).run({board.inputs[0].name: image}).outputs
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_channel_swap_is_real(quant_path):
    """BGR on the board with an RGB model: the board must swap; feeding RGB would be wrong."""
    pre = Program(compile_model(quant_path, preprocess=PreprocessSpec.parse("bgr:model=rgb"))).proto.preprocess[0]
    image = np.zeros((1, 2, 2, 3), np.uint8)
    image[..., 0] = 10  # blue plane of a BGR image
    x = normalize(image, pre)
    assert np.all(x[:, 2] == 10) and np.all(x[:, 0] == 0)  # lands in the model's B (= third RGB) channel


@pytest.mark.parametrize("text,message", [
    ("yuv", "must start with one of"),
    ("bgr:mean=1,2", None),  # wrong count is caught at compile time, against the model
    ("bgr:std=a,b,c", "not a list of numbers"),
    ("bgr:gamma=2", "unknown preprocess key"),
])
def test_bad_specs_are_refused(quant_path, text, message):
    if message:
        with pytest.raises(ValueError, match=message):
            PreprocessSpec.parse(text)
    else:
        with pytest.raises(CompileError, match="3 mean and 3 non-zero std"):
            compile_model(quant_path, preprocess=PreprocessSpec.parse(text))
