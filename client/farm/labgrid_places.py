"""Reserve a board of a shared farm through a labgrid coordinator (a labgrid *place*).

`reserved_place()` acquires the place on the coordinator, yields the address and user of the
place's NetworkService resource, and releases the place on the way out: also when the body
raises, on Ctrl-C, and on SIGTERM (what CI runners send to a cancelled job). The coordinator
acquires atomically, so of two processes asking at once exactly one gets the board.

Each acquisition has its own labgrid client name, `HOST+qverify-PID-TOKEN/USER`, so
`labgrid-client show` tells which job holds a board, and the release names that holder: it
never frees someone else's acquisition. labgrid is an optional extra, imported on first use.
"""
from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Awaitable, Callable, Iterator, TypeVar

__all__ = ["LabgridError", "PlaceBusy", "PlaceTarget", "reserved_place"]

log = logging.getLogger(__name__)
T = TypeVar("T")
DEFAULT_COORDINATOR = "127.0.0.1:20408"  # labgrid's own default
OP_TIMEOUT_S = 30.0  # one acquire or release exchange, connecting included


class LabgridError(Exception):
    """A labgrid place could not be used; the message says what to do about it."""


class PlaceBusy(LabgridError):
    """The place is acquired (or reserved) by someone else; `holder` says by whom."""

    def __init__(self, place: str, holder: str, waited_s: float = 0.0) -> None:
        self.place, self.holder = place, holder
        super().__init__(f"labgrid place {place!r} is in use by {holder} (waited {waited_s:g} s); "
                         f"wait longer, or ask its holder to release it (labgrid-client -p {place} release)")


@dataclass(frozen=True)
class PlaceTarget:
    """The board behind an acquired place, from its NetworkService resource."""

    place: str
    address: str
    username: str | None
    port: int | None  # None when the resource sets none (ssh's default applies)


