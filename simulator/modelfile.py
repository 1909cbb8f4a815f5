"""model.bin: a 64-byte header (magic, format version, payload length, sha256) + Program.

The layout is documented in ``proto/model.proto``. Saving writes a temporary file and
renames it, so an interrupted compile never leaves a half-written model.bin.
"""
from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from pathlib import Path

from google.protobuf.message import DecodeError

from qverify.simulator.errors import ModelFormatError
from qverify.v1 import model_pb2

MAGIC = b"QVFYMDL\0"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sII Q 32s 8s")  # magic, version, reserved, length, sha256, reserved
assert HEADER.size == 64


def encode(program: model_pb2.Program) -> bytes:
    payload = program.SerializeToString(deterministic=True)
    header = HEADER.pack(MAGIC, FORMAT_VERSION, 0, len(payload), hashlib.sha256(payload).digest(), b"\0" * 8)
    return header + payload


def decode(data: bytes, source: str = "model.bin") -> model_pb2.Program:
    """Parse model.bin bytes; every failure is a ModelFormatError naming ``source``.

    This checks the container (header, length, sha256, protobuf). The program's semantics
    are checked by :func:`decode_program` (what ``qverify.simulator.load`` runs for every run,
    ``qverify info`` and the board).
    """
    if len(data) < HEADER.size:
        raise ModelFormatError(f"{source}: file is {len(data)} bytes, too short to be a qverify model; "
                               "recompile it with 'qverify compile'")
    magic, version, _, length, digest, _ = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ModelFormatError(f"{source}: not a qverify model (bad magic {magic[:7]!r}); "
                               "pass a model.bin written by 'qverify compile'")
    if version != FORMAT_VERSION:
        raise ModelFormatError(f"{source}: model format version {version}, this qverify reads version "
                               f"{FORMAT_VERSION}; recompile the model with this qverify")
    payload = data[HEADER.size:]
    if len(payload) != length:
        raise ModelFormatError(f"{source}: truncated or padded: header says {length} payload bytes, "
                               f"file has {len(payload)}; copy the file again or recompile")
    if hashlib.sha256(payload).digest() != digest:
        raise ModelFormatError(f"{source}: payload sha256 does not match the header (corrupt file); "
                               "copy the file again or recompile")
    program = model_pb2.Program()
    try:
        program.ParseFromString(payload)
    except DecodeError as exc:
        raise ModelFormatError(f"{source}: payload is not a valid program ({exc}); recompile") from None
    return program


def save(program: model_pb2.Program, path: str | os.PathLike) -> str:
    """Write model.bin atomically; returns the sha256 hex of the whole file."""
    data = encode(program)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; a model is not a secret
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return hashlib.sha256(data).hexdigest()


def decode_program(data: bytes, source: str = "model.bin", max_tensor_bytes: int | None = None):
    """Parse and validate model.bin bytes into a runnable ``Program``.

    Beyond :func:`decode`, the program's semantics are validated (``qverify.simulator.validate``):
    one ModelFormatError naming the node for a program its kernels cannot run, or one declaring a
    tensor over ``max_tensor_bytes`` (default 1 GiB), before anything allocates it.
    """
    from qverify.simulator.program import Program
    from qverify.simulator.validate import validate

    program = Program(decode(data, source))
    validate(program, max_tensor_bytes, source)
    return program


def load(path: str | os.PathLike) -> model_pb2.Program:
    """Read and parse model.bin (the container only, see :func:`decode`)."""
    return decode(read(path), str(path))


def read(path: str | os.PathLike) -> bytes:
    """The bytes of model.bin at ``path``; a ModelFormatError names what went wrong."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelFormatError(f"{path}: no such file; check the path, or compile one with "
                               "'qverify compile quant.onnx -o model.bin'") from None
    except IsADirectoryError:
        raise ModelFormatError(f"{path}: is a directory, expected a model.bin file") from None
    except PermissionError:
        raise ModelFormatError(f"{path}: permission denied; make the file readable") from None
    except OSError as exc:
        raise ModelFormatError(f"{path}: cannot be read ({exc.strerror or exc}); check the path") from None
    return data
