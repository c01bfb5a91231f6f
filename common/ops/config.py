"""TOML configuration validated into frozen dataclasses.

Every daemon describes its configuration as (nested) frozen dataclasses. ``load``
reads a TOML file and builds the root dataclass, checking types field by field.
Any problem raises ``ConfigError`` naming the dotted key, which the CLI turns into
one line on stderr and exit status 2.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

T = TypeVar("T")
MAX_KEY_SHOWN = 200


class ConfigError(Exception):
    """A configuration problem; ``key`` is the dotted path of the offending key."""

    def __init__(self, key: str, message: str) -> None:
        if len(key) > MAX_KEY_SHOWN:  # a key straight from a hostile file: keep one short line
            key = f"{key[:MAX_KEY_SHOWN]}..."
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


def load(cls: type[T], path: str | Path) -> T:
    """Read ``path`` as TOML and build ``cls`` from it."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("", f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("", f"{path}: invalid TOML: {e}") from None
    return build(cls, data)


def loads(cls: type[T], text: str) -> T:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("", f"invalid TOML: {e}") from None
    return build(cls, data)


def build(cls: type[T], data: Any, key: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, validating each field."""
    if not isinstance(data, dict):
        raise ConfigError(key, "expected a table")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    toml_names = {name.replace("_", "-"): name for name in fields}
    kwargs: dict[str, Any] = {}
    for raw_name, value in data.items():
        name = raw_name if raw_name in fields else toml_names.get(raw_name)
        sub = f"{key}.{raw_name}" if key else raw_name
        if name is None:
            raise ConfigError(sub, "unknown key")
        kwargs[name] = _convert(hints[name], value, sub)
    for name, f in fields.items():
        if name in kwargs:
            continue
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}.{name}" if key else name, "required key is missing")
    try:
        obj = cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(key, str(e)) from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as e:
            full = f"{key}.{e.key}" if key and e.key else (e.key or key)
            raise ConfigError(full, e.message) from None
        except (TypeError, ValueError) as e:  # a check that choked on a hostile value
            raise ConfigError(key, " ".join(str(e).split())[:200]) from None
    return obj


def _convert(tp: Any, value: Any, key: str) -> Any:
    if tp is Any:
        return value
    origin = get_origin(tp)
    args = get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return _convert_union(args, value, key)
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise ConfigError(key, f"must be one of {allowed}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(key, "expected an array")
        inner = args[0] if args else Any
        items = [_convert(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, "expected a table")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _convert(vt, v, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return build(tp, value, key)
    scalar = _SCALARS.get(tp) if isinstance(tp, type) else None
    if scalar is None:
        raise ConfigError(key, f"unsupported config type {tp!r}")
    return scalar(value, key)


def _convert_union(args: tuple[Any, ...], value: Any, key: str) -> Any:
    non_none = [a for a in args if a is not type(None)]
    if value is None and len(non_none) < len(args):
        return None
    if len(non_none) == 1:
        return _convert(non_none[0], value, key)  # keeps the inner key in errors
    errors = []
    for a in non_none:
        try:
            return _convert(a, value, key)
        except ConfigError as e:
            errors.append(e.message)
    raise ConfigError(key, " or ".join(errors))


def _to_bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"expected true or false, got {value!r}")
    return value


def _to_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"expected an integer, got {value!r}")
    return value


def _to_float(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, f"expected a number, got {value!r}")
    return float(value)


def _to_str(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a string, got {value!r}")
    return value


def _to_path(value: Any, key: str) -> Path:
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a path string, got {value!r}")
    return Path(value)


#: How a TOML value becomes each scalar field type (TOML's own checks are not enough:
#: ``true`` is not an integer here, and an integer is a fine float).
_SCALARS: dict[type, Callable[[Any, str], Any]] = {
    bool: _to_bool,
    int: _to_int,
    float: _to_float,
    str: _to_str,
    Path: _to_path,
}


def require(cond: bool, key: str, message: str) -> None:
    """For ``validate()`` methods: raise ConfigError(key, message) unless cond."""
    if not cond:
        raise ConfigError(key, message)


def require_writable_dir(path: Path, key: str) -> None:
    """For ``validate()``: ``path`` is a directory we can write in, or can be created."""
    if path.exists():
        require(path.is_dir(), key, f"{path} exists and is not a directory")
        require(os.access(path, os.W_OK | os.X_OK), key, f"{path} is not writable")
        return
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    require(parent.is_dir(), key, f"cannot create {path}: {parent} is not a directory")
    require(
        os.access(parent, os.W_OK | os.X_OK), key, f"cannot create {path}: {parent} is not writable"
    )


@dataclasses.dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: where a daemon serves Prometheus metrics. Each daemon's own
    table subclasses this only to set its default ``port`` (0 = any free port)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 0

    def validate(self) -> None:
        require(0 <= self.port <= 65535, "port", "must be 0..65535")


# --- where a daemon finds its file and keeps its state ---------------------------------

#: Overrides ``/etc/vic`` as the directory of the default config files (tests, non-root).
CONFIG_DIR_ENV = "VIC_CONFIG_DIR"
DEFAULT_CONFIG_DIR = Path("/etc/vic")


def default_config_path(daemon: str) -> Path:
    """``/etc/vic/<daemon>.toml`` (``$VIC_CONFIG_DIR/<daemon>.toml`` when set): the
    file ``vic <daemon>`` reads when no ``--config`` is given."""
    return Path(os.environ.get(CONFIG_DIR_ENV) or DEFAULT_CONFIG_DIR) / f"{daemon}.toml"


def config_path(given: str | Path | None, daemon: str) -> Path:
    """The ``--config`` given, else the daemon's default path."""
    return Path(given) if given else default_config_path(daemon)


def _systemd_dir(var: str) -> Path | None:
    """The first of systemd's ``$RUNTIME_DIRECTORY``-style lists (colon separated)."""
    value = os.environ.get(var, "").split(":", 1)[0]
    return Path(value) if value else None


def runtime_dir() -> Path:
    """Where sockets go without a config: systemd's ``$RUNTIME_DIRECTORY``, else
    ``/run/vic`` for root, ``$XDG_RUNTIME_DIR/vic`` or ``/tmp/vic-<uid>`` otherwise."""
    found = _systemd_dir("RUNTIME_DIRECTORY")
    if found is not None:
        return found
    if os.geteuid() == 0:
        return Path("/run/vic")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return Path(xdg) / "vic" if xdg else Path(f"/tmp/vic-{os.geteuid()}")


def logs_dir() -> Path:
    """Where logs go without a config: systemd's ``$LOGS_DIRECTORY``, else
    ``/var/log/vic`` for root, ``$XDG_STATE_HOME/vic/log`` (``~/.local/state``) otherwise."""
    found = _systemd_dir("LOGS_DIRECTORY")
    if found is not None:
        return found
    if os.geteuid() == 0:
        return Path("/var/log/vic")
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "vic" / "log"


def state_dir() -> Path:
    """Where state goes without a config: systemd's ``$STATE_DIRECTORY``, else
    ``/var/lib/vic`` for root, ``$XDG_STATE_HOME/vic`` (``~/.local/state``) otherwise."""
    found = _systemd_dir("STATE_DIRECTORY")
    if found is not None:
        return found
    if os.geteuid() == 0:
        return Path("/var/lib/vic")
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "vic"