class _LabgridLog:
    """Stands in for `logging` in labgrid's client modules: they call logging.debug()/error(),
    which configure the root logger as a side effect, and log the coordinator failures that
    we raise as LabgridError anyway. Their messages go to this module's logger at DEBUG."""

    def __getattr__(self, name: str) -> Any:
        return getattr(logging, name)

    @staticmethod
    def debug(msg: str, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("exc_info", sys.exc_info()[0] is not None)
        log.debug("labgrid: " + str(msg), *args, **kwargs)

    info = warning = error = critical = exception = debug


def _labgrid() -> SimpleNamespace:
    hook = sys.excepthook  # labgrid.remote.client replaces it at import; keep the caller's
    try:
        import grpc
        import labgrid.remote.client as client
        import labgrid.remote.common as common
        from labgrid.remote.generated import labgrid_coordinator_pb2 as pb
        from labgrid.remote.generated import labgrid_coordinator_pb2_grpc as pb_grpc
        from labgrid.util.proxy import proxymanager
    except ImportError as e:
        raise LabgridError(f"boards named by labgrid place need labgrid ({e}); "
                           "pip install 'qverify[labgrid]'") from None
    finally:
        sys.excepthook = hook
    client.logging = common.logging = _LabgridLog()
    return SimpleNamespace(grpc=grpc, codes=grpc.StatusCode, client=client, pb=pb, pb_grpc=pb_grpc,
                           proxymanager=proxymanager)


def _identity() -> str:
    host = os.environ.get("LG_HOSTNAME") or socket.gethostname()
    try:
        user = os.environ.get("LG_USERNAME") or getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        user = str(os.getuid())
    return f"{host}+qverify-{os.getpid()}-{secrets.token_hex(3)}/{user}"


_EXCHANGE = threading.Lock()


def _run(make: Callable[[], Awaitable[T]], timeout_s: float, coordinator: str) -> T:
    """Run one exchange with the coordinator on a private event loop in a worker thread: it
    stays clear of any loop of the caller, and a Ctrl-C or SIGTERM arriving meanwhile waits for
    it to finish, so whether the place was acquired is known before the interruption goes on."""
    box: dict[str, Any] = {}

    def work() -> None:
        loop = asyncio.SelectorEventLoop()  # labgrid's ClientSession wants a BaseEventLoop
        try:
            # One exchange at a time per process: sessions opened at once share a gRPC
            # connection, and the coordinator tells sessions apart by connection.
            with _EXCHANGE:
                box["value"] = loop.run_until_complete(asyncio.wait_for(make(), timeout_s))
        except BaseException as e:  # handed to the calling thread
            box["error"] = e
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    worker = threading.Thread(target=work, name="qverify-labgrid", daemon=True)
    worker.start()
    interrupted: BaseException | None = None
    deadline = time.monotonic() + timeout_s + 15.0  # + the session's bounded teardown
    while worker.is_alive() and time.monotonic() < deadline:
        try:
            worker.join(min(1.0, max(0.0, deadline - time.monotonic())))
        except BaseException as e:  # KeyboardInterrupt, SystemExit: finish the exchange first
            interrupted = e
    if interrupted is not None:
        raise interrupted
    error = box.get("error")
    if worker.is_alive() or isinstance(error, asyncio.TimeoutError):
        raise LabgridError(f"the labgrid coordinator at {coordinator} did not answer within "
                           f"{timeout_s:g} s; check that it is up and reachable")
    if isinstance(error, Exception) and not isinstance(error, LabgridError):
        raise LabgridError(f"talking to the labgrid coordinator at {coordinator} failed: {error!r}") from error
    if error is not None:
        raise error
    return box["value"]


async def _in_session(lg: SimpleNamespace, address: str, identity: str,
                      op: Callable[[Any], Awaitable[T]]) -> T:
    host, user = identity.rsplit("/", 1)
    session = lg.client.ClientSession(address, asyncio.get_running_loop())
    session.gethostname, session.getuser = (lambda: host), (lambda: user)
    try:
        try:
            await session.start()
        except lg.client.ServerError:
            raise LabgridError(f"cannot reach the labgrid coordinator at {address}; start "
                               "labgrid-coordinator there or set LG_COORDINATOR") from None
        return await op(session)
    finally:  # bounded: this also runs when the outer timeout cancels us
        for closing in (session.stop, session.close):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(closing(), 5.0)


def _holder(session: Any, name: str, details: str) -> str:
    place = session.places.get(name)
    if place is not None and place.acquired:
        return str(place.acquired)
    if place is not None and place.reservation:
        return f"reservation {place.reservation}"
    return f"another user ({details})"  # e.g. another place holds a resource it shares


def _target(session: Any, name: str) -> PlaceTarget:
    found = []
    for exporter, group, cls, res_name in session.places[name].acquired_resources:
        entry = session.resources.get(exporter, {}).get(group, {}).get(res_name)
        if cls == "NetworkService" and entry is not None:
            found.append((f"{exporter}/{group}/{res_name}", entry.args))
    if len(found) != 1:
        what = f"{len(found)} NetworkService resources ({', '.join(p for p, _ in found)})" if found \
            else "no NetworkService resource"
        raise LabgridError(f"labgrid place {name!r} has {what}; qverify needs exactly one to reach "
                           f"the board (is its exporter running? see `labgrid-client -p {name} show`)")
    args = found[0][1]
    port = args.get("port")
    return PlaceTarget(name, str(args["address"]), args.get("username") or None,
                       None if port is None else int(port))


async def _try_acquire(lg: SimpleNamespace, session: Any, name: str, identity: str,
                       attempt: dict[str, bool], timeout_s: float) -> PlaceTarget | str:
    """One attempt: the board, or who holds it. attempt["sent"] tells the caller whether the
    place may be ours (an AcquirePlace went out and was not refused), to release on failure."""
    place = session.places.get(name)
    if place is None:
        raise LabgridError(f"labgrid place {name!r} does not exist on the coordinator at "
                           f"{session.address}; see `labgrid-client places`")
    if place.acquired:
        return str(place.acquired)
    attempt["sent"] = True
    try:  # atomic on the coordinator: it refuses a place that is already acquired
        await session.stub.AcquirePlace(lg.pb.AcquirePlaceRequest(placename=name), timeout=timeout_s)
    except lg.grpc.aio.AioRpcError as e:
        code, details = e.code(), e.details() or ""
        attempt["sent"] = code not in (lg.codes.FAILED_PRECONDITION, lg.codes.PERMISSION_DENIED,
                                       lg.codes.INVALID_ARGUMENT)
        if attempt["sent"] or code == lg.codes.INVALID_ARGUMENT or "valid session" in details:
            raise LabgridError(f"the labgrid coordinator at {session.address} did not acquire "
                               f"place {name!r}: {details}") from None
        await session.sync_with_coordinator()
        return _holder(session, name, details)
    await session.sync_with_coordinator()
    if session.places[name].acquired != identity:
        raise LabgridError(f"labgrid place {name!r} is not shown as ours after acquiring it; "
                           "check the coordinator")
    return _target(session, name)


async def _release(lg: SimpleNamespace, address: str, name: str, identity: str, timeout_s: float) -> None:
    """Release the place if `identity` holds it (fromuser: a no-op otherwise), retrying a
    lost connection until the timeout."""
    deadline = time.monotonic() + timeout_s
    request = lg.pb.ReleasePlaceRequest(placename=name, fromuser=identity)
    async with lg.grpc.aio.insecure_channel(address) as channel:
        stub = lg.pb_grpc.CoordinatorStub(channel)
        while True:
            left = deadline - time.monotonic()
            try:
                await stub.ReleasePlace(request, timeout=max(1.0, left))
                return
            except lg.grpc.aio.AioRpcError as e:
                if e.code() == lg.codes.INVALID_ARGUMENT:  # the place was deleted meanwhile
                    return
                if e.code() not in (lg.codes.UNAVAILABLE, lg.codes.DEADLINE_EXCEEDED) or left < 2.0:
                    raise LabgridError(f"could not release labgrid place {name!r} on {address} "
                                       f"({e.details()}); run `labgrid-client -x {address} -p {name} "
                                       f"release-from {identity}`") from None
            await asyncio.sleep(1.0)


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """By default SIGTERM ends Python without running finally blocks, which would leave the
    place acquired: make it a SystemExit while a place is held (main thread only)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def on_sigterm(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def reserved_place(place: str, coordinator: str | None = None, wait_s: float = 0.0, poll_s: float = 1.0,
                   *, op_timeout_s: float = OP_TIMEOUT_S) -> Iterator[PlaceTarget]:
    """Acquire the labgrid place (waiting up to wait_s if another user holds it, polling),
    yield the board's address/user from its NetworkService resource, release on exit -- also
    on exceptions, KeyboardInterrupt and SIGTERM. Each exchange with the coordinator is bounded
    by op_timeout_s. PlaceBusy if someone else still holds the place after wait_s; LabgridError
    for the rest (coordinator unreachable, unknown place, no NetworkService, ...)."""
    lg = _labgrid()
    given = coordinator or os.environ.get("LG_COORDINATOR") or DEFAULT_COORDINATOR
    try:  # HOST[:PORT], through LG_PROXY if that is set, as labgrid-client does
        address = lg.proxymanager.get_grpc_address(given, default_port=20408)
    except Exception as e:
        raise LabgridError(f"bad labgrid coordinator address {given!r}: {e}") from None
    identity, attempt = _identity(), {"sent": False}

    def release(quiet: bool) -> None:  # quiet: an exception is already on its way out
        try:
            _run(lambda: _release(lg, address, place, identity, op_timeout_s), op_timeout_s, address)
        except LabgridError as e:
            if not quiet:
                raise
            log.warning("%s", e)

    with _sigterm_raises():
        try:
            deadline = time.monotonic() + max(0.0, wait_s)
            while True:
                got = _run(lambda: _in_session(lg, address, identity, lambda session: _try_acquire(
                    lg, session, place, identity, attempt, op_timeout_s)), op_timeout_s, address)
                if isinstance(got, PlaceTarget):
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PlaceBusy(place, got, max(0.0, wait_s))
                time.sleep(min(max(poll_s, 0.05), left))
        except BaseException:
            if attempt["sent"]:  # acquired, or the outcome of the AcquirePlace is unknown
                release(quiet=True)
            raise
        try:
            yield got
        except BaseException:
            release(quiet=True)  # the body's exception is the one to report
            raise
        release(quiet=False)
