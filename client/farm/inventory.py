"""The farm inventory (farm.toml): boards, models, and the matrix pairing them by labels.

Validated completely before anything runs, and every error is reported at once: each names
the file, the line and the key (``farm.toml:14: boards[1].agent_port: must be a port number
1..65535``), and an unknown key says which known one it probably means. Example:
``deploy/farm/inventory.example.toml``; a JSON Schema for editors: ``qverify farm schema``.

The shape, types and bounds are pydantic models (:class:`BoardEntry`, :class:`ModelEntry`,
:class:`Settings`, :class:`MatrixRule`); what pydantic cannot know (files that must exist,
host or place, names used twice) is checked after it. Host side only: the board agent never
imports this module.

Relative paths are relative to the inventory file. Secrets are never in the file: a
board names ``token_env`` or ``token_file``.
"""
from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

TABLES = ("settings", "defaults", "boards", "models", "matrix")
PATH_KEYS = ("ssh_key", "known_hosts", "token_file", "tls_ca", "tls_cert", "tls_key", "bin", "onnx", "float_model")


class InventoryError(ValueError):
    """The inventory is invalid: one line per error, each ``file:line: key: what is wrong``.

    ``where`` and ``detail`` are the first error's key and message; ``lines`` all of them."""

    def __init__(self, text: str, where: str = "", detail: str = "", lines: list[str] | None = None) -> None:
        self.lines = lines or [text]
        super().__init__("\n".join(self.lines))
        self.where, self.detail = where, detail


def _resolve_path(value: Any, info: Any) -> Any:
    """A path relative to the inventory's folder (``~`` expanded); other types are left for the type check."""
    if not isinstance(value, str):
        return value
    path = Path(os.path.expanduser(value))
    base = (info.context or {}).get("base")
    return path if path.is_absolute() or base is None else base / path


class _Table(BaseModel):
    # strict: "7060" is not a port and true is not a number; extra: a typo is an error, not a silent default.
    model_config = ConfigDict(extra="forbid", strict=True, arbitrary_types_allowed=True)

    @field_validator(*PATH_KEYS, mode="before", check_fields=False)
    @classmethod
    def _resolve(cls, value: Any, info: Any) -> Any:
        return _resolve_path(value, info)

    @field_validator("labels", mode="before", check_fields=False)
    @classmethod
    def _label_text(cls, value: Any) -> Any:
        """Label values are compared as text: ``c_align = 16`` selects like ``"16"``."""
        if isinstance(value, dict) and all(isinstance(v, (str, int, float, bool)) for v in value.values()):
            return {str(k): str(v) for k, v in value.items()}
        return value


_Labels = Field(default_factory=dict, description='a table of label = "value"')


class BoardEntry(_Table):
    name: str = Field(description="a name (string)")
    host: Optional[str] = Field(None, description="the agent's address (a string); or give place")
    place: Optional[str] = Field(None, description="a labgrid place (a string): address and user come from its "
                                                   "NetworkService")
    coordinator: Optional[str] = Field(None, description="the labgrid coordinator's address (a string)")
    agent_port: int = Field(7060, ge=1, le=65535, description="a port number 1..65535")
    ssh_user: Optional[str] = Field(None, description="a user name (a string)")
    ssh_key: Optional[Path] = Field(None, description="a file path")
    ssh_port: Optional[int] = Field(None, ge=1, le=65535, description="a port number 1..65535")
    known_hosts: Optional[Path] = Field(None, description="a file path")
    token_env: Optional[str] = Field(None, description="the name of an environment variable holding the token")
    token_file: Optional[Path] = Field(None, description="a file path (a file holding the token)")
    tls_ca: Optional[Path] = Field(None, description="a file path")
    tls_cert: Optional[Path] = Field(None, description="a file path (the client certificate, for mTLS)")
    tls_key: Optional[Path] = Field(None, description="a file path (the client certificate's key)")
    transport: Literal["sftp", "grpc"] = Field("sftp", description="sftp or grpc")
    labels: dict[str, str] = _Labels
    connect_timeout_s: float = Field(5.0, gt=0, le=3600, description="seconds, more than 0 and at most 3600")

    def token(self) -> str | None:
        if self.token_env:
            return os.environ.get(self.token_env) or None
        if self.token_file:
            return self.token_file.read_text().strip() or None
        return None


