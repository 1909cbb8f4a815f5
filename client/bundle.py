"""Reproduction bundles: everything a vendor's support engineer needs to replay a comparison.

``qverify compare A B --bundle F.tar.gz`` (and ``qverify verify --bundle F.tar.gz``, through
:func:`write_verify_bundle`) writes one ``.tar.gz``::

    qverify-bundle/
      bundle.json        # what is inside: versions, models (name, sha256, size), inputs, folders, verdict
      report.json        # the report of the run that made the bundle (compare or verify JSON)
      dumps/NAME/...     # the dump folders, as qverify run -r / qverify dump wrote them
      inputs/...         # the input files that still existed when the bundle was written
      models/...         # the model files of at most MAX_MODEL_BYTES each (larger ones: hash and size only)

Models above :data:`MAX_MODEL_BYTES` are left out (their sha256 and size are recorded, so the
vendor can check the file they are sent): the dumps alone replay the comparison, and a big
model is often the customer's to share separately. ``qverify compare F.tar.gz`` extracts the
bundle into a temporary folder, refusing any member that is not a plain file or folder inside
it (absolute paths, ``..``, links, devices), and compares the pair of dump folders the bundle
names. The bundle is written to a temporary file beside ``F.tar.gz`` and renamed into place.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator, Sequence

from qverify.client.errors import EXIT_BAD_INPUT, Failure

BUNDLE_SCHEMA = "qverify.bundle/1"
ROOT = "qverify-bundle"
MAX_MODEL_BYTES = 64 << 20  # model files up to this size travel in the bundle
Progress = Callable[[str], None]


class BundleError(Failure):
    """A bundle cannot be written or read (exit 2); the message names it and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_BAD_INPUT)


def versions() -> dict[str, str]:
    """The versions that made the bundle: qverify, onnxruntime, onnx, numpy, python, the platform."""
    import numpy

    from qverify import __version__

    found = {"qverify": __version__, "numpy": numpy.__version__, "python": platform.python_version(),
             "platform": f"{platform.system()} {platform.machine()}"}
    for module in ("onnxruntime", "onnx"):
        try:
            found[module] = __import__(module).__version__
        except ImportError:
            found[module] = "not installed"
    return found


def _model_entry(path: Path, role: str) -> dict[str, Any]:
    from qverify.client.agent_client import file_sha256

    size = path.stat().st_size
    return {"name": path.name, "role": role, "sha256": file_sha256(path), "size": size,
            "included": size <= MAX_MODEL_BYTES}


def _unique(name: str, taken: set[str]) -> str:
    from qverify.client.dumpfiles import safe_name

    base = safe_name(name) or "dump"
    candidate, k = base, 1
    while candidate in taken:
        k += 1
        candidate = f"{base}-{k}"
    taken.add(candidate)
    return candidate


def manifest_models(manifests: Sequence[dict[str, Any]]) -> tuple[list[tuple[Path, str]], list[dict[str, Any]]]:
    """The models the manifests name: (file, role) of those still on disk with the recorded sha256, and
    the others as the manifest recorded them (name, sha256, size)."""
    from qverify.client.agent_client import file_sha256

    files: list[tuple[Path, str]] = []
    recorded: list[dict[str, Any]] = []
    seen: set[str] = set()
    for m in manifests:
        sha, name = str(m.get("model_sha256", "")), str(m.get("model", ""))
        if not name or sha in seen:
            continue
        seen.add(sha)
        role = m.get("source") or ("board" if "board" in m else "onnx")
        path = Path(name)
        if path.is_file() and file_sha256(path) == sha:
            files.append((path, role))
        else:
            recorded.append({"name": path.name, "role": role, "sha256": sha, "size": m.get("model_size")})
    return files, recorded


def input_sources(manifests: Sequence[dict[str, Any]]) -> list[str]:
    """The input files the manifests name (random inputs have none), first seen first."""
    seen: dict[str, None] = {}
    for m in manifests:
        for s in m.get("input_sets", []):
            for i in s.get("inputs", []):
                source = str(i.get("source", ""))
                if source and not source.startswith("random"):
                    seen.setdefault(source, None)
    return list(seen)


