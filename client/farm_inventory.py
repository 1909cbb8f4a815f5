"""The farm inventory (farm.toml): boards, models, and the matrix pairing them by labels.

Validated completely before anything runs; every error names the file, the line and the
key (``farm.toml:14: boards[1].agent_port: must be a port number 1..65535``). Example:
``deploy/farm/inventory.example.toml``.

Relative paths are relative to the inventory file. Secrets are never in the file: a
board names ``token_env`` or ``token_file``.
"""
from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BOARD_KEYS = {"name", "host", "place", "coordinator", "agent_port", "ssh_user", "ssh_key", "ssh_port", "known_hosts",
              "token_env", "token_file", "tls_ca", "tls_cert", "tls_key", "transport", "labels", "connect_timeout_s"}
MODEL_KEYS = {"name", "onnx", "bin", "inputs", "seed", "digits", "dump_all", "labels", "max_lsb", "min_cosine",
              "min_layer_cosine", "perf_frames", "ort_opt", "timeout_s"}
SETTINGS_KEYS = {"jobs", "timeout_s", "retries", "backoff_s", "latency_regression_pct", "place_wait_s"}


class InventoryError(ValueError):
    """The inventory is invalid; the message is ``file:line: key: what is wrong``."""

    def __init__(self, text: str, where: str = "", detail: str = "") -> None:
        super().__init__(text)
        self.where, self.detail = where, detail


@dataclass
class BoardEntry:
    name: str
    host: str | None = None
    place: str | None = None  # labgrid place: address and user come from its NetworkService
    coordinator: str | None = None
    agent_port: int = 7060
    ssh_user: str | None = None
    ssh_key: Path | None = None
    ssh_port: int | None = None
    known_hosts: Path | None = None
    token_env: str | None = None
    token_file: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None  # client certificate and key for an mTLS agent
    tls_key: Path | None = None
    transport: str = "sftp"
    labels: dict[str, str] = field(default_factory=dict)
    connect_timeout_s: float = 5.0

    def token(self) -> str | None:
        if self.token_env:
            return os.environ.get(self.token_env) or None
        if self.token_file:
            return self.token_file.read_text().strip() or None
        return None


@dataclass
class ModelEntry:
    name: str
    bin: Path
    onnx: Path | None = None
    inputs: list[str] = field(default_factory=list)  # files (.npy/.npz/images/.bin) or folders of them
    seed: int = 0
    digits: int = 5
    dump_all: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    max_lsb: int = 16
    min_cosine: float = 0.999
    min_layer_cosine: float = 0.95
    perf_frames: int = 20  # board latency measured over this many frames (0: none)
    ort_opt: str = "all"
    timeout_s: float | None = None

    def input_files(self) -> list[str]:
        files: list[str] = []
        for item in self.inputs:
            path = Path(item)
            files += sorted(str(p) for p in path.iterdir() if p.is_file()) if path.is_dir() else [item]
        return files


@dataclass
class Settings:
    jobs: int = 4  # boards worked on at once (each board runs one job at a time)
    timeout_s: float = 600.0  # per job
    retries: int = 2  # extra attempts for infrastructure failures only
    backoff_s: float = 2.0  # first retry delay; doubles each time
    latency_regression_pct: float = 10.0
    place_wait_s: float = 300.0  # how long to wait for a labgrid place another user holds


@dataclass
class MatrixRule:
    boards: dict[str, str]  # label selector ("name" selects by name)
    models: dict[str, str]


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


def _selects(selector: dict[str, str], name: str, labels: dict[str, str]) -> bool:
    for key, value in selector.items():
        have = name if key == "name" else labels.get(key)
        wanted = value if isinstance(value, list) else [value]
        if have not in [str(w) for w in wanted]:
            return False
    return True