class ModelEntry(_Table):
    name: str = Field(description="a name (string)")
    bin: Path = Field(description="the compiled model.bin to run on the boards (a file path)")
    onnx: Optional[Path] = Field(None, description="a file path (the quantized ONNX model)")
    float_model: Optional[Path] = Field(None, description="a file path (the float ONNX model onnx was quantized "
                                                          "from: the golden reference; needs onnx)")
    min_float_cosine: float = Field(0.98, ge=-1, le=1, description="a number -1..1 (float vs quant.onnx outputs: "
                                                                    "below it, a quantization-loss warning)")
    inputs: list[str] = Field(default_factory=list, description="a file, a folder, or a list of them")
    seed: int = Field(0, description="an integer")
    digits: int = Field(5, ge=0, le=12, description="an integer 0..12")
    dump_all: bool = Field(False, description="true or false")
    distributions: bool = Field(False, description="true or false (with dump_all: per-layer histograms, channel "
                                                   "ranges and saturation in the job's report; host CPU per job)")
    labels: dict[str, str] = _Labels
    max_lsb: int = Field(16, ge=0, description="an integer >= 0")
    min_cosine: float = Field(0.999, ge=-1, le=1, description="a number -1..1")
    min_layer_cosine: float = Field(0.95, ge=-1, le=1, description="a number -1..1")
    perf_frames: int = Field(20, ge=0, description="an integer >= 0 (0: no latency measured)")
    ort_opt: Literal["all", "disabled"] = Field("all", description="all or disabled")
    timeout_s: Optional[float] = Field(None, gt=0, description="seconds, more than 0")

    @field_validator("inputs", mode="before")
    @classmethod
    def _inputs(cls, value: Any, info: Any) -> Any:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            return value  # the type check says what is wrong
        return [str(_resolve_path(i, info)) for i in items]

    def input_files(self) -> list[str]:
        files: list[str] = []
        for item in self.inputs:
            path = Path(item)
            files += sorted(str(p) for p in path.iterdir() if p.is_file()) if path.is_dir() else [item]
        return files


class Settings(_Table):
    jobs: int = Field(4, ge=1, le=1024, description="a whole number of boards worked on at once, 1..1024")
    timeout_s: float = Field(600.0, gt=0, description="a number of seconds per job, more than 0")
    retries: int = Field(2, ge=0, le=100, description="a whole number 0..100 (extra attempts, infrastructure "
                                                       "failures only)")
    backoff_s: float = Field(2.0, ge=0, description="a number of seconds >= 0 (first retry delay; doubles)")
    latency_regression_pct: float = Field(10.0, ge=0, description="a number >= 0 (percent)")
    place_wait_s: float = Field(300.0, ge=0, description="a number of seconds >= 0 (wait for a labgrid place)")


class MatrixRule(_Table):
    boards: dict[str, str | int | list[str | int]] = Field(default_factory=dict,
                                                           description='a table of label = "value" (or a list)')
    models: dict[str, str | int | list[str | int]] = Field(default_factory=dict,
                                                           description='a table of label = "value" (or a list)')


BOARD_KEYS = set(BoardEntry.model_fields)
MODEL_KEYS = set(ModelEntry.model_fields)
SETTINGS_KEYS = set(Settings.model_fields)
DEFAULT_KEYS = (BOARD_KEYS | MODEL_KEYS) - {"name", "host", "place", "bin", "onnx", "float_model"}
# [defaults]: any board or model key that two entries can share, all optional.
Defaults = create_model(  # type: ignore[call-overload]
    "Defaults", __config__=ConfigDict(extra="forbid"),
    **{k: (Optional[f.annotation], Field(None, description=f.description))
       for fields in (BoardEntry.model_fields, ModelEntry.model_fields) for k, f in fields.items() if k in DEFAULT_KEYS})


class InventoryFile(BaseModel):
    """The whole file, for the JSON Schema (entries are validated one by one, to locate errors)."""
    model_config = ConfigDict(extra="forbid", title="qverify farm inventory")
    settings: Settings = Field(default_factory=Settings)
    defaults: Defaults = Field(default_factory=Defaults)  # type: ignore[valid-type]
    boards: list[BoardEntry] = Field(min_length=1)
    models: list[ModelEntry] = Field(min_length=1)
    matrix: list[MatrixRule] = Field(default_factory=list)


def json_schema() -> str:
    """The inventory's JSON Schema (for editors: Taplo / Even Better TOML ``#:schema`` or settings)."""
    schema = InventoryFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return json.dumps(schema, indent=2) + "\n"


