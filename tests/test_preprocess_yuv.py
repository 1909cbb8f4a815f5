"""NV12 / YUV444 frames in embedded preprocessing: the integer BT.601 conversion (golden values from
the documented formula), the NV12 layout, odd sizes refused, malformed specs in model.bin refused,
and a real zoo model fed NV12 frames verified on the embedded board."""
from __future__ import annotations

import numpy as np
import pytest

import synthetic
from qverify.simulator import Program
from qverify.simulator.compiler import CompileError, PreprocessSpec, compile_model
from qverify.simulator.compiler.preprocess import encode_frame, frame_shape, normalize
from qverify.simulator.errors import ModelFormatError
from qverify.simulator.ops.preprocess import CB_B, CB_G, CR_G, CR_R, yuv_to_rgb
from qverify.simulator.validate import validate


def formula(y: int, u: int, v: int) -> tuple[int, int, int]:
    """The conversion of docs/design.md, in Python integers (>> floors, as documented)."""
    d, e = u - 128, v - 128
    clamp = lambda t: max(0, min(255, t))  # noqa: E731
    return (clamp(((y << 16) + 91881 * e + 32768) >> 16),
            clamp(((y << 16) - 22553 * d - 46802 * e + 32768) >> 16),
            clamp(((y << 16) + 116130 * d + 32768) >> 16))


def test_coefficients_are_the_bt601_matrix_in_q16():
    kr, kb = 0.299, 0.114
    kg = 1 - kr - kb
    assert (CR_R, CB_G, CR_G, CB_B) == tuple(round(c * 65536) for c in (
        2 * (1 - kr), 2 * kb * (1 - kb) / kg, 2 * kr * (1 - kr) / kg, 2 * (1 - kb)))


@pytest.mark.parametrize("yuv, rgb", [
    ((128, 128, 128), (128, 128, 128)),  # grey stays grey
    ((0, 128, 128), (0, 0, 0)), ((255, 128, 128), (255, 255, 255)),
    ((76, 85, 255), (254, 0, 0)),  # red as a JPEG encoder writes it: ((76<<16) + 91881*127 + 32768) >> 16 = 254
    ((150, 44, 21), (0, 255, 1)),  # green: R clamps from -3, B = 150 - 1.772*84 = 1.15 -> 1
    ((29, 255, 107), (0, 0, 254)),  # blue
    ((255, 255, 255), (255, 121, 255)),  # beyond the gamut: R and B clamp
])
def test_known_colours(yuv, rgb):
    frame = np.array(yuv, np.uint8).reshape(1, 1, 1, 3)
    assert tuple(int(c) for c in yuv_to_rgb(frame, "YUV444").ravel()) == rgb == formula(*yuv)


def test_every_yuv_triple_of_a_sample_is_bit_exact_with_the_formula():
    rng = np.random.default_rng(0)
    triples = rng.integers(0, 256, (4096, 3), dtype=np.uint8)
    got = yuv_to_rgb(triples.reshape(1, 64, 64, 3), "YUV444").reshape(-1, 3)
    assert [tuple(map(int, g)) for g in got] == [formula(*map(int, t)) for t in triples]