def write_bundle(path: Path, folders: Sequence[tuple[str, Path]], *, compare: tuple[int, int] = (0, 1),
                 report: dict[str, Any], models: Sequence[tuple[Path, str]] = (), inputs: Sequence[str] = (),
                 kind: str = "compare", seed: int | None = None,
                 recorded_models: Sequence[dict[str, Any]] = ()) -> Path:
    """Write the bundle of dump ``folders`` ((name, folder) pairs; ``compare`` indexes the pair a replay
    compares), the ``report`` dict, ``models`` ((file, role) pairs), ``recorded_models`` (models known
    only by the hash a manifest recorded) and ``inputs`` (files; missing ones are listed, not packed).
    Atomic: a temporary file beside ``path``, renamed over it."""
    path = Path(path)
    if not path.name.endswith((".tar.gz", ".tgz")):
        raise BundleError(f"--bundle {path}: give a file name ending in .tar.gz")
    if not path.absolute().parent.is_dir():
        raise BundleError(f"--bundle {path}: folder {path.absolute().parent} does not exist")
    taken: set[str] = set()
    names = [_unique(name, taken) for name, _ in folders]
    model_entries = [_model_entry(Path(p), role) for p, role in models if Path(p).is_file()]
    extra_models = [{**m, "included": False} for m in recorded_models]
    input_entries = []
    for k, source in enumerate(inputs):
        file = Path(source)
        packed = f"inputs/{k:03d}_{file.name}" if file.is_file() else None
        input_entries.append({"source": source, "file": packed})
    meta = {
        "schema": BUNDLE_SCHEMA, "kind": kind,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(), "models": model_entries + extra_models, "inputs": input_entries, "seed": seed,
        "folders": [f"dumps/{n}" for n in names],
        "compare": [f"dumps/{names[compare[0]]}", f"dumps/{names[compare[1]]}"],
        "verdict": {"passed": report.get("passed"), "exit_code": report.get("exit_code")},
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.absolute().parent)
    os.close(fd)
    try:
        # Level 1: dumps of floats barely compress further, and level 9 takes eight times as long.
        with tarfile.open(tmp, "w:gz", compresslevel=1) as tar:
            _add_text(tar, "bundle.json", json.dumps(meta, indent=2) + "\n")
            _add_text(tar, "report.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
            for name, (_, folder) in zip(names, folders):
                tar.add(str(folder), arcname=f"{ROOT}/dumps/{name}", filter=_plain_member)
            for entry in input_entries:
                if entry["file"]:
                    tar.add(entry["source"], arcname=f"{ROOT}/{entry['file']}", filter=_plain_member)
            for (file, _), entry in zip([m for m in models if Path(m[0]).is_file()], model_entries):
                if entry["included"]:
                    tar.add(str(file), arcname=f"{ROOT}/models/{entry['name']}", filter=_plain_member)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _plain_member(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """Only files and folders travel; no owner names, no modes beyond rw."""
    if not (info.isfile() or info.isdir()):
        return None
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o755 if info.isdir() else 0o644
    return info


def _add_text(tar: tarfile.TarFile, name: str, text: str) -> None:
    import io

    data = text.encode("utf-8")
    info = tarfile.TarInfo(f"{ROOT}/{name}")
    info.size, info.mode = len(data), 0o644
    info.mtime = int(datetime.datetime.now().timestamp())
    tar.addfile(info, io.BytesIO(data))


# ---------------------------------------------------------------- replay


@dataclass
class Bundle:
    """An extracted bundle: its description and where its files are."""
    source: Path  # the .tar.gz
    root: Path  # the extracted qverify-bundle folder
    meta: dict[str, Any]
    report: dict[str, Any] | None

    @property
    def pair(self) -> tuple[Path, Path]:
        a, b = self.meta["compare"]
        return self.root / a, self.root / b

    def origin(self) -> dict[str, Any]:
        """Where a replay came from, for the terminal and the JSON report."""
        return {"file": str(self.source), "created": self.meta.get("created"), "kind": self.meta.get("kind"),
                "versions": self.meta.get("versions", {}), "models": self.meta.get("models", []),
                "recorded_verdict": self.meta.get("verdict", {})}


def check_member(member: tarfile.TarInfo, bundle: Path) -> None:
    """A member that could write outside the extraction folder (or is not a plain file/folder) is refused."""
    name = member.name
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if not parts or name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
        raise BundleError(f"{bundle}: member '{name}' would be written outside the bundle's folder; refusing the "
                          "bundle (ask for a new one made by qverify)")
    if not (member.isfile() or member.isdir()):
        raise BundleError(f"{bundle}: member '{name}' is a link or a device, not a file; refusing the bundle (ask for "
                          "a new one made by qverify)")


@contextlib.contextmanager
def open_bundle(path: Path) -> Iterator[Bundle]:
    """Extract ``path`` safely into a temporary folder for the duration of the block."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: no such bundle file")
    with tempfile.TemporaryDirectory(prefix="qverify-bundle-") as tmp:
        try:
            with tarfile.open(path, "r:*") as tar:
                members = tar.getmembers()
                for member in members:
                    check_member(member, path)
                for member in members:
                    tar.extract(member, tmp, set_attrs=False, **_data_filter())
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BundleError(f"{path}: not a readable .tar.gz bundle ({exc})") from None
        root = Path(tmp) / ROOT
        try:
            meta = json.loads((root / "bundle.json").read_text(encoding="utf-8"))
            if meta.get("schema") != BUNDLE_SCHEMA or len(meta.get("compare", [])) != 2:
                raise ValueError(f"schema {meta.get('schema')!r}")
        except (OSError, ValueError) as exc:
            raise BundleError(f"{path}: no valid {ROOT}/bundle.json ({exc}); give a bundle written by qverify "
                              "--bundle") from None
        report_path = root / "report.json"
        report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.is_file() else None
        for rel in meta["compare"]:
            check_member(tarfile.TarInfo(rel), path)
        yield Bundle(path, root, meta, report)


def _data_filter() -> dict[str, Any]:
    """tarfile's "data" filter where this Python has it (a second guard after :func:`check_member`)."""
    return {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def is_bundle(path: Path) -> bool:
    """Whether a compare argument names a bundle (a file, not a dump folder)."""
    return not Path(path).is_dir() and Path(path).name.endswith((".tar.gz", ".tgz", ".tar"))


# ---------------------------------------------------------------- verify


def write_verify_bundle(path: Path, *, models: list[Path], inputs: list[str], seed: int, board_options,
                        report: dict, progress: Progress | None = None) -> Path:
    """The reproduction bundle of a ``qverify verify`` run, for ``qverify verify --bundle F.tar.gz``.

    ``models``: the -m files (model.bin, quant.onnx, float.onnx, any order, recognised by content);
    ``inputs``/``seed``: verify's -i values and --seed; ``board_options``: a
    :class:`~qverify.client.boards.BoardOptions` (embedded board when its host is None);
    ``report``: verify's JSON report dict (``VerifyResult.to_dict()``).

    The same inputs run again: model.bin on the board with every layer dumped (``run -r``),
    quant.onnx and the float model in onnxruntime (``qverify dump``); the dump folders
    ``board``, ``quant`` and ``float`` go into the bundle with the models' hashes, the input
    files, the versions and ``report``. A replay compares board vs quant (quant vs float
    without a model.bin, board vs float without a quant.onnx). Returns ``path``."""
    from qverify.client import inputs as inputs_mod
    from qverify.client.dumpfiles import TensorFormat
    from qverify.client.modelfiles import classify
    from qverify.client.onnx_dump import dump_onnx, onnx_ports

    say = progress or (lambda message: None)
    files = classify([Path(m) for m in models])
    program = None
    if files.bin is not None:
        from qverify.simulator import load

        program = load(files.bin)
        ports = inputs_mod.ports_from_program(program)
    else:
        ports = onnx_ports(files.onnx or files.float)
    frames = inputs_mod.build_frames(ports, list(inputs), seed)
    writer = TensorFormat("npy")
    folders: list[tuple[str, Path]] = []
    with tempfile.TemporaryDirectory(prefix="qverify-bundle-") as tmp:
        if program is not None:
            say("bundle: dumping every layer of the board")
            folders.append(("board", _board_dump(Path(tmp) / "board", files.bin, program, frames, board_options,
                                                  writer, say)))
        for name, model in (("quant", files.onnx), ("float", files.float)):
            if model is not None:
                say(f"bundle: dumping every tensor of {model.name}")
                folder = Path(tmp) / name
                folder.mkdir()
                dump_onnx(model, frames, folder, writer)
                folders.append((name, folder))
        compare = (0, 1) if len(folders) > 1 else (0, 0)
        roles = [(files.bin, "model.bin"), (files.onnx, "quant.onnx"), (files.float, "float.onnx")]
        return write_bundle(path, folders, compare=compare, report=report,
                            models=[(p, role) for p, role in roles if p is not None],
                            inputs=[spec.partition(":")[2] if ":" in spec and not Path(spec).exists() else spec
                                    for spec in inputs], kind="verify", seed=seed)


def _board_dump(folder: Path, model: Path, program, frames: list, options, writer, say: Progress) -> Path:
    from qverify.client.boards import ensure_model, open_board
    from qverify.client.run_command import save_run

    folder.mkdir()
    with open_board(options, program.target.name) as client:
        push = ensure_model(client, model, options)
        save_run(client, push.sha256, model, program, frames, folder, writer, options=options, dump="all",
                 progress=say)
    return folder
