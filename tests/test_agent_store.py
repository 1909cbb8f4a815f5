"""The agent's model store: atomic verified pushes, LRU eviction with pins, restart recovery, ids that are never paths."""
from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tmpfs import mounted_tmpfs
from qverify.agent import store as store_mod
from qverify.agent.store import (
    HashMismatch,
    InvalidModelId,
    ModelNotFound,
    ModelStore,
    ModelTooLarge,
    NotAModel,
    StoreError,
    StoredModelInfo,
    StoreFull,
    TransferIncomplete,
    TransferSizeError,
)
from qverify.simulator import modelfile
from qverify.v1 import model_pb2

BIG = 1 << 30


def model(name: str = "m", target: str = "sim-a16") -> tuple[str, bytes]:
    """(sha256, bytes) of a real model.bin; different names give different hashes."""
    data = modelfile.encode(model_pb2.Program(name=name, target=model_pb2.Target(name=target, c_align=16, w_align=1)))
    return hashlib.sha256(data).hexdigest(), data


def models(count: int, prefix: str = "m") -> list[tuple[str, bytes]]:
    """``count`` distinct models of the same size (names of equal length)."""
    return [model(f"{prefix}{i:04d}") for i in range(count)]


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.endswith(".part"))


def make(root: Path, capacity: int = BIG, max_model: int = BIG) -> ModelStore:
    return ModelStore(root, capacity, max_model, board_id="board-7")


# ----------------------------------------------------------------------------- basics


def test_round_trip_push_has_list_delete(tmp_path: Path) -> None:
    store = make(tmp_path)
    sha, data = model("resnet", "sim-a16")
    assert store.has(sha) is None
    with store.begin_push(sha, len(data)) as push:
        for i in range(0, len(data), 7):
            push.write(data[i:i + 7])
        assert push.commit() == len(data)
    assert store.has(sha) == len(data)
    assert (tmp_path / f"{sha}.bin").read_bytes() == data
    assert store.path_for_run(sha) == tmp_path / f"{sha}.bin"
    [info] = store.list()
    assert isinstance(info, StoredModelInfo)
    assert (info.sha256, info.size_bytes, info.name, info.target) == (sha, len(data), "resnet", "sim-a16")
    assert abs(info.last_used_unix_ms - time.time() * 1000) < 60_000
    assert store.used_bytes() == len(data)
    assert store.free_bytes() > 0
    assert leftovers(tmp_path) == []

    sha2, data2 = model("other", "sim-a32")
    assert store.put_bytes(sha2, data2) == len(data2)
    assert {(m.sha256, m.target) for m in store.list()} == {(sha, "sim-a16"), (sha2, "sim-a32")}
    assert store.list()[0].sha256 == sha2  # most recently used first

    assert store.delete(sha) is True
    assert store.delete(sha) is False
    assert store.has(sha) is None
    with pytest.raises(ModelNotFound, match="not in the store of board board-7; push it first"):
        store.path_for_run(sha)
    assert [m.sha256 for m in store.list()] == [sha2]
    assert store.used_bytes() == len(data2)


def test_pushing_a_present_model_again_is_harmless(tmp_path: Path) -> None:
    store = make(tmp_path, capacity=200)
    sha, data = model()
    store.put_bytes(sha, data)
    store.put_bytes(sha, data)  # no eviction of itself, no double counting
    assert store.used_bytes() == len(data)
    assert [m.sha256 for m in store.list()] == [sha]


def test_unreadable_model_lists_with_empty_name(tmp_path: Path) -> None:
    store = make(tmp_path)
    data = b"not a model at all"
    sha = hashlib.sha256(data).hexdigest()
    (tmp_path / f"{sha}.bin").write_bytes(data)  # out of band (SFTP): pushes refuse such bytes
    [info] = store.list()
    assert (info.name, info.target, info.size_bytes) == ("", "", len(data))


