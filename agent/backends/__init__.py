"""Backends: ``sim`` is built in; vendor runtimes register under the entry-point group
``qverify.backends`` (``name = "package.module:BackendClass"``)."""
from __future__ import annotations

from importlib.metadata import entry_points

from qverify.agent.backends.base import (
    Backend,
    BackendError,
    BackendInfo,
    LoadedModel,
    ModelInvalid,
    ModelMismatch,
)

ENTRY_POINT_GROUP = "qverify.backends"


def available() -> list[str]:
    return sorted({"sim", *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})


def backend_class(name: str) -> type[Backend]:
    if name == "sim":
        from qverify.agent.backends.sim import SimBackend

        return SimBackend
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return ep.load()
    raise BackendError(f"unknown backend '{name}'; available: {', '.join(available())}")


__all__ = ["Backend", "BackendError", "BackendInfo", "LoadedModel", "ModelInvalid", "ModelMismatch", "available",
           "backend_class"]
