"""Nothing a push does can cost a board the models it already holds (over real gRPC, on a real full disk).

A push that cannot fit, or that declares a size it never sends, evicts nothing; only a
complete push whose size, container and sha256 were checked may evict, and only as much as
it needs.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import grpc
import pytest

from agent_harness import agent_pool, model_id  # noqa: F401  (fixture)
from tmpfs import mounted_tmpfs
from qverify.simulator import modelfile
from qverify.v1 import board_agent_pb2 as pb
from qverify.v1 import model_pb2

MiB = 1 << 20


def model_of_size(size: int, name: str) -> bytes:
    """A real model container of about ``size`` bytes (a long program name pads it)."""
    return modelfile.encode(model_pb2.Program(name=name + "x" * size, target=model_pb2.Target(
        name="sim-a16", c_align=16, w_align=1)))


@pytest.fixture
def tmpfs_store(tmp_path: Path):
    """A real 4 MiB tmpfs."""
    with mounted_tmpfs(tmp_path / "store") as mount:
        yield mount


def _one_byte_of(data: bytes, declared: int):
    yield pb.PushChunk(sha256=hashlib.sha256(data).hexdigest(), total_bytes=declared, data=data[:1])


def test_pushes_that_cannot_complete_leave_the_store_as_it_was(agent_pool, tmpfs_store):
    agent = agent_pool.start("--max-message-size", "8M", model_dir=tmpfs_store, name="full-disk")
    kept = model_of_size(1 * MiB, "kept")
    big = model_of_size(5 * MiB, "big")        # more than the whole disk
    fits = model_of_size(3 * MiB + MiB // 2, "fits")  # fits only once `kept` is evicted
    with agent.client() as client:
        client.push(kept)
        with pytest.raises(grpc.RpcError) as err:
            client.push(big)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "disk" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:  # one byte of a declared 3.5 MiB, then the stream ends
            client.stub.PushModel(_one_byte_of(fits, len(fits)), timeout=30, metadata=client.metadata)
        assert err.value.code() == grpc.StatusCode.DATA_LOSS
        assert [m.sha256 for m in client.list().models] == [model_id(kept)]
        assert agent.part_files() == []
        client.push(fits)                          # complete and proven: it may evict `kept`
        assert [m.sha256 for m in client.list().models] == [model_id(fits)]
    assert (tmpfs_store / f"{model_id(fits)}.bin").read_bytes() == fits
    assert agent.stop() == 0


def test_bytes_that_are_not_a_model_are_refused(agent_pool):
    agent = agent_pool.start(name="not-a-model")
    junk = b"#!/bin/sh\necho this is not a model but is long enough for a header of 64 bytes\n"
    with agent.client() as client:
        with pytest.raises(grpc.RpcError) as err:
            client.push(junk)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "qverify compile" in err.value.details()
        assert client.list().models == []
    assert agent.stop() == 0