def test_nv12_layout_one_uv_pair_per_2x2_block():
    h, w = 4, 6
    y = np.full((h, w), 128, np.uint8)
    uv = np.zeros((h // 2, w), np.uint8)
    uv[:, 0::2] = 128  # U
    uv[:, 1::2] = np.arange(h // 2 * w // 2, dtype=np.uint8).reshape(h // 2, w // 2) * 20 + 100  # V per block
    frame = np.concatenate([y, uv])[None, :, :, None]
    rgb = yuv_to_rgb(frame, "NV12")
    assert rgb.shape == (1, h, w, 3)
    for by in range(h // 2):
        for bx in range(w // 2):
            expect = formula(128, 128, int(uv[by, 2 * bx + 1]))
            block = rgb[0, 2 * by:2 * by + 2, 2 * bx:2 * bx + 2].reshape(-1, 3)
            assert all(tuple(map(int, p)) == expect for p in block)


def test_encoder_round_trip_on_real_images(model_images):
    for image in model_images("ppocr_cls", 4, "photos"):
        rgb = np.ascontiguousarray(image[..., ::-1])
        err444 = np.abs(yuv_to_rgb(encode_frame(rgb, "YUV444"), "YUV444").astype(int) - rgb)
        assert err444.max() <= 2
        nv12 = encode_frame(rgb, "NV12")
        assert nv12.shape == (1, 48 * 3 // 2, 192, 1)
        assert np.abs(yuv_to_rgb(nv12, "NV12").astype(int) - rgb).mean() < 6  # chroma subsampling only


@pytest.fixture(scope="module")
def small_quant(tmp_path_factory):
    return synthetic.quantize(synthetic.small_cnn(), tmp_path_factory.mktemp("yuv") / "q.onnx")


def test_odd_sizes_are_refused_for_nv12_but_not_yuv444(tmp_path):
    model = synthetic.small_cnn()
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 15  # a 15x16 picture
    quant = synthetic.quantize(model, tmp_path / "odd.onnx", feeds=synthetic.calibration(shape=(1, 3, 15, 16)))
    spec = "nv12:model=rgb:mean=127.5,127.5,127.5:std=127.5,127.5,127.5"
    with pytest.raises(CompileError, match="H and W must be even"):
        compile_model(quant, preprocess=PreprocessSpec.parse(spec))
    program = Program(compile_model(quant, preprocess=PreprocessSpec.parse(spec.replace("nv12", "yuv444"))))
    assert tuple(program.inputs[0].shape) == (1, 15, 16, 3)
    with pytest.raises(CompileError, match="3-channel"):
        compile_model(quant, preprocess=PreprocessSpec.parse("yuv444:model=gray:mean=0,0,0:std=1,1,1"))


@pytest.mark.parametrize("fmt", ["NV12", "YUV444"])
def test_board_on_the_frame_equals_host_normalization_bit_for_bit(small_quant, fmt):
    from qverify.simulator import Simulator, quantize

    shape = {"x": [1, 3, 16, 16]}
    board = Program(compile_model(small_quant, input_shapes=shape, preprocess=PreprocessSpec.parse(
        f"{fmt.lower()}:model=bgr:mean=120,110,100:std=60,50,40")))
    host = Program(compile_model(small_quant, input_shapes=shape))
    pre = board.proto.preprocess[0]
    assert tuple(board.inputs[0].shape) == frame_shape(pre) == ((1, 24, 16, 1) if fmt == "NV12" else (1, 16, 16, 3))
    frame = np.random.default_rng(3).integers(0, 256, frame_shape(pre), dtype=np.uint8)
    x = normalize(frame, pre)  # what the host feeds quant.onnx
    assert x.shape == (1, 3, 16, 16)
    inp = host.inputs[0]
    q, _ = quantize(x, inp.scale, inp.zero_point)
    want = Simulator(host).run({inp.name: q.transpose(0, 2, 3, 1)}).outputs
    got = Simulator(board).run({board.inputs[0].name: frame}).outputs
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def _mutated(program: Program, change) -> str:
    from qverify.v1 import model_pb2

    proto = model_pb2.Program()
    proto.CopyFrom(program.proto)
    change(proto)
    with pytest.raises(ModelFormatError) as err:
        validate(Program(proto))
    assert "\n" not in str(err.value)
    return str(err.value)


def test_malformed_yuv_specs_in_model_bin_are_refused_with_one_line(small_quant):
    program = Program(compile_model(small_quant, input_shapes={"x": [1, 3, 16, 16]},
                                    preprocess=PreprocessSpec.parse("nv12:model=rgb")))

    def odd(p):
        p.preprocess[0].image_shape[1] = 15
    assert "odd size" in _mutated(program, odd)

    def two_channels(p):
        p.preprocess[0].image_shape[3] = 1
    assert "expected N,H,W,3" in _mutated(program, two_channels)

    def yuv_model(p):
        p.preprocess[0].model_color = "NV12"
    assert "unknown colors" in _mutated(program, yuv_model)

    def as_yuv444(p):  # the spec says YUV444, the board's input tensor is an NV12 frame
        p.preprocess[0].color = "YUV444"
    assert "input tensor" in _mutated(program, as_yuv444)

    def bad_format(p):
        p.nodes[0].attrs["format"].s = "NV21"
    assert "format" in _mutated(program, bad_format)


@pytest.mark.slow
def test_real_model_fed_nv12_frames_verifies_on_the_embedded_board(quantized, model_images, tmp_path):
    import qverify
    from qverify.client import zoo
    from qverify.simulator.modelfile import save

    m = zoo.MODELS["ppocr_cls"]
    spec = f"nv12:model=bgr:mean={','.join(map(str, m.mean))}:std={','.join(map(str, m.std))}"
    quant = quantized("ppocr_cls")
    program = compile_model(quant, input_shapes={"x": [1, 3, 48, 192]}, preprocess=PreprocessSpec.parse(spec))
    save(program, tmp_path / "model.bin")
    files = []
    for i, image in enumerate(model_images("ppocr_cls", 2, "photos") + model_images("ppocr_cls", 1)):
        nv12 = encode_frame(np.ascontiguousarray(image[..., ::-1]), "NV12")[0, :, :, 0]  # (72, 192) as cameras hand it
        np.save(tmp_path / f"f{i}.npy", nv12)
        files.append(str(tmp_path / f"f{i}.npy"))
    from PIL import Image
    Image.fromarray(np.ascontiguousarray(model_images("ppocr_cls", 1)[0][0, :, :, ::-1])).save(tmp_path / "p.png")
    files.append(str(tmp_path / "p.png"))  # an image file is encoded to NV12 on the host
    result = qverify.verify([quant, tmp_path / "model.bin"], dump_all=True, inputs=files)
    assert result.passed, [p.verdict_line() for p in result.pairs]
    assert any("bit-exact: PASSED" in p.verdict_line() for p in result.pairs)