def test_errors_carry_grpc_codes() -> None:
    assert InvalidModelId.grpc_code == "INVALID_ARGUMENT"
    assert ModelNotFound.grpc_code == "NOT_FOUND"
    assert ModelTooLarge.grpc_code == StoreFull.grpc_code == "RESOURCE_EXHAUSTED"
    assert HashMismatch.grpc_code == TransferIncomplete.grpc_code == "DATA_LOSS"  # the bytes that came are not the model
    assert TransferSizeError.grpc_code == "INVALID_ARGUMENT"
    for cls in (InvalidModelId, ModelNotFound, ModelTooLarge, StoreFull, HashMismatch, TransferIncomplete,
                TransferSizeError):
        assert issubclass(cls, StoreError)


# ----------------------------------------------------------------------------- cut and corrupt pushes


def test_aborted_push_leaves_nothing(tmp_path: Path) -> None:
    store = make(tmp_path)
    sha, data = model()
    push = store.begin_push(sha, len(data))
    push.write(data[:40])
    assert len(leftovers(tmp_path)) == 1
    assert leftovers(tmp_path)[0].startswith(f".{sha}.")
    push.abort()
    push.abort()  # idempotent
    assert leftovers(tmp_path) == [] and store.has(sha) is None
    with pytest.raises(RuntimeError):
        push.write(b"x")


def test_exception_inside_push_context_aborts(tmp_path: Path) -> None:
    store = make(tmp_path)
    sha, data = model()
    with pytest.raises(ConnectionError):
        with store.begin_push(sha, len(data)) as push:
            push.write(data[:30])
            raise ConnectionError("client went away")
    assert leftovers(tmp_path) == [] and store.has(sha) is None
    # Leaving the block without commit (a stream that simply ended) aborts too.
    with store.begin_push(sha, len(data)) as push:
        push.write(data)
    assert leftovers(tmp_path) == [] and store.has(sha) is None


def test_short_push_is_incomplete(tmp_path: Path) -> None:
    store = make(tmp_path)
    sha, data = model()
    push = store.begin_push(sha, len(data))
    push.write(data[:-1])
    with pytest.raises(TransferIncomplete, match=rf"ended after {len(data) - 1} of {len(data)} bytes; push it again"):
        push.commit()
    assert leftovers(tmp_path) == [] and store.has(sha) is None


def test_push_past_declared_size_is_rejected_without_writing(tmp_path: Path) -> None:
    store = make(tmp_path)
    sha, data = model()
    push = store.begin_push(sha, len(data) - 5)
    push.write(data[:10])
    with pytest.raises(TransferSizeError, match="declared"):
        push.write(data[10:])
    assert leftovers(tmp_path) == [] and store.has(sha) is None
    with pytest.raises(TransferSizeError):
        store.begin_push(sha, -1)


def test_wrong_hash_is_rejected(tmp_path: Path) -> None:
    store = make(tmp_path)
    sha_a, _ = model("a")
    _, data_b = model("b")
    with pytest.raises(HashMismatch, match="push it again") as err:
        store.put_bytes(sha_a, data_b)
    assert err.value.sha256 == sha_a
    assert leftovers(tmp_path) == [] and store.has(sha_a) is None and store.list() == []


_WRITER = textwrap.dedent("""
    import sys, time
    from qverify.agent.store import ModelStore
    root, sha, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = ModelStore(root, 1 << 30, 1 << 30)
    push = store.begin_push(sha, size)
    push.write(sys.stdin.buffer.read(size // 2))
    print("half", flush=True)
    time.sleep(60)
""")


