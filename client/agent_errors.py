"""The exceptions a call to ``qverify-agent`` raises: gRPC status codes mapped back to classes.

They live apart from :mod:`qverify.client.agent_client` so that the Run stream reader
(:mod:`qverify.client.run_stream`) raises the same classes without importing the client.
"""
from __future__ import annotations

import grpc

__all__ = ["AgentError", "BoardUnreachable", "AuthenticationError", "ProtocolMismatch", "ModelMissing", "BoardBusy",
           "BadRequest", "ProtocolViolation", "map_error"]


class AgentError(Exception):
    """A call to the agent failed; ``code`` is the gRPC status code."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.received: list[str] = []  # Run: tensors fully received before the failure
        self.outputs_received: list[str] = []


class BoardUnreachable(AgentError):
    """The board does not answer (down, wrong address or port, network): exit code 3."""


class AuthenticationError(AgentError):
    """The agent refused the token or certificate."""


class ProtocolMismatch(AgentError):
    """The agent speaks an incompatible protocol version."""


class ModelMissing(AgentError):
    """The model is not in the board's store."""


class BoardBusy(AgentError):
    """The board's run queue is full; retry later."""


class BadRequest(AgentError):
    """The agent refused the request as malformed (inputs, options); the message says why."""


class ProtocolViolation(AgentError):
    """The board's reply broke the wire protocol (sizes, offsets, order): an infrastructure failure, exit 3."""


_EXCEPTIONS = {
    grpc.StatusCode.UNAVAILABLE: BoardUnreachable,
    grpc.StatusCode.DEADLINE_EXCEEDED: BoardUnreachable,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: AuthenticationError,
    grpc.StatusCode.NOT_FOUND: ModelMissing,
    grpc.StatusCode.RESOURCE_EXHAUSTED: BoardBusy,
    grpc.StatusCode.INVALID_ARGUMENT: BadRequest,
    grpc.StatusCode.FAILED_PRECONDITION: BadRequest,
}


def map_error(error: grpc.RpcError, address: str) -> AgentError:
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    cls = _EXCEPTIONS.get(code, AgentError)
    if cls is BoardUnreachable:
        details = f"board {address} unreachable ({code.name.lower() if code else 'error'}): {details}"
    return cls(details, code)
