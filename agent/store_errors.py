"""The model store's errors, and the model id rule every store call checks first.

Errors are ``StoreError`` subclasses whose ``grpc_code`` names the ``grpc.StatusCode`` the
server answers with, and whose message is one sentence a user can act on.

Models are named by the sha256 of the whole model.bin, so a name can never be a path:
every public store call validates the id (64 lowercase hex characters) before it touches
the file system.
"""
from __future__ import annotations

import re

_ID_RE = re.compile(r"[0-9a-f]{64}")


class StoreError(Exception):
    """A foreseeable model-store failure; ``grpc_code`` is the grpc.StatusCode name to answer with."""

    grpc_code = "INTERNAL"

    def __init__(self, message: str, sha256: str | None = None) -> None:
        super().__init__(message)
        self.sha256 = sha256


class InvalidModelId(StoreError):
    """The id is not 64 lowercase hex characters (so it can never name a path)."""

    grpc_code = "INVALID_ARGUMENT"


class ModelNotFound(StoreError):
    """The model is not in the store (never pushed, evicted, deleted, or found corrupt)."""

    grpc_code = "NOT_FOUND"


class ModelTooLarge(StoreError):
    """The model is larger than the board's per-model limit or than the whole store."""

    grpc_code = "RESOURCE_EXHAUSTED"


class StoreFull(StoreError):
    """No room: the disk is full, or every model that could be evicted is in use."""

    grpc_code = "RESOURCE_EXHAUSTED"


class HashMismatch(StoreError):
    """The pushed bytes do not hash to the sha256 they were pushed as."""

    grpc_code = "DATA_LOSS"


class TransferIncomplete(StoreError):
    """The push ended before the declared number of bytes arrived."""

    grpc_code = "DATA_LOSS"


class TransferSizeError(StoreError):
    """The declared size is invalid (negative), or more data came than was declared."""

    grpc_code = "INVALID_ARGUMENT"


class NotAModel(StoreError):
    """The pushed bytes are not a model container (magic, version, length, payload hash)."""

    grpc_code = "INVALID_ARGUMENT"


def short(sha: str) -> str:
    """The first 12 hex digits and an ellipsis: enough to recognize a model in a message."""
    return sha[:12] + "…"


def validate_id(sha: object) -> str:
    """Return ``sha`` if it is a model id (64 lowercase hex characters), else raise InvalidModelId.

    Checked before any file-system access, so no id can reach outside the store
    (no '/', no '..', no other file names).
    """
    if isinstance(sha, str) and _ID_RE.fullmatch(sha):
        return sha
    shown = repr(sha) if not isinstance(sha, str) or len(sha) <= 80 else repr(sha[:77] + "...")
    detail = ""
    if isinstance(sha, str):
        if len(sha) != 64:
            detail = f" ({len(sha)} characters)"
        elif sha.lower() != sha and _ID_RE.fullmatch(sha.lower()):
            detail = " (uppercase; use lowercase hex)"
    raise InvalidModelId(f"model id {shown}{detail} is not a sha256: pass the 64 lowercase hex characters "
                         "of the sha256 of the whole model.bin (e.g. the output of 'sha256sum model.bin')")