def test_push_killed_mid_way_leaves_nothing_after_restart(tmp_path: Path) -> None:
    sha, data = model("killed")
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), sha, str(len(data))],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        proc.stdin.write(data[:len(data) // 2])
        proc.stdin.close()
        assert proc.stdout.readline() == b"half\n"
        assert len(leftovers(tmp_path)) == 1  # the writer is mid-push
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    (tmp_path / "notes.txt").write_text("foreign file")
    store = make(tmp_path)
    assert leftovers(tmp_path) == []
    assert (tmp_path / "notes.txt").exists()  # not ours: left alone
    assert store.has(sha) is None and store.list() == [] and store.used_bytes() == 0
    with pytest.raises(ModelNotFound):
        store.path_for_run(sha)


# ----------------------------------------------------------------------------- ids


BAD_IDS = [
    "../x",
    "../" + "a" * 61,
    "/etc/passwd",
    "a" * 63,
    "a" * 65,
    "A" * 64,
    "3F2A" + "0" * 60,
    "g" * 64,
    "a" * 60 + ".bin",
    "a" * 63 + "/",
    "a" * 64 + "\n",
    "",
    None,
    64,
]


class _NoFileSystem:
    """Stands in for os, tempfile and shutil inside the store module: any use fails the test."""

    def __getattr__(self, name: str):
        raise AssertionError(f"the store touched the file system ({name}) before validating the id")


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
def test_invalid_ids_are_rejected_before_touching_the_file_system(tmp_path: Path, monkeypatch, bad) -> None:
    (tmp_path / "x").write_text("keep me")
    store = make(tmp_path / "store")
    before = sorted(os.listdir(tmp_path / "store"))
    for name in ("os", "tempfile", "shutil"):
        monkeypatch.setattr(store_mod, name, _NoFileSystem())
    calls = [
        lambda: store.has(bad), lambda: store.delete(bad), lambda: store.path_for_run(bad),
        lambda: store.touch(bad), lambda: store.begin_push(bad, 10), lambda: store.put_bytes(bad, b"x"),
        lambda: store.path_of(bad), lambda: store.is_pinned(bad), lambda: store.validate_id(bad),
    ]
    for call in calls:
        with pytest.raises(InvalidModelId, match="64 lowercase hex characters"):
            call()
    with pytest.raises(InvalidModelId):
        with store.pin(bad):
            pass
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path / "store")) == before
    assert (tmp_path / "x").read_text() == "keep me"


def test_uppercase_id_message_says_lowercase() -> None:
    with pytest.raises(InvalidModelId, match="uppercase"):
        store_mod.validate_id("A" * 64)


# ----------------------------------------------------------------------------- capacity


def test_lru_eviction_order_survives_restart(tmp_path: Path) -> None:
    (a, da), (b, db), (c, dc), (d, dd), (e, de), (f, df) = models(6)
    size = len(da)
    store = make(tmp_path, capacity=3 * size)
    for sha, data in ((a, da), (b, db), (c, dc)):
        store.put_bytes(sha, data)
    store.touch(a)                        # LRU order now b, c, a
    store.put_bytes(d, dd)                # evicts b
    assert store.has(b) is None and all(store.has(s) == size for s in (a, c, d))
    assert store.used_bytes() == 3 * size
    assert [m.sha256 for m in store.list()] == [d, a, c]

    restarted = make(tmp_path, capacity=3 * size)  # order read back from mtimes: c, a, d
    assert [m.sha256 for m in restarted.list()] == [d, a, c]
    restarted.put_bytes(e, de)            # evicts c
    assert restarted.has(c) is None and restarted.has(a) == size
    restarted.path_for_run(a)             # a use: order d, e, a
    restarted.put_bytes(f, df)            # evicts d
    assert restarted.has(d) is None
    assert {m.sha256 for m in restarted.list()} == {a, e, f}
    assert restarted.used_bytes() <= restarted.capacity_bytes


def test_last_use_is_the_file_mtime(tmp_path: Path) -> None:
    store = make(tmp_path)
    sha, data = model()
    store.put_bytes(sha, data)
    os.utime(tmp_path / f"{sha}.bin", ns=(1_000_000_000, 1_000_000_000))
    assert make(tmp_path).list()[0].last_used_unix_ms == 1000
    store.touch(sha)
    assert (tmp_path / f"{sha}.bin").stat().st_mtime_ns > 1_000_000_000


