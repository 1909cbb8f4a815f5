"""model.bin: round trip, atomic save, and one actionable ModelFormatError per corruption."""
from __future__ import annotations

import hashlib
import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from qverify.simulator import modelfile
from qverify.simulator.errors import ModelFormatError, SimulatorError
from qverify.simulator.modelfile import FORMAT_VERSION, HEADER, MAGIC, decode, encode, load, save
from qverify.simulator.program import Program, make_attr, make_constant
from qverify.v1 import model_pb2

# Every message must tell the user what to do next, not only what went wrong.
ACTIONS = ("recompile", "qverify compile", "copy the file", "pass ", "expected ", "check ")


def small_program() -> model_pb2.Program:
    """A two-node int8 program: Conv (weights, bias, multipliers) then a Lut."""
    rng = np.random.default_rng(3)
    weight = rng.integers(-128, 128, size=(4, 3, 3, 3), dtype=np.int8)
    bias = rng.integers(-1000, 1000, size=(4,), dtype=np.int32)
    m0 = np.full((4,), 1 << 30, dtype=np.int32)
    shift = np.array([-7, -8, -6, -9], dtype=np.int32)
    table = np.arange(-128, 128, dtype=np.int8)

    def tensor(name, shape, producer="", scale=0.05, zp=-3):
        return model_pb2.TensorInfo(
            name=name, onnx_name=name, dtype=model_pb2.INT8, shape=shape, onnx_dtype=3,
            quant=model_pb2.QuantParams(scale=scale, zero_point=zp), aligned_layout="NHWC",
            aligned_shape=[shape[0], shape[2], shape[3], 16], producer=producer)

    return model_pb2.Program(
        name="tiny",
        target=model_pb2.Target(name="sim-a16", c_align=16, w_align=1),
        inputs=["x"], outputs=["z"], onnx_inputs=["x_float"], onnx_outputs=["z_float"],
        tensors=[tensor("x", [1, 3, 8, 8]), tensor("y", [1, 4, 8, 8], "conv"),
                 tensor("z", [1, 4, 8, 8], "lut", 0.01, 5)],
        constants=[make_constant("w", weight), make_constant("b", bias), make_constant("m0", m0),
                   make_constant("shift", shift), make_constant("table", table)],
        nodes=[
            model_pb2.Node(name="conv", op="Conv", inputs=["x"], outputs=["y"],
                           constants=["w", "b", "m0", "shift"], placement=model_pb2.NPU,
                           attrs={"pads": make_attr([1, 1, 1, 1]), "group": make_attr(1),
                                  "alpha": make_attr(0.5), "mode": make_attr("same")},
                           onnx_nodes=["Conv_0", "Relu_1"], onnx_op="Conv"),
            model_pb2.Node(name="lut", op="Lut", inputs=["y"], outputs=["z"], constants=["table"],
                           placement=model_pb2.NPU, onnx_op="Sigmoid", onnx_nodes=["Sigmoid_2"]),
        ],
        preprocess=[model_pb2.Preprocess(input="x", color="BGR", model_color="RGB",
                                         mean=[123.0, 117.0, 104.0], std=[58.0, 57.0, 57.5],
                                         image_shape=[1, 8, 8, 3])],
        source_sha256="ab" * 32, source_format="QDQ", compiler_version="0.1.0",
    )


def _header(payload: bytes, *, magic=MAGIC, version=FORMAT_VERSION, length=None, digest=None) -> bytes:
    return HEADER.pack(magic, version, 0, len(payload) if length is None else length,
                       hashlib.sha256(payload).digest() if digest is None else digest, b"\0" * 8)


def _assert_actionable(exc: ModelFormatError, source: str) -> None:
    msg = str(exc)
    assert isinstance(exc, SimulatorError)
    assert source in msg, f"message does not name the file: {msg!r}"
    assert any(a in msg for a in ACTIONS), f"message does not say what to do: {msg!r}"
    # never a chained protobuf / numpy / OS traceback behind it
    assert exc.__cause__ is None
    assert exc.__context__ is None or exc.__suppress_context__
    assert "Traceback" not in msg
    assert "\n" not in msg


def _decode_error(data: bytes, source: str = "board/model.bin") -> ModelFormatError:
    with pytest.raises(ModelFormatError) as info:
        decode(data, source)
    _assert_actionable(info.value, source)
    return info.value


def _load_error(path) -> ModelFormatError:
    with pytest.raises(ModelFormatError) as info:
        load(path)
    _assert_actionable(info.value, str(path))
    return info.value


# ----------------------------------------------------------------------------- round trip
def test_encode_decode_round_trip():
    prog = small_program()
    data = encode(prog)
    assert data[:8] == MAGIC
    magic, version, reserved, length, digest, tail = HEADER.unpack_from(data)
    assert (version, reserved, tail) == (FORMAT_VERSION, 0, b"\0" * 8)
    assert length == len(data) - 64
    assert digest == hashlib.sha256(data[64:]).digest()
    back = decode(data)
    assert back == prog
    assert encode(back) == data  # deterministic serialization