@dataclass
class Inventory:
    path: Path
    boards: list[BoardEntry]
    models: list[ModelEntry]
    matrix: list[MatrixRule]
    settings: Settings

    def pairs(self) -> list[tuple[BoardEntry, ModelEntry]]:
        """(board, model) pairs, in inventory order. Without [[matrix]] rules, a model runs on the
        boards whose ``target`` label matches its own (every board when either has none)."""
        out = []
        for board in self.boards:
            for model in self.models:
                if self.matrix:
                    hit = any(_selects(rule.boards, board.name, board.labels)
                              and _selects(rule.models, model.name, model.labels) for rule in self.matrix)
                else:
                    bt, mt = board.labels.get("target"), model.labels.get("target")
                    hit = bt is None or mt is None or bt == mt
                if hit:
                    out.append((board, model))
        return out


def _selects(selector: dict[str, Any], name: str, labels: dict[str, str]) -> bool:
    for key, value in selector.items():
        have = name if key == "name" else labels.get(key)
        wanted = value if isinstance(value, list) else [value]
        if have not in [str(w) for w in wanted]:
            return False
    return True


def load_inventory(path: Path) -> Inventory:
    """Read and validate ``path``; raises :class:`InventoryError` listing every error found."""
    path = Path(path)
    data, text = read_toml(path)
    errors = Collector(path, text)
    base = path.parent
    for key in data:
        if key not in TABLES:
            errors.unknown(key, TABLES, "table", array=key)
    settings = errors.validate(Settings, data.get("settings", {}), "settings", None, {}, base) or Settings()
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        errors.add("defaults", "must be a table", key="defaults")
        defaults = {}
    for key in defaults:
        if key not in DEFAULT_KEYS:
            errors.unknown(key, DEFAULT_KEYS, "key (or one that cannot have a default)", "defaults", None, "defaults.")
    tables = {name: errors.array(data, name) for name in ("boards", "models")}
    boards = [errors.validate(BoardEntry, t, "boards", i, defaults, base) for i, t in enumerate(tables["boards"])]
    models = [errors.validate(ModelEntry, t, "models", i, defaults, base) for i, t in enumerate(tables["models"])]
    matrix_tables = data.get("matrix", [])
    if not isinstance(matrix_tables, list):
        errors.add("matrix", "needs [[matrix]] tables", key="matrix")
        matrix_tables = []
    matrix = [errors.validate(MatrixRule, t, "matrix", i, {}, base) for i, t in enumerate(matrix_tables)]
    check_entries(errors, boards, models)
    errors.raise_if_any()
    inventory = Inventory(path, [b for b in boards if b], [m for m in models if m], [r for r in matrix if r], settings)
    if not inventory.pairs():
        raise InventoryError(f"{path}: no (board, model) pair: check the labels and the [[matrix]] rules")
    return inventory


def did_you_mean(key: str, known: Any) -> str:
    """``; did you mean X?`` for the closest known name, or ``""``."""
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


# ---------------------------------------------------------------- reading, locating, collecting errors