def test_pinned_models_are_not_evicted(tmp_path: Path) -> None:
    (a, da), (b, db), (c, dc) = models(3)
    size = len(da)
    store = make(tmp_path, capacity=2 * size)
    store.put_bytes(a, da)
    store.put_bytes(b, db)
    with store.pin(a) as path:
        assert path == tmp_path / f"{a}.bin" and store.is_pinned(a)
        store.touch(b)                    # a is now least recently used, but pinned
        store.put_bytes(c, dc)
        assert store.has(a) == size and store.has(b) is None and store.has(c) == size
    assert not store.is_pinned(a)


def test_store_full_of_pinned_models_refuses_push(tmp_path: Path) -> None:
    (a, da), (b, db) = models(2)
    store = make(tmp_path, capacity=len(da))
    store.put_bytes(a, da)
    with store.pin(a):
        with store.pin(a):                # pins nest
            pass
        with pytest.raises(StoreFull, match="push again when those runs finish"):
            store.put_bytes(b, db)
        assert store.has(a) == len(da) and store.has(b) is None and leftovers(tmp_path) == []
    store.put_bytes(b, db)                # unpinned now: a is evicted
    assert store.has(a) is None and store.has(b) == len(db)


def test_pin_of_missing_model_is_not_found(tmp_path: Path) -> None:
    store = make(tmp_path)
    sha, _ = model()
    with pytest.raises(ModelNotFound):
        with store.pin(sha):
            pass
    assert not store.is_pinned(sha)


def test_too_large_models_are_rejected_before_writing(tmp_path: Path) -> None:
    sha, data = model("x" * 200)
    store = make(tmp_path, capacity=10_000, max_model=100)
    with pytest.raises(ModelTooLarge, match="more than the 100 bytes board board-7 accepts"):
        store.begin_push(sha, len(data))
    store = make(tmp_path, capacity=100, max_model=10_000)
    with pytest.raises(ModelTooLarge, match="more than the whole model store"):
        store.put_bytes(sha, data)
    assert os.listdir(tmp_path) == []


def test_trim_evicts_models_that_arrived_out_of_band(tmp_path: Path) -> None:
    (a, da), (b, db), (c, dc) = models(3)
    store = make(tmp_path, capacity=2 * len(da))
    for i, (sha, data) in enumerate(((a, da), (b, db), (c, dc))):
        (tmp_path / f"{sha}.bin").write_bytes(data)  # as an SFTP push would
        os.utime(tmp_path / f"{sha}.bin", ns=((i + 1) * 10**9, (i + 1) * 10**9))
    assert store.has(a) == len(da) and store.used_bytes() == 3 * len(da)
    assert store.trim() == [a]
    assert store.used_bytes() == 2 * len(da)


# ----------------------------------------------------------------------------- verification


def test_corrupt_file_is_detected_on_first_use_after_restart(tmp_path: Path) -> None:
    (good, dg), (bad, dbad) = models(2)
    store = make(tmp_path)
    store.put_bytes(good, dg)
    store.put_bytes(bad, dbad)
    path = tmp_path / f"{bad}.bin"
    st = path.stat()
    flipped = bytearray(dbad)
    flipped[-1] ^= 0xFF
    path.write_bytes(bytes(flipped))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime: only a hash can tell

    restarted = make(tmp_path)
    assert restarted.has(bad) == len(dbad)  # presence is cheap; the hash is checked on use
    with pytest.raises(ModelNotFound, match="was corrupt .* and has been deleted; push it again"):
        restarted.path_for_run(bad)
    assert not path.exists() and restarted.has(bad) is None
    assert restarted.path_for_run(good) == tmp_path / f"{good}.bin"
    restarted.put_bytes(bad, dbad)  # pushing it again repairs it
    assert restarted.path_for_run(bad).read_bytes() == dbad