def test_header_layout_matches_model_proto():
    data = encode(small_program())
    assert struct.unpack_from("<I", data, 8)[0] == FORMAT_VERSION
    assert struct.unpack_from("<I", data, 12)[0] == 0
    assert struct.unpack_from("<Q", data, 16)[0] == len(data) - 64
    assert data[24:56] == hashlib.sha256(data[64:]).digest()
    assert data[56:64] == b"\0" * 8


def test_save_load_round_trip(tmp_path):
    prog = small_program()
    path = tmp_path / "model.bin"
    digest = save(prog, path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert load(path) == prog
    assert load(str(path)) == prog
    assert sorted(os.listdir(tmp_path)) == ["model.bin"]
    # a second save replaces the file in place, still with no leftovers
    prog.name = "tiny2"
    save(prog, path)
    assert load(path).name == "tiny2"
    assert sorted(os.listdir(tmp_path)) == ["model.bin"]


def test_round_trip_program_decodes_constants(tmp_path):
    prog = small_program()
    save(prog, tmp_path / "m.bin")
    p = Program(load(tmp_path / "m.bin"))
    rng = np.random.default_rng(3)
    np.testing.assert_array_equal(p.constants["w"], rng.integers(-128, 128, size=(4, 3, 3, 3), dtype=np.int8))
    assert p.constants["b"].dtype == np.int32
    assert p.constants["table"].tolist() == list(range(-128, 128))
    assert [n.name for n in p.nodes] == ["conv", "lut"]
    assert p.nodes[0].attrs == {"pads": [1, 1, 1, 1], "group": 1, "alpha": 0.5, "mode": "same"}
    assert [t.name for t in p.inputs] == ["x"] and [t.name for t in p.outputs] == ["z"]
    assert p.target.name == "sim-a16" and p.target.c_align == 16
    assert p.preprocess["x"].color == "BGR"


# ----------------------------------------------------------------------------- corruptions
def test_empty_file(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"")
    _load_error(path)
    _decode_error(b"")


def test_ten_bytes(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(encode(small_program())[:10])
    assert "10 bytes" in str(_load_error(path))


def test_wrong_magic(tmp_path):
    payload = small_program().SerializeToString(deterministic=True)
    data = _header(payload, magic=b"ONNXMDL\0") + payload
    path = tmp_path / "model.bin"
    path.write_bytes(data)
    assert "magic" in str(_load_error(path))
    # a real ONNX / random file of the right length is not a model either
    _decode_error(b"\x08\x07\x12\x07pytorch" + b"\0" * 100)


@pytest.mark.parametrize("version", [0, 2, FORMAT_VERSION + 1, 2 ** 32 - 1])
def test_wrong_version(tmp_path, version):
    payload = small_program().SerializeToString(deterministic=True)
    path = tmp_path / "model.bin"
    path.write_bytes(_header(payload, version=version) + payload)
    msg = str(_load_error(path))
    assert f"version {version}" in msg


@pytest.mark.parametrize("cut", [1, 10, 100])
def test_truncated_payload(tmp_path, cut):
    data = encode(small_program())
    path = tmp_path / "model.bin"
    path.write_bytes(data[:-cut])
    assert "truncated" in str(_load_error(path))


def test_header_only(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(encode(small_program())[:64])
    _load_error(path)


def test_padded_payload():
    _decode_error(encode(small_program()) + b"\0")


def test_flipped_payload_byte(tmp_path):
    data = bytearray(encode(small_program()))
    data[64 + len(data[64:]) // 2] ^= 0x01
    path = tmp_path / "model.bin"
    path.write_bytes(bytes(data))
    assert "sha256" in str(_load_error(path))


@pytest.mark.parametrize("payload", [
    b"\xff\xff\xff\xff",                 # invalid wire type
    b"\x0a\x05ab",                       # length-delimited field longer than the payload
    b"\x0a\x02\xff\xfe",                 # name field with invalid UTF-8
    b"\x08" + b"\x80" * 11,              # varint longer than 10 bytes
    b"\x07",                             # field number 0
], ids=["wiretype", "overlong", "utf8", "varint", "field0"])
def test_payload_not_a_protobuf(tmp_path, payload):
    path = tmp_path / "model.bin"
    path.write_bytes(_header(payload) + payload)  # correct length and hash
    assert "not a valid program" in str(_load_error(path))


def test_directory_path(tmp_path):
    _load_error(tmp_path)


def test_missing_path(tmp_path):
    _load_error(tmp_path / "nope" / "model.bin")


def test_missing_path_is_a_model_format_error(tmp_path):
    """The part of the missing-path contract that holds today: the type and the file name."""
    path = tmp_path / "model.bin"
    with pytest.raises(ModelFormatError, match="model.bin"):
        load(path)


def test_path_through_a_file(tmp_path):
    (tmp_path / "model.bin").write_bytes(encode(small_program()))
    with pytest.raises(ModelFormatError, match="cannot be read.*check the path"):
        load(tmp_path / "model.bin" / "model.bin")


# the header fields a corruption must be caught in: all but the two reserved ones
_CHECKED_BYTES = [i for i in range(64) if not (12 <= i < 16 or 56 <= i < 64)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
@example(None)
def test_any_single_byte_flip_is_detected(data):
    blob = bytearray(encode(small_program()))
    if data is None:
        pos, mask = 64, 0xFF
    else:
        pos = data.draw(st.one_of(st.sampled_from(_CHECKED_BYTES), st.integers(64, len(blob) - 1)))
        mask = data.draw(st.integers(1, 255))
    blob[pos] ^= mask
    _decode_error(bytes(blob))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
@example(b"")
@example(b"\x12\x00")
def test_arbitrary_payload_with_valid_header_never_crashes(payload):
    """Random bytes behind a valid header: a Program (unknown fields are legal) or ModelFormatError."""
    try:
        prog = decode(_header(payload) + payload, "x/model.bin")
    except ModelFormatError as exc:
        _assert_actionable(exc, "x/model.bin")
    else:
        assert isinstance(prog, model_pb2.Program)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=120))
def test_arbitrary_bytes_never_crash(blob):
    try:
        decode(blob, "m.bin")
    except ModelFormatError as exc:
        _assert_actionable(exc, "m.bin")


# ----------------------------------------------------------------------------- atomic save
def test_save_failure_in_replace_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "model.bin"
    save(small_program(), path)
    before = path.read_bytes()

    def boom(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(modelfile.os, "replace", boom)
    prog = small_program()
    prog.name = "other"
    with pytest.raises(OSError, match="disk on fire"):
        save(prog, path)
    assert sorted(os.listdir(tmp_path)) == ["model.bin"]
    assert path.read_bytes() == before  # the old model is untouched


def test_save_interrupted_mid_write_leaves_nothing(tmp_path, monkeypatch):
    real_fdopen = os.fdopen

    class Half:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()
            return False

        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            raise KeyboardInterrupt  # BaseException, like Ctrl-C during a compile

    monkeypatch.setattr(modelfile.os, "fdopen", lambda fd, mode: Half(real_fdopen(fd, mode)))
    with pytest.raises(KeyboardInterrupt):
        save(small_program(), tmp_path / "model.bin")
    assert os.listdir(tmp_path) == []


def test_save_into_missing_folder_raises_and_leaves_nothing(tmp_path):
    with pytest.raises(OSError):
        save(small_program(), tmp_path / "missing" / "model.bin")
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- Program structure
def _program_error(proto: model_pb2.Program, match: str) -> None:
    with pytest.raises(ModelFormatError, match=match) as info:
        Program(proto)
    assert info.value.__cause__ is None


def test_program_accepts_the_small_program():
    Program(small_program())


def test_program_node_reads_unknown_tensor():
    prog = small_program()
    prog.nodes[1].inputs[0] = "ghost"
    _program_error(prog, "node 'lut' reads unknown tensor 'ghost'")


def test_program_node_uses_unknown_constant():
    prog = small_program()
    prog.nodes[0].constants[1] = "no_such_bias"
    _program_error(prog, "node 'conv' reads unknown constant 'no_such_bias'")


@pytest.mark.parametrize("delta", [-1, 1, -4])
def test_program_constant_with_wrong_byte_count(delta):
    prog = small_program()
    const = prog.constants[1]  # int32 bias of shape [4] -> 16 bytes
    const.data = const.data[:16 + delta] if delta < 0 else const.data + b"\0" * delta
    _program_error(prog, r"constant 'b' holds \d+ bytes, its shape \[4\] needs 16")


def test_program_constant_shape_disagrees_with_dtype():
    prog = small_program()
    prog.constants[1].dtype = model_pb2.INT64  # 16 bytes, but [4] int64 needs 32
    _program_error(prog, "constant 'b'")


def test_program_node_writes_undeclared_tensor():
    prog = small_program()
    prog.nodes[0].outputs[0] = "nowhere"
    _program_error(prog, "writes undeclared tensor 'nowhere'")


def test_program_output_not_declared():
    prog = small_program()
    prog.outputs.append("extra")
    _program_error(prog, "'extra' is not a declared tensor")


@pytest.mark.parametrize("code", [0, 99])
def test_program_unknown_dtype(code):
    prog = small_program()
    prog.tensors[0].dtype = code
    _program_error(prog, f"unknown data type code {code}")
    prog = small_program()
    prog.constants[0].dtype = code
    _program_error(prog, f"unknown data type code {code}")


def test_program_node_constant_names_an_activation_tensor():
    prog = small_program()
    prog.nodes[1].constants[0] = "x"
    _program_error(prog, "'x'")


@pytest.mark.parametrize("shape,data", [([-1, -2], b"ab"), ([2 ** 32, 2 ** 32], b""), ([0, -5], b"")],
                         ids=["negative", "overflow", "zero-negative"])
def test_program_constant_with_impossible_shape(shape, data):
    prog = small_program()
    prog.constants.append(model_pb2.Constant(name="odd", dtype=model_pb2.INT8, shape=shape, data=data))
    _program_error(prog, "constant 'odd'")