class _Locator:
    """Line numbers for keys of a TOML text (tomllib gives none): the n-th ``[[array]]`` header,
    then the first ``key =`` line in that table."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

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

    def error(self, where: str, message: str, array: str | None = None, index: int | None = None,
              key: str | None = None) -> InventoryError:
        return InventoryError(f"{self.path}:{self.line(array, index, key)}: {where}: {message}", where, message)


def load_inventory(path: Path) -> Inventory:
    path = Path(path)
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
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InventoryError(f"{path}: not valid TOML: {exc}") from None
    loc = _Locator(path, text)
    base = path.parent
    unknown = set(data) - {"defaults", "settings", "boards", "models", "matrix"}
    if unknown:
        key = sorted(unknown)[0]
        raise loc.error(key, "unknown table; known: settings, defaults, boards, models, matrix", key=key)
    settings = _settings(data.get("settings", {}), loc)
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise loc.error("defaults", "must be a table", key="defaults")
    for key in defaults:
        if key not in (BOARD_KEYS | MODEL_KEYS) - {"name", "host", "place", "bin", "onnx"}:
            raise loc.error(f"defaults.{key}", "unknown key (or one that cannot have a default)", "defaults", None, key)
    boards = [_with_defaults(_board, i, b, defaults, BOARD_KEYS, loc, base) for i, b in enumerate(_array(data, "boards", loc))]
    models = [_with_defaults(_model, i, m, defaults, MODEL_KEYS, loc, base) for i, m in enumerate(_array(data, "models", loc))]
    for kind, entries in (("boards", boards), ("models", models)):
        seen: set[str] = set()
        for i, entry in enumerate(entries):
            if entry.name in seen:
                raise loc.error(f"{kind}[{i}].name", f"'{entry.name}' is used twice", kind, i, "name")
            seen.add(entry.name)
    _refuse_shared_addresses(boards, loc)
    matrix = [_rule(i, r, loc) for i, r in enumerate(data.get("matrix", []))]
    inventory = Inventory(path, boards, models, matrix, settings)
    if not inventory.pairs():
        raise InventoryError(f"{path}: no (board, model) pair: check the labels and the [[matrix]] rules")
    return inventory


def _refuse_shared_addresses(boards: list[BoardEntry], loc: "_Locator") -> None:
    """Two entries for one agent would run two jobs at once on one board and report it twice."""
    seen: dict[tuple[str, int], int] = {}
    for i, board in enumerate(boards):
        if board.host is None:  # a labgrid place: its address is known only once acquired
            continue
        key = (board.host.strip().strip("[]").lower(), board.agent_port)
        if key in seen:
            first = boards[seen[key]]
            raise loc.error(f"boards[{i}].host", f"{board.host}:{board.agent_port} is already board "
                            f"'{first.name}' (boards[{seen[key]}]); give each board its own host and agent_port",
                            "boards", i, "host")
        seen[key] = i


def _with_defaults(parse, index: int, table: dict, defaults: dict, keys: set[str], loc: "_Locator", base: Path):
    """Parse one entry with [defaults] filled in; a bad inherited value is reported in [defaults]."""
    inherited = {k: v for k, v in defaults.items() if k in keys and k not in table}
    try:
        return parse(index, {**inherited, **table}, loc, base)
    except InventoryError as exc:
        key = exc.where.rsplit(".", 1)[-1]
        if key in inherited:
            raise loc.error(f"defaults.{key}", exc.detail, "defaults", None, key) from None
        raise


def _array(data: dict, name: str, loc: _Locator) -> list[dict]:
    items = data.get(name)
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        raise loc.error(name, f"needs at least one [[{name}]] table")
    return items


def _check(value: Any, kind: type | tuple, where: str, what: str, loc: _Locator, array: str | None, index: int | None,
           key: str) -> Any:
    if isinstance(value, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise loc.error(where, f"must be {what}", array, index, key)
    if not isinstance(value, kind):
        raise loc.error(where, f"must be {what}", array, index, key)
    return value


def _path(value: Any, base: Path) -> Path:
    path = Path(os.path.expanduser(str(value)))
    return path if path.is_absolute() else base / path


def _labels(value: Any, where: str, loc: _Locator, array: str, index: int) -> dict[str, str]:
    _check(value, dict, where, "a table of label = \"value\"", loc, array, index, "labels")
    return {str(k): str(v) for k, v in value.items()}


def _board(index: int, table: dict, loc: _Locator, base: Path) -> BoardEntry:
    def where(key: str) -> str:
        return f"boards[{index}].{key}"

    for key in table:
        if key not in BOARD_KEYS:
            raise loc.error(where(key), f"unknown key; known: {', '.join(sorted(BOARD_KEYS))}", "boards", index, key)
    name = _check(table.get("name"), str, where("name"), "a name (string)", loc, "boards", index, "name")
    entry = BoardEntry(name=name)
    if ("host" in table) == ("place" in table):
        raise loc.error(where("host"), "give exactly one of host (address) or place (labgrid place)", "boards", index,
                        "host" if "host" in table else None)
    for key in ("host", "place", "coordinator", "ssh_user", "token_env", "transport"):
        if key in table:
            setattr(entry, key, _check(table[key], str, where(key), "a string", loc, "boards", index, key))
    for key in ("agent_port", "ssh_port"):
        if key in table:
            value = _check(table[key], int, where(key), "a port number 1..65535", loc, "boards", index, key)
            if not 0 < value < 65536:
                raise loc.error(where(key), "must be a port number 1..65535", "boards", index, key)
            setattr(entry, key, value)
    for key in ("ssh_key", "token_file", "tls_ca", "tls_cert", "tls_key", "known_hosts"):
        if key in table:
            setattr(entry, key, _path(_check(table[key], str, where(key), "a file path", loc, "boards", index, key), base))
    if entry.token_file is not None and not entry.token_file.is_file():
        raise loc.error(where("token_file"), f"{entry.token_file} does not exist", "boards", index, "token_file")
    if entry.transport not in ("sftp", "grpc"):
        raise loc.error(where("transport"), "must be sftp or grpc", "boards", index, "transport")
    if bool(entry.tls_cert) != bool(entry.tls_key):
        key = "tls_key" if entry.tls_cert else "tls_cert"
        raise loc.error(where(key), "tls_cert and tls_key go together (the client certificate and its key)",
                        "boards", index, key)
    if "connect_timeout_s" in table:
        entry.connect_timeout_s = float(_check(table["connect_timeout_s"], (int, float), where("connect_timeout_s"),
                                               "seconds", loc, "boards", index, "connect_timeout_s"))
    if "labels" in table:
        entry.labels = _labels(table["labels"], where("labels"), loc, "boards", index)
    return entry


def _model(index: int, table: dict, loc: _Locator, base: Path) -> ModelEntry:
    def where(key: str) -> str:
        return f"models[{index}].{key}"

    for key in table:
        if key not in MODEL_KEYS:
            raise loc.error(where(key), f"unknown key; known: {', '.join(sorted(MODEL_KEYS))}", "models", index, key)
    name = _check(table.get("name"), str, where("name"), "a name (string)", loc, "models", index, "name")
    if "bin" not in table:
        raise loc.error(where("bin"), "missing: the compiled model.bin to run on the boards", "models", index)
    entry = ModelEntry(name=name, bin=_path(_check(table["bin"], str, where("bin"), "a file path", loc, "models",
                                                   index, "bin"), base))
    for key in ("bin", "onnx"):
        if key in table:
            path = _path(_check(table[key], str, where(key), "a file path", loc, "models", index, key), base)
            if not path.is_file():
                raise loc.error(where(key), f"{path} does not exist", "models", index, key)
            setattr(entry, key, path)
    if "inputs" in table:
        raw = table["inputs"]
        items = [raw] if isinstance(raw, str) else raw
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise loc.error(where("inputs"), "must be a file, a folder, or a list of them", "models", index, "inputs")
        entry.inputs = [str(_path(i, base)) for i in items]
        for item in entry.inputs:
            if not Path(item).exists():
                raise loc.error(where("inputs"), f"{item} does not exist", "models", index, "inputs")
    for key, kind, what in (("seed", int, "an integer"), ("digits", int, "an integer 0..12"),
                            ("max_lsb", int, "an integer"), ("perf_frames", int, "an integer >= 0"),
                            ("dump_all", bool, "true or false"), ("ort_opt", str, "all or disabled"),
                            ("min_cosine", (int, float), "a number"), ("min_layer_cosine", (int, float), "a number"),
                            ("timeout_s", (int, float), "seconds")):
        if key in table:
            setattr(entry, key, _check(table[key], kind, where(key), what, loc, "models", index, key))
    if entry.ort_opt not in ("all", "disabled"):
        raise loc.error(where("ort_opt"), "must be all or disabled", "models", index, "ort_opt")
    if not 0 <= entry.digits <= 12:
        raise loc.error(where("digits"), "must be an integer 0..12", "models", index, "digits")
    if "labels" in table:
        entry.labels = _labels(table["labels"], where("labels"), loc, "models", index)
    return entry


def _rule(index: int, table: Any, loc: _Locator) -> MatrixRule:
    where = f"matrix[{index}]"
    if not isinstance(table, dict) or set(table) - {"boards", "models"}:
        raise loc.error(where, "a rule has boards = {label = value} and models = {label = value}", "matrix", index)
    for key in ("boards", "models"):
        if not isinstance(table.get(key, {}), dict):
            raise loc.error(f"{where}.{key}", "must be a table of label = value", "matrix", index, key)
    return MatrixRule(dict(table.get("boards", {})), dict(table.get("models", {})))


def _settings(table: Any, loc: _Locator) -> Settings:
    settings = Settings()
    if not isinstance(table, dict):
        raise loc.error("settings", "must be a table", "settings")
    for key, value in table.items():
        if key not in SETTINGS_KEYS:
            raise loc.error(f"settings.{key}", f"unknown key; known: {', '.join(sorted(SETTINGS_KEYS))}",
                            "settings", None, key)
        _check(value, (int, float), f"settings.{key}", "a number", loc, "settings", None, key)
        if value < 0 or (key == "jobs" and value < 1):
            raise loc.error(f"settings.{key}", "must be positive", "settings", None, key)
        setattr(settings, key, type(getattr(settings, key))(value))
    return settings