def test_hash_is_checked_once_per_file_version(tmp_path: Path, monkeypatch) -> None:
    sha, data = model()
    make(tmp_path).put_bytes(sha, data)
    restarted = make(tmp_path)
    hashed: list[str] = []
    real = store_mod._hash_file
    monkeypatch.setattr(store_mod, "_hash_file", lambda p: hashed.append(p) or real(p))
    for _ in range(3):
        restarted.path_for_run(sha)
        restarted.touch(sha)
    assert len(hashed) == 1
    restarted.put_bytes(sha, data)  # written by this process: verified while it arrived
    restarted.path_for_run(sha)
    assert len(hashed) == 1


def test_out_of_band_file_is_verified_on_first_use(tmp_path: Path) -> None:
    store = make(tmp_path)
    sha, data = model("sftp")
    (tmp_path / f"{sha}.bin").write_bytes(data)      # arrives after the store started
    assert store.has(sha) == len(data)
    assert store.path_for_run(sha).read_bytes() == data
    wrong, _ = model("named-wrong")
    (tmp_path / f"{wrong}.bin").write_bytes(data)     # content does not match its name
    with pytest.raises(ModelNotFound, match="corrupt"):
        store.path_for_run(wrong)
    assert not (tmp_path / f"{wrong}.bin").exists()


def test_foreign_files_are_ignored(tmp_path: Path) -> None:
    sha, data = model()
    (tmp_path / "README").write_text("x")
    (tmp_path / f"{sha.upper()}.bin").write_bytes(data)
    (tmp_path / f"{sha}.bin.bak").write_bytes(data)
    (tmp_path / f".{sha}.tmp").write_bytes(data)
    os.mkdir(tmp_path / f"{'b' * 64}.bin")
    os.symlink(tmp_path / "README", tmp_path / f"{'c' * 64}.bin")
    store = make(tmp_path)
    assert store.list() == [] and store.used_bytes() == 0
    assert store.has("b" * 64) is None and store.has("c" * 64) is None
    assert len(os.listdir(tmp_path)) == 6


# ----------------------------------------------------------------------------- concurrency


def test_concurrent_pushes_end_consistent(tmp_path: Path) -> None:
    pool = models(6, prefix="c")
    size = len(pool[0][1])
    store = make(tmp_path)
    small = make(tmp_path / "small", capacity=3 * size)
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(index: int) -> None:
        try:
            start.wait()
            for round_ in range(12):
                sha, data = pool[(index + round_) % len(pool)] if round_ % 2 else pool[0]  # same and different
                for target in (store, small):
                    try:
                        with target.begin_push(sha, len(data)) as push:
                            for i in range(0, len(data), 11):
                                push.write(data[i:i + 11])
                            push.commit()
                    except StoreFull:
                        assert target is small  # every model it holds is pinned by a run: allowed
                        continue
                    try:
                        with target.pin(sha) as path:
                            assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
                    except ModelNotFound:
                        assert target is small  # evicted by another thread meanwhile: allowed
                    target.list()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert {m.sha256 for m in store.list()} == {sha for sha, _ in pool}
    assert store.used_bytes() == len(pool) * size
    for target, root in ((store, tmp_path), (small, tmp_path / "small")):
        assert leftovers(root) == []
        assert target.used_bytes() <= target.capacity_bytes
        for info in target.list():
            assert hashlib.sha256((root / f"{info.sha256}.bin").read_bytes()).hexdigest() == info.sha256
    assert 1 <= len(small.list()) <= 3


# ----------------------------------------------------------------------------- full disk


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_writing_is_store_full(tmp_path: Path, monkeypatch) -> None:
    store = make(tmp_path)
    sha, data = model()
    monkeypatch.setattr(store_mod, "_write_all", _enospc)
    push = store.begin_push(sha, len(data))
    push.write(data)  # held in memory: the disk filled up under the push
    with pytest.raises(StoreFull, match=r"disk of board board-7 is full \(\d+ bytes free"):
        push.commit()
    assert push.state == "aborted"
    assert leftovers(tmp_path) == [] and store.has(sha) is None


