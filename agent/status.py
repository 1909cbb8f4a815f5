"""How a BoardAgent call ends when it fails: a status code and one sentence.

Every foreseeable failure becomes a status code with a sentence (see board_agent.proto).
"""
from __future__ import annotations

import grpc

from qverify.agent import store as store_mod
from qverify.agent.backends import BackendError, ModelInvalid, ModelMismatch
from qverify.agent.backends.base import ModelInvalidInput, RunCancelled
from qverify.agent.scheduler import QueueFull, WaitAborted
from qverify.agent.tensors import TensorError
from qverify.simulator.errors import InputError


class Cancelled(Exception):
    """The client went away; stop working on its run."""


class Abort(Exception):
    """End the call with ``code`` and a sentence (mapped by the error scope)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def status_for(exc: BaseException) -> tuple[grpc.StatusCode | None, str]:
    """The status code and sentence a call ends with for ``exc``; (None, "") for a BaseException to re-raise."""
    if isinstance(exc, Abort):
        return exc.code, str(exc)
    if isinstance(exc, store_mod.InvalidModelId):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, store_mod.ModelNotFound):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, (store_mod.ModelTooLarge, store_mod.StoreFull, QueueFull)):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, store_mod.StoreError):
        return getattr(grpc.StatusCode, getattr(exc, "grpc_code", "FAILED_PRECONDITION")), str(exc)
    if isinstance(exc, ModelMismatch):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    if isinstance(exc, ModelInvalid):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, RunCancelled):
        return grpc.StatusCode.CANCELLED, str(exc)
    if isinstance(exc, (InputError, ModelInvalidInput, TensorError, ValueError)):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, WaitAborted):
        return grpc.StatusCode.DEADLINE_EXCEEDED if "deadline" in str(exc) else grpc.StatusCode.CANCELLED, str(exc)
    if isinstance(exc, Cancelled):
        return grpc.StatusCode.CANCELLED, "the client cancelled the call"
    if isinstance(exc, BackendError):
        return grpc.StatusCode.INTERNAL, str(exc)
    if isinstance(exc, Exception):
        return grpc.StatusCode.INTERNAL, f"the agent failed: {type(exc).__name__}: {exc}"
    return None, ""
