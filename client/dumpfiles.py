"""Tensors saved to files: safe names, npy / raw bin / txt formats, a manifest, all-or-nothing folders.

``qverify run`` saves a board's outputs (and with ``-r`` every layer) into one folder::

    OUTDIR/
      manifest.json                     # every file: tensor, producer, layout, dtype, shapes, quantization
      0000_x_QuantizeLinear_Output.valid.npy
      0008_prob_QuantizeLinear_Output.valid.npy
      0008_prob_QuantizeLinear_Output.aligned.npy

``qverify dump`` writes an ONNX model's tensors in the same layout and manifest
(:mod:`qverify.client.onnx_dump`), and ``qverify compare`` reads both
(:mod:`qverify.client.dump_compare`).

File names start with the dump's index in the run (so they sort in execution order and stay
unique whatever the tensor names are), then the tensor name with every character outside
``[A-Za-z0-9._-]`` replaced by ``_`` (and long names shortened with a hash), then the
layout. The manifest keeps the real names.

Formats: ``npy`` (numpy, default); ``bin`` (raw little-endian bytes, C order: read with
``np.fromfile(path, dtype).reshape(shape)`` using the manifest's ``dtype`` and ``shape``);
``txt`` (one value per line, or with ``txt_axis=K`` one line per index along axis K, values
separated by spaces; integers as they are, floats with ``precision`` decimals).

:class:`OutputFolder` writes into a hidden temporary folder beside the destination and
renames it into place only when every file is written, so a failure leaves nothing behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

FORMATS = ("npy", "bin", "txt")
LAYOUTS = ("valid", "aligned", "both")
MAX_NAME = 80  # characters of the sanitized tensor name kept in a file name

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class OutputFolderError(Exception):
    """The destination folder cannot be used (not empty without force, a file, ...)."""


def safe_name(name: str, limit: int = MAX_NAME) -> str:
    """A file-name fragment for any tensor name: readable, no separators, bounded length.

    ``backbone/conv1:0`` -> ``backbone_conv1_0``. Names that had to be shortened, or that
    are empty once cleaned, get a short hash of the real name so they stay distinct.
    """
    cleaned = _UNSAFE.sub("_", name).strip("._")
    if cleaned and len(cleaned) <= limit:
        return cleaned
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{cleaned[: max(1, limit - 9)]}-{digest}" if cleaned else f"tensor-{digest}"


def file_name(index: int, name: str, layout: str, fmt: str) -> str:
    return f"{index:04d}_{safe_name(name)}.{layout}.{fmt}"


@dataclass
class TensorFormat:
    """How arrays become files."""
    fmt: str = "npy"
    precision: int = 6  # txt: decimals of float values
    txt_axis: int | None = None  # txt: one line per index along this axis

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise ValueError(f"unknown format '{self.fmt}'; choose one of {', '.join(FORMATS)}")
        if self.precision < 0:
            raise ValueError("precision must be >= 0")

    def write(self, array: np.ndarray, path: Path) -> dict[str, Any]:
        """Write ``array`` to ``path``; returns what the manifest should know about the file."""
        array = np.ascontiguousarray(array)
        extra: dict[str, Any] = {}
        if self.fmt == "npy":
            with open(path, "wb") as fh:
                np.save(fh, array, allow_pickle=False)
        elif self.fmt == "bin":
            little = array.astype(array.dtype.newbyteorder("<"), copy=False)
            with open(path, "wb") as fh:
                fh.write(little.tobytes(order="C"))
            extra["byte_order"] = "little"
        else:
            axis = self._axis_for(array)
            with open(path, "w", encoding="ascii", newline="\n") as fh:
                fh.write(self.text(array, axis))
            extra["txt_axis"] = axis
            extra["lines"] = _line_count(array, axis)
            if array.dtype.kind == "f":
                extra["precision"] = self.precision
        return extra

    def _axis_for(self, array: np.ndarray) -> int | None:
        """The axis lines run along, or None (one value per line) when the tensor has no such axis."""
        if self.txt_axis is None or array.ndim == 0:
            return None
        axis = self.txt_axis + array.ndim if self.txt_axis < 0 else self.txt_axis
        return axis if 0 <= axis < array.ndim else None

    def text(self, array: np.ndarray, axis: int | None) -> str:
        fmt = f"%.{self.precision}f" if array.dtype.kind == "f" else "%d"
        if array.dtype.kind == "b":
            array = array.astype(np.uint8)
        if axis is None:
            rows = array.reshape(-1, 1)
        else:
            rows = np.moveaxis(array, axis, 0).reshape(array.shape[axis], -1)
        if rows.shape[0] == 0:
            return ""
        lines = [" ".join(fmt % v for v in row.tolist()) for row in rows]
        return "\n".join(lines) + "\n"


def _line_count(array: np.ndarray, axis: int | None) -> int:
    return int(array.size) if axis is None else int(array.shape[axis])


class OutputFolder:
    """A folder that appears complete or not at all.

        with OutputFolder(Path("out"), force=False) as folder:
            folder.path / "a.npy" ...          # a hidden temporary folder beside "out"
        # on success "out" holds exactly what was written; on an exception nothing changed

    An existing non-empty destination is refused unless ``force`` (then it is replaced as a
    whole, after the new content is complete). :meth:`check` refuses early, before work.
    """

    def __init__(self, destination: Path, force: bool = False) -> None:
        self.destination = Path(destination)
        self.force = force
        self.path: Path | None = None
        self._created_parents: list[Path] = []

    def check(self) -> None:
        dest = self.destination
        if dest.exists() or dest.is_symlink():
            if not dest.is_dir():
                raise OutputFolderError(f"-o {dest}: exists and is not a folder; give a folder name")
            if not self.force and any(dest.iterdir()):
                raise OutputFolderError(f"-o {dest}: folder is not empty; give another folder or add --force "
                                        "to replace its content")

    def __enter__(self) -> "OutputFolder":
        self.check()
        parent = self.destination.absolute().parent
        missing = []
        probe = parent
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        parent.mkdir(parents=True, exist_ok=True)
        self._created_parents = missing  # deepest first
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.destination.name}.", suffix=".tmp", dir=parent))
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if kind is not None:
            self._discard()
            return
        try:
            self._commit()
        except BaseException:
            self._discard()
            raise

    def _commit(self) -> None:
        self.check()  # the destination may have changed while we worked
        dest = self.destination
        old = None
        if dest.is_dir() and not dest.is_symlink():
            if any(dest.iterdir()):
                old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=self.path.parent))
                os.rmdir(old)
                os.rename(dest, old)
            else:
                os.rmdir(dest)
        elif dest.is_symlink():
            dest.unlink()  # a symlink to an empty folder: replaced by the real folder
        try:
            os.rename(self.path, dest)
        except BaseException:
            if old is not None:
                os.rename(old, dest)
            raise
        self.path = dest
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def _discard(self) -> None:
        if self.path is not None and self.path != self.destination:
            shutil.rmtree(self.path, ignore_errors=True)
        for folder in self._created_parents:  # deepest first; only the ones this run made
            try:
                folder.rmdir()
            except OSError:
                break


def write_text_atomic(path: Path, text: str | Callable[[], str]) -> None:
    """Write ``text`` (or what ``text()`` renders) to ``path`` as UTF-8 through a temporary file
    beside it, renamed over it: a reader never sees half a file. On failure the temporary
    file is removed, the target is left as it was and the error is raised. A new file gets
    mode 0644 (mkstemp makes 0600, and reports are not secrets); an existing one keeps its mode.

    Every report, manifest and figures file of the host goes through here."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.absolute().parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text() if callable(text) else text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_json_atomic(data: Any, path: Path) -> None:
    """``data`` as indented JSON, written atomically (:func:`write_text_atomic`)."""
    write_text_atomic(path, lambda: json.dumps(data, indent=2) + "\n")


# The run manifest's format (docs/report-schema.md, "Run manifest"): the first key of manifest.json.
RUN_MANIFEST_SCHEMA = "qverify.run/1"


def write_manifest(manifest: dict[str, Any], path: Path) -> None:
    """``manifest.json`` of a ``qverify run`` folder, with its ``schema`` key first."""
    write_json_atomic({"schema": RUN_MANIFEST_SCHEMA, **{k: v for k, v in manifest.items() if k != "schema"}}, path)