def test_disk_full_at_fsync_is_store_full(tmp_path: Path, monkeypatch) -> None:
    store = make(tmp_path)
    sha, data = model()
    monkeypatch.setattr(store_mod, "_fsync", _enospc)
    with pytest.raises(StoreFull, match="free disk space or delete models"):
        store.put_bytes(sha, data)
    assert leftovers(tmp_path) == [] and store.has(sha) is None


def test_no_disk_room_evicts_then_refuses(tmp_path: Path, monkeypatch) -> None:
    (a, da), (b, db) = models(2)
    store = make(tmp_path)
    store.put_bytes(a, da)
    real = store_mod.shutil.disk_usage

    def fake_usage(path):  # a disk that only has room once model a is gone
        return real(path)._replace(free=0 if (tmp_path / f"{a}.bin").exists() else len(da))

    monkeypatch.setattr(store_mod.shutil, "disk_usage", fake_usage)
    store.put_bytes(b, db)               # evicting a freed enough disk space
    assert store.has(a) is None and store.has(b) == len(db)
    sha, data = model("z" * 50)
    with store.pin(b):                   # the only model is in use: nothing to evict
        with pytest.raises(StoreFull, match=rf"disk of board board-7 is full \({len(da)} bytes free"):
            store.begin_push(sha, len(data))
    assert store.has(b) == len(db) and leftovers(tmp_path) == []