def read_toml(path: Path) -> tuple[dict[str, Any], str]:
    """The parsed file and its text; a file that cannot be read or parsed is one error."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InventoryError(f"{path}: cannot read the inventory ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")  # TOML is UTF-8 by definition, whatever the locale says
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise InventoryError(f"{path}:{line}: byte {exc.start} (0x{raw[exc.start]:02x}) is not UTF-8; TOML files "
                             "must be UTF-8: save the inventory as UTF-8") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        raise InventoryError(f"{path}: not valid TOML: {exc}") from None


class Collector:
    """Every error of one inventory, each with its line: tomllib gives no line numbers, so a key is
    found as the first ``key =`` line of the n-th ``[[array]]`` (or ``[table]``) it belongs to."""

    def __init__(self, path: Path, text: str) -> None:
        self.path, self.lines = path, text.splitlines()
        self.found: list[tuple[int, str, str]] = []

    def line(self, array: str | None, index: int | None = None, key: str | None = None) -> int:
        start, seen = 0, -1
        if array is not None:
            header = re.compile(rf"^\s*\[\[?\s*{re.escape(array)}\s*\]\]?\s*(#.*)?$")
            for number, text in enumerate(self.lines):
                if header.match(text):
                    seen += 1
                    if index is None or seen == index:
                        start = number
                        break
        if key is not None:
            pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
            for number in range(start, len(self.lines)):
                if number > start and self.lines[number].lstrip().startswith("["):
                    break
                if pattern.match(self.lines[number]):
                    return number + 1
        return start + 1

    def add(self, where: str, message: str, array: str | None = None, index: int | None = None,
            key: str | None = None) -> None:
        item = (self.line(array, index, key), where, message)
        if item not in self.found:  # a bad [defaults] value is inherited by every entry: say it once
            self.found.append(item)

    def unknown(self, key: str, known: Any, what: str, array: str | None = None, index: int | None = None,
                prefix: str = "") -> None:
        self.add(f"{prefix}{key}", f"unknown {what}{did_you_mean(key, known)} (known: {', '.join(sorted(known))})",
                 array if array is not None else key, index, key)

    def array(self, data: dict[str, Any], name: str) -> list[Any]:
        items = data.get(name)
        if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
            self.add(name, f"needs at least one [[{name}]] table")
            return []
        return items

    def validate(self, model: type[BaseModel], table: Any, array: str, index: int | None, defaults: dict[str, Any],
                 base: Path) -> Any:
        """``model`` from ``table`` with [defaults] filled in, or None after recording every error
        (a bad inherited value is reported in [defaults], where it can be fixed)."""
        prefix = array if index is None else f"{array}[{index}]"
        if not isinstance(table, dict):
            self.add(prefix, "must be a table", array, index)
            return None
        fields = model.model_fields
        inherited = {k: v for k, v in defaults.items() if k in fields and k in DEFAULT_KEYS and k not in table}
        try:
            return model.model_validate({**inherited, **table}, context={"base": base})
        except ValidationError as exc:
            for err in exc.errors():
                key = str(err["loc"][0]) if err["loc"] else ""
                if err["type"] == "extra_forbidden":
                    self.unknown(key, fields, "key", array, index, prefix + ".")
                    continue
                described = fields[key].description if key in fields else ""
                message = (f"missing: {described}" if err["type"] == "missing"
                           else str(err["msg"]).removeprefix("Value error, ") if err["type"] == "value_error"
                           else f"must be {described}")
                if key in inherited:
                    self.add(f"defaults.{key}", message, "defaults", None, key)
                else:
                    self.add(f"{prefix}.{key}", message, array, index, key if key in table else None)
            return None

    def raise_if_any(self) -> None:
        if self.found:
            self.found.sort(key=lambda item: item[0])
            lines = [f"{self.path}:{line}: {where}: {message}" for line, where, message in self.found]
            raise InventoryError(lines[0], self.found[0][1], self.found[0][2], lines)


def check_entries(errors: Collector, boards: list[BoardEntry | None], models: list[ModelEntry | None]) -> None:
    """What the types cannot say: files that must exist, host or place, names and addresses used twice."""
    for i, b in enumerate(boards):
        if b is None:
            continue
        if (b.host is None) == (b.place is None):
            errors.add(f"boards[{i}].host", "give exactly one of host (address) or place (labgrid place)", "boards", i,
                       "host" if b.host is not None else None)
        if b.token_file is not None and not b.token_file.is_file():
            errors.add(f"boards[{i}].token_file", f"{b.token_file} does not exist", "boards", i, "token_file")
        if bool(b.tls_cert) != bool(b.tls_key):
            key = "tls_key" if b.tls_cert else "tls_cert"
            errors.add(f"boards[{i}].{key}", "tls_cert and tls_key go together (the client certificate and its key)",
                       "boards", i, key)
    for i, m in enumerate(models):
        if m is None:
            continue
        for key in ("bin", "onnx", "float_model"):
            path = getattr(m, key)
            if path is not None and not path.is_file():
                errors.add(f"models[{i}].{key}", f"{path} does not exist", "models", i, key)
        if m.float_model is not None and m.onnx is None:
            errors.add(f"models[{i}].float_model", "a float model is compared with the quant.onnx quantized from "
                       "it: set onnx too", "models", i, "float_model")
        for item in m.inputs:
            if not Path(item).exists():
                errors.add(f"models[{i}].inputs", f"{item} does not exist", "models", i, "inputs")
    for kind, entries in (("boards", boards), ("models", models)):
        first: dict[str, int] = {}
        for i, entry in enumerate(entries):
            if entry is not None and entry.name in first:
                errors.add(f"{kind}[{i}].name", f"'{entry.name}' is used twice (first as {kind}[{first[entry.name]}])",
                           kind, i, "name")
            elif entry is not None:
                first[entry.name] = i
    _shared_addresses(errors, boards)


def _shared_addresses(errors: Collector, boards: list[BoardEntry | None]) -> None:
    """Two entries for one agent would run two jobs at once on one board and report it twice."""
    seen: dict[tuple[str, int], int] = {}
    for i, board in enumerate(boards):
        if board is None or board.host is None:  # a labgrid place: its address is known only once acquired
            continue
        key = (board.host.strip().strip("[]").lower(), board.agent_port)
        if key in seen:
            first = boards[seen[key]]
            errors.add(f"boards[{i}].host", f"{board.host}:{board.agent_port} is already board '{first.name}' "
                       f"(boards[{seen[key]}]); give each board its own host and agent_port", "boards", i, "host")
        else:
            seen[key] = i
