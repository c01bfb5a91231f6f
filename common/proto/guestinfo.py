"""VIC's guestinfo key scheme, sans-IO: keys, value encoding, session config, results.

Layout (compatible with VIC's extraconfig encoding):

* every key starts with ``guestinfo.vice.``;
* after the prefix, ``/``-separated paths are *config*, written by the appliance
  and read-only for the guest (``guestinfo.vice./sessions|<id>/cmd/Path``);
  ``.``-separated paths are *results*, written by the guest
  (``guestinfo.vice..sessions|<id>.started``). The guest never writes a key
  containing ``/``;
* a map is its key list at the bare key (``guestinfo.vice./sessions`` =
  ``"a|b"``) plus one subtree per entry (``sessions|a``);
* an array ``X`` stores its last index at ``X`` (``-1`` when empty) and its
  items at ``X~`` joined by ``|``; an item's ``%`` and ``|`` are written
  ``%25`` and ``%7C``;
* an empty string is stored as ``<nil>`` (vSphere deletes a key set to ``""``);
  an absent or empty value means "not set";
* IP addresses are base64 of the address bytes (4 or 16).

Limits in the field: about 64 KiB per value and 1 MiB of guestinfo per VM.
``SizeLedger`` checks a write against both *before* it is made.

Control from the appliance to the guest (our extension, config keys):
``/sessions|<id>/goahead`` = ``true`` releases a session that has
``/sessions|<id>/runblock`` = ``true``; ``/sessions|<id>/signal`` =
``"<seq> <SIGNAME or number>"`` asks for a signal, acknowledged by the guest at
``..sessions|<id>.signal.ack`` = ``<seq>``.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

PREFIX = "guestinfo.vice."
NIL = "<nil>"
TRUE = "true"
MAX_VALUE_BYTES = 64 * 1024
MAX_TOTAL_BYTES = 1024 * 1024

_SEQ_RE = re.compile(r"[0-9]{1,18}")
_NAME_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.:@+-]{0,127}$")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class GuestinfoError(Exception):
    """Base class for guestinfo problems."""


class GuestinfoLimitError(GuestinfoError):
    """A write would exceed the per-value or per-VM size limit."""


class ReadOnlyKeyError(GuestinfoError):
    """The guest tried to write a key it may only read."""


class SessionConfigError(GuestinfoError):
    """The session config the appliance wrote is unusable; str() is the user-facing text."""


# --------------------------------------------------------------------------- keys


def check_name(name: str, what: str = "name") -> str:
    """A map key (session id, network name, component) safe in both key styles."""
    if not _NAME_RE.match(name) or ".." in name:
        raise GuestinfoError(f"invalid {what} {name!r}: use letters, digits and _-.:@+")
    if "/" in name or "|" in name or "~" in name:  # pragma: no cover - excluded by the regex
        raise GuestinfoError(f"invalid {what} {name!r}")
    return name


def entry(name: str, mapkey: str) -> str:
    """Map entry path element: ``name|mapkey``."""
    return f"{name}|{check_name(mapkey, name + ' key')}"


def config_key(*path: str) -> str:
    """Appliance-written (guest read-only) key: ``guestinfo.vice./a/b``."""
    return PREFIX + "/" + "/".join(path)


def guest_key(*path: str) -> str:
    """Guest-written key: ``guestinfo.vice..a.b``."""
    return PREFIX + "." + ".".join(path)


def is_vice_key(key: str) -> bool:
    return key.startswith(PREFIX)


def is_guest_writable(key: str) -> bool:
    """Only ``.``-style keys under the prefix, never one containing ``/``."""
    return key.startswith(PREFIX + ".") and "/" not in key and len(key) > len(PREFIX) + 1


def require_guest_writable(key: str) -> None:
    if not is_guest_writable(key):
        raise ReadOnlyKeyError(
            f"guest may not write {key!r}: only guestinfo.vice.. keys without '/'"
        )


# --------------------------------------------------------------------------- values


def encode_str(value: str) -> str:
    return NIL if value == "" else value


def decode_str(raw: str | None) -> str | None:
    """``None`` when not set (absent, empty or ``<nil>``), else the string."""
    if raw is None or raw == "" or raw == NIL:
        return None
    return raw


def is_set(raw: str | None) -> bool:
    return decode_str(raw) is not None


def encode_bool(value: bool) -> str:
    return TRUE if value else "false"


def decode_bool(raw: str | None, default: bool = False) -> bool:
    v = decode_str(raw)
    if v is None:
        return default
    low = v.strip().lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise GuestinfoError(f"not a boolean: {v!r}")


def _escape_item(item: str) -> str:
    return item.replace("%", "%25").replace("|", "%7C")


def _unescape_item(item: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(item):
        c = item[i]
        if c == "%" and item[i + 1 : i + 3].upper() in ("25", "7C"):
            out.append("%" if item[i + 1 : i + 3] == "25" else "|")
            i += 3
        else:
            out.append(c)
            i += 1
    return "".join(out)


def encode_array(key: str, items: Iterable[str]) -> dict[str, str]:
    """``{key: last index, key~: items}``; no ``key~`` when empty."""
    lst = list(items)
    out = {key: str(len(lst) - 1)}
    if lst:
        out[key + "~"] = encode_str("|".join(_escape_item(i) for i in lst))
    return out


def decode_array(index_raw: str | None, items_raw: str | None) -> list[str]:
    """Inverse of encode_array. A missing index falls back to counting items."""
    items_s = items_raw if items_raw not in (None, NIL) else ""
    assert items_s is not None
    parts = [_unescape_item(p) for p in items_s.split("|")] if items_s != "" else []
    idx = decode_str(index_raw)
    if idx is None:
        return parts
    try:
        n = int(idx) + 1
    except ValueError:
        raise GuestinfoError(f"array length is not a number: {idx!r}") from None
    if n <= 0:
        return []
    if n == 1 and not parts:
        return [""]
    if n != len(parts):
        raise GuestinfoError(f"array says {n} items but holds {len(parts)}")
    return parts


def encode_map_keys(keys: Iterable[str]) -> str:
    return encode_str("|".join(sorted(check_name(k) for k in keys)))


def decode_map_keys(raw: str | None) -> list[str]:
    v = decode_str(raw)
    if v is None:
        return []
    return [k for k in v.split("|") if k]


def encode_ip(addr: IPAddress | str) -> str:
    return base64.b64encode(ipaddress.ip_address(addr).packed).decode("ascii")


def decode_ip(raw: str | None) -> IPAddress | None:
    v = decode_str(raw)
    if v is None:
        return None
    try:
        b = base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raise GuestinfoError(f"not base64: {v!r}") from None
    if len(b) == 4:
        return ipaddress.IPv4Address(b)
    if len(b) == 16:
        a6 = ipaddress.IPv6Address(b)
        return a6.ipv4_mapped or a6
    raise GuestinfoError(f"address of {len(b)} bytes")


def encode_ip_list(key: str, addrs: Iterable[IPAddress | str]) -> dict[str, str]:
    return encode_array(key, [encode_ip(a) for a in addrs])


def decode_ip_list(index_raw: str | None, items_raw: str | None) -> list[IPAddress]:
    out: list[IPAddress] = []
    for item in decode_array(index_raw, items_raw):
        a = decode_ip(item)
        if a is not None:
            out.append(a)
    return out


# --------------------------------------------------------------------------- limits


def entry_size(key: str, value: str) -> int:
    return len(key.encode()) + len(value.encode())


def check_value(key: str, value: str, max_value: int = MAX_VALUE_BYTES) -> None:
    n = len(value.encode())
    if n > max_value:
        raise GuestinfoLimitError(
            f"guestinfo value for {key} is {n} bytes; the limit is {max_value} bytes per value"
        )


@dataclass
class SizeLedger:
    """Tracks the size of a VM's guestinfo and refuses writes that would exceed the limits.

    Seed it with what is known (values read or written); ``check`` before every
    write, ``record`` after it succeeded.
    """

    max_value: int = MAX_VALUE_BYTES
    max_total: int = MAX_TOTAL_BYTES
    sizes: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.sizes.values())

    def seed(self, values: Mapping[str, str | None]) -> None:
        for k, v in values.items():
            if v is None or v == "":
                self.sizes.pop(k, None)
            else:
                self.sizes[k] = entry_size(k, v)

    def check(self, updates: Mapping[str, str]) -> None:
        total = self.total
        for k, v in updates.items():
            check_value(k, v, self.max_value)
            total += entry_size(k, v) - self.sizes.get(k, 0)
        if total > self.max_total:
            raise GuestinfoLimitError(
                f"guestinfo would grow to {total} bytes writing {', '.join(sorted(updates))}; "
                f"the limit is {self.max_total} bytes per VM"
            )

    def record(self, updates: Mapping[str, str]) -> None:
        self.seed(dict(updates))


# --------------------------------------------------------------------------- session config


SESSIONS = "sessions"
NETWORKS = "networks"
ERRORS = "errors"


@dataclass(frozen=True)
class SessionConfig:
    """What the appliance asks the guest to run (config keys under ``/sessions|<id>``)."""

    id: str
    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    dir: str = ""
    tty: bool = False
    attach: bool = False
    openstdin: bool = False
    runblock: bool = False
    stopsignal: str = ""


def session_base(session_id: str) -> str:
    return entry(SESSIONS, session_id)


def sessions_key() -> str:
    return config_key(SESSIONS)


def common_id_key() -> str:
    return config_key("common", "id")


def session_keys(session_id: str) -> list[str]:
    """Every config key ``decode_session`` reads, for backends that can only get by key."""
    b = session_base(session_id)
    return [
        config_key(b, "common", "id"),
        config_key(b, "cmd", "Path"),
        config_key(b, "cmd", "Args"),
        config_key(b, "cmd", "Args~"),
        config_key(b, "cmd", "Env"),
        config_key(b, "cmd", "Env~"),
        config_key(b, "cmd", "Dir"),
        config_key(b, "tty"),
        config_key(b, "attach"),
        config_key(b, "openstdin"),
        config_key(b, "runblock"),
        config_key(b, "stopsignal"),
    ]


def encode_session(cfg: SessionConfig) -> dict[str, str]:
    """Config keys for one session (the appliance side writes these)."""
    b = session_base(cfg.id)
    out = {
        config_key(b, "common", "id"): cfg.id,
        config_key(b, "cmd", "Path"): encode_str(cfg.path),
        config_key(b, "cmd", "Dir"): encode_str(cfg.dir),
        config_key(b, "tty"): encode_bool(cfg.tty),
        config_key(b, "attach"): encode_bool(cfg.attach),
        config_key(b, "openstdin"): encode_bool(cfg.openstdin),
        config_key(b, "runblock"): encode_bool(cfg.runblock),
        config_key(b, "stopsignal"): encode_str(cfg.stopsignal),
    }
    out.update(encode_array(config_key(b, "cmd", "Args"), cfg.args))
    out.update(encode_array(config_key(b, "cmd", "Env"), cfg.env))
    return out


def encode_sessions(cfgs: Iterable[SessionConfig], container_id: str = "") -> dict[str, str]:
    lst = list(cfgs)
    out = {sessions_key(): encode_map_keys(c.id for c in lst)}
    if container_id:
        out[common_id_key()] = container_id
    for c in lst:
        out.update(encode_session(c))
    return out


def decode_session(session_id: str, values: Mapping[str, str | None]) -> SessionConfig:
    """Build a SessionConfig from the values of ``session_keys(session_id)``.

    Raises SessionConfigError whose text is what the user should see.
    """
    b = session_base(session_id)

    def get(*p: str) -> str | None:
        return values.get(config_key(b, *p))

    path = decode_str(get("cmd", "Path"))
    if path is None:
        raise SessionConfigError(f"session {session_id}: no command configured (cmd/Path is unset)")
    try:
        args = decode_array(get("cmd", "Args"), get("cmd", "Args~"))
        env = decode_array(get("cmd", "Env"), get("cmd", "Env~"))
        flags = {
            name: decode_bool(get(name)) for name in ("tty", "attach", "openstdin", "runblock")
        }
    except GuestinfoError as e:
        raise SessionConfigError(f"session {session_id}: bad config: {e}") from None
    for item in env:
        if "=" not in item:
            raise SessionConfigError(f"session {session_id}: bad environment entry {item!r}")
    if not args:
        args = [path]
    return SessionConfig(
        id=session_id,
        path=path,
        args=tuple(args),
        env=tuple(env),
        dir=decode_str(get("cmd", "Dir")) or "",
        tty=flags["tty"],
        attach=flags["attach"],
        openstdin=flags["openstdin"],
        runblock=flags["runblock"],
        stopsignal=decode_str(get("stopsignal")) or "",
    )


# --------------------------------------------------------------------------- control keys


def goahead_key(session_id: str) -> str:
    return config_key(session_base(session_id), "goahead")


def signal_key(session_id: str) -> str:
    return config_key(session_base(session_id), "signal")


def signal_ack_key(session_id: str) -> str:
    return guest_key(session_base(session_id), "signal", "ack")


def encode_signal_request(seq: int, signame: str) -> str:
    return f"{seq} {signame}"


def decode_signal_request(raw: str | None) -> tuple[int, str] | None:
    v = decode_str(raw)
    if v is None:
        return None
    parts = v.split()
    seq = parse_seq(parts[0]) if len(parts) == 2 else None
    if seq is None:
        raise GuestinfoError(f"bad signal request {v!r}: want '<seq> <signal>'")
    return seq, parts[1]


def parse_seq(raw: str | None) -> int | None:
    """A sequence number: ASCII digits only (``str.isdigit`` accepts '²')."""
    v = decode_str(raw)
    if v is None or not _SEQ_RE.fullmatch(v):
        return None
    return int(v)


# --------------------------------------------------------------------------- results


def started_key(session_id: str) -> str:
    return guest_key(session_base(session_id), "started")


def status_key(session_id: str) -> str:
    return guest_key(session_base(session_id), "status")


def starttime_key(session_id: str) -> str:
    return guest_key(session_base(session_id), "detail", "starttime")


def stoptime_key(session_id: str) -> str:
    return guest_key(session_base(session_id), "detail", "stoptime")


def signaled_key(session_id: str) -> str:
    return guest_key(session_base(session_id), "detail", "signal")


def encode_started(
    session_id: str, ok: bool, error: str = "", starttime: int | None = None
) -> dict[str, str]:
    """``started`` = ``true`` or the launch error text (never empty)."""
    out: dict[str, str] = {}
    if starttime is not None:
        out[starttime_key(session_id)] = str(starttime)
    out[started_key(session_id)] = TRUE if ok else (error.strip() or "launch failed")
    return out


def encode_exit(
    session_id: str, status: int, stoptime: int, signal_name: str = ""
) -> dict[str, str]:
    """Stop time (and signal) first, status last: a watcher keyed on status sees them all.

    ``status`` is the exit code, or 128+N for death by signal N.
    """
    out = {stoptime_key(session_id): str(stoptime)}
    out[signaled_key(session_id)] = encode_str(signal_name)
    out[status_key(session_id)] = str(status)
    return out


def guest_networks_key() -> str:
    return guest_key(NETWORKS)


def assigned_ip_key(net: str) -> str:
    return guest_key(entry(NETWORKS, net), "assigned", "IP")


def assigned_ips_key(net: str) -> str:
    return guest_key(entry(NETWORKS, net), "assigned", "IPs")


def _sort_addrs(addrs: Iterable[IPAddress]) -> list[IPAddress]:
    return sorted(addrs, key=lambda a: (a.version, a.packed))


def encode_networks(
    current: Mapping[str, Iterable[IPAddress]],
    previous: Mapping[str, Iterable[IPAddress]] | None = None,
) -> dict[str, str]:
    """Keys to write so the published view equals ``current``.

    Per interface: ``assigned.IP`` is the first IPv4 address (else the first
    IPv6), ``assigned.IPs`` / ``IPs~`` all of them. Interfaces that vanished
    since ``previous`` are written as unset (``<nil>``).
    """
    out: dict[str, str] = {}
    names = set(current) | set(previous or {})
    for net in sorted(names):
        addrs = _sort_addrs(current.get(net, ()))
        out[assigned_ip_key(net)] = encode_ip(addrs[0]) if addrs else NIL
        out.update(encode_ip_list(assigned_ips_key(net), addrs))
        if not addrs:
            out[assigned_ips_key(net) + "~"] = NIL
    out[guest_networks_key()] = encode_map_keys(n for n in current if list(current[n]))
    return out


def error_key(component: str) -> str:
    return guest_key(entry(ERRORS, component))


def errors_index_key() -> str:
    return guest_key(ERRORS)


MAX_ERROR_TEXT = 4096


def clip_error(text: str, limit: int = MAX_ERROR_TEXT) -> str:
    t = text.strip() or "error"
    return (
        t if len(t.encode()) <= limit else t.encode()[: limit - 3].decode("utf-8", "ignore") + "..."
    )


# --------------------------------------------------------------------------- appliance view


@dataclass(frozen=True)
class ExitInfo:
    status: int
    stoptime: int | None
    signal: str | None


@dataclass(frozen=True)
class SessionView:
    """What the appliance knows about one session from the published values."""

    started: str | None  # None = not yet; "true" = running; other text = launch error
    starttime: int | None
    exit: ExitInfo | None

    @property
    def start_error(self) -> str | None:
        if self.started is None or self.started == TRUE:
            return None
        return self.started


def _int_or_none(raw: str | None) -> int | None:
    v = decode_str(raw)
    if v is None:
        return None
    try:
        return int(v)
    except ValueError:
        return None


def view_session(session_id: str, values: Mapping[str, str]) -> SessionView:
    status = _int_or_none(values.get(status_key(session_id)))
    exit_info = None
    if status is not None:
        exit_info = ExitInfo(
            status=status,
            stoptime=_int_or_none(values.get(stoptime_key(session_id))),
            signal=decode_str(values.get(signaled_key(session_id))),
        )
    return SessionView(
        started=decode_str(values.get(started_key(session_id))),
        starttime=_int_or_none(values.get(starttime_key(session_id))),
        exit=exit_info,
    )


def view_networks(values: Mapping[str, str]) -> dict[str, list[IPAddress]]:
    out: dict[str, list[IPAddress]] = {}
    for net in decode_map_keys(values.get(guest_networks_key())):
        try:
            addrs = decode_ip_list(
                values.get(assigned_ips_key(net)), values.get(assigned_ips_key(net) + "~")
            )
            if not addrs:
                one = decode_ip(values.get(assigned_ip_key(net)))
                addrs = [one] if one is not None else []
        except GuestinfoError:
            continue
        if addrs:
            out[net] = addrs
    return out


def view_errors(values: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for comp in decode_map_keys(values.get(errors_index_key())):
        try:
            v = decode_str(values.get(error_key(comp)))
        except GuestinfoError:
            continue
        if v is not None:
            out[comp] = v
    return out