def test_agent_store_imports_no_host_packages() -> None:
    code = ("import sys, qverify.agent.store; "
            "bad = [m for m in ('onnx', 'onnxruntime', 'paramiko', 'typer') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------------------------ nothing is lost for a push


def padded_model(size: int, name: str = "m") -> tuple[str, bytes]:
    """A real model.bin of about ``size`` bytes (a long program name pads it)."""
    base = len(model(name)[1])
    return model(name + "x" * max(0, size - base - 8))


def short_disk(monkeypatch, tmp_path: Path, free: int) -> None:
    """The store's file system reports ``free`` bytes plus whatever its models occupy."""
    real = store_mod.shutil.disk_usage

    def usage(path):
        held = sum(f.stat().st_size for f in tmp_path.glob("*.bin"))
        return real(path)._replace(free=max(0, free - held))

    monkeypatch.setattr(store_mod.shutil, "disk_usage", usage)


def test_a_push_that_cannot_fit_even_after_evicting_everything_evicts_nothing(tmp_path: Path, monkeypatch) -> None:
    store = make(tmp_path)
    a, da = padded_model(4000, "a")
    store.put_bytes(a, da)
    short_disk(monkeypatch, tmp_path, free=len(da) + 1000)  # 1000 bytes free beside model a
    b, db = padded_model(6000, "b")
    with pytest.raises(StoreFull, match="free disk space or delete models"):
        store.begin_push(b, len(db))
    assert store.has(a) == len(da) and store.has(b) is None and leftovers(tmp_path) == []


def test_a_push_declared_but_never_sent_evicts_nothing(tmp_path: Path, monkeypatch) -> None:
    store = make(tmp_path)
    a, da = padded_model(4000, "a")
    store.put_bytes(a, da)
    short_disk(monkeypatch, tmp_path, free=len(da) + 1000)
    b, db = padded_model(3000, "b")  # fits only if a is evicted
    with store.begin_push(b, len(db)) as push:
        push.write(db[:1])               # one byte of a declared 3000, then the stream is cut
    assert push.state == "aborted"
    assert store.has(a) == len(da) and store.has(b) is None and leftovers(tmp_path) == []


def test_a_push_with_the_wrong_hash_evicts_nothing(tmp_path: Path, monkeypatch) -> None:
    store = make(tmp_path)
    a, da = padded_model(4000, "a")
    store.put_bytes(a, da)
    short_disk(monkeypatch, tmp_path, free=len(da) + 1000)
    b, _ = padded_model(3000, "b")
    _, dc = padded_model(3000, "c")      # same size, other bytes
    with pytest.raises(HashMismatch):
        store.put_bytes(b, dc)
    assert store.has(a) == len(da) and store.has(b) is None and leftovers(tmp_path) == []


def test_a_proven_push_evicts_only_the_least_recently_used_models_it_needs(tmp_path: Path, monkeypatch) -> None:
    store = make(tmp_path)
    (a, da), (b, db), (c, dc) = (padded_model(2000, n) for n in "abc")
    for sha, data in ((a, da), (b, db), (c, dc)):
        store.put_bytes(sha, data)
    store.touch(a)                       # b is now the least recently used
    short_disk(monkeypatch, tmp_path, free=3 * len(da) + 500)
    d, dd = padded_model(2400, "d")      # needs one model's room, not two
    store.put_bytes(d, dd)
    assert store.has(b) is None
    assert store.has(a) == len(da) and store.has(c) == len(dc) and store.has(d) == len(dd)
    assert (tmp_path / f"{d}.bin").read_bytes() == dd and leftovers(tmp_path) == []


def test_capacity_that_pinned_models_block_evicts_nothing(tmp_path: Path) -> None:
    (a, da), (b, db) = models(2)
    c, dc = model("c" * 30)              # bigger than a or b alone, smaller than both
    store = make(tmp_path, capacity=len(da) + len(db))
    store.put_bytes(a, da)
    store.put_bytes(b, db)
    with store.pin(a):                   # evicting b alone cannot make room for c
        with pytest.raises(StoreFull, match="push again when those runs finish"):
            store.put_bytes(c, dc)
        assert store.has(a) == len(da) and store.has(b) == len(db) and store.has(c) is None


@pytest.mark.parametrize("case", ["garbage", "short", "bad-version", "bad-length", "bad-payload-hash"])
def test_only_model_containers_can_be_pushed(tmp_path: Path, case: str) -> None:
    store = make(tmp_path)
    _, good = model("ok")
    header = bytearray(good[:modelfile.HEADER.size])
    data = {
        "garbage": b"not a model at all, but long enough to have a 64-byte header........",
        "short": b"tiny",
        "bad-version": bytes(header[:8]) + (99).to_bytes(4, "little") + good[12:],
        "bad-length": bytes(header[:16]) + (len(good)).to_bytes(8, "little") + good[24:],
        "bad-payload-hash": good[:-1] + bytes([good[-1] ^ 1]),
    }[case]
    sha = hashlib.sha256(data).hexdigest()  # well hashed: only the content is wrong
    with pytest.raises(NotAModel, match="qverify compile"):
        store.put_bytes(sha, data)
    assert NotAModel.grpc_code == "INVALID_ARGUMENT"
    assert store.has(sha) is None and leftovers(tmp_path) == []


def test_a_model_dir_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    target = tmp_path / "models"
    target.write_text("")
    with pytest.raises(StoreError, match="is a file, not a folder; point the agent's --model-dir at a folder"):
        make(target)


@pytest.fixture
def tmpfs_4mib(tmp_path: Path):
    """A real 4 MiB tmpfs."""
    with mounted_tmpfs(tmp_path / "tmpfs") as mount:
        yield mount


def test_on_a_real_full_disk_a_push_that_cannot_fit_keeps_the_store(tmpfs_4mib: Path) -> None:
    store = make(tmpfs_4mib)
    a, da = padded_model(1 << 20, "a")
    store.put_bytes(a, da)
    b, db = padded_model(5 << 20, "b")   # larger than the whole disk
    with pytest.raises(StoreFull):
        store.begin_push(b, len(db))
    c, dc = padded_model(3 << 20 | 1 << 19, "c")  # fits only after evicting a; declared, one byte sent
    with store.begin_push(c, len(dc)) as push:
        push.write(dc[:1])
    assert store.has(a) == len(da) and store.list()[0].sha256 == a and leftovers(tmpfs_4mib) == []
    store.put_bytes(c, dc)               # a whole, proven push may evict a
    assert store.has(c) == len(dc) and store.has(a) is None
    assert (tmpfs_4mib / f"{c}.bin").read_bytes() == dc
