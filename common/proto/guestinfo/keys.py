"""Guestinfo key names: config (``/``) and result (``.``) paths, map entries."""

from __future__ import annotations

import re

from common.proto.guestinfo.errors import GuestinfoError, ReadOnlyKeyError

PREFIX = "guestinfo.vice."
SESSIONS = "sessions"
NETWORKS = "networks"
ERRORS = "errors"
_NAME_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.:@+-]{0,127}$")


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


def session_base(session_id: str) -> str:
    return entry(SESSIONS, session_id)


def sessions_key() -> str:
    return config_key(SESSIONS)


def common_id_key() -> str:
    return config_key("common", "id")


def goahead_key(session_id: str) -> str:
    return config_key(session_base(session_id), "goahead")


def signal_key(session_id: str) -> str:
    return config_key(session_base(session_id), "signal")


def signal_ack_key(session_id: str) -> str:
    return guest_key(session_base(session_id), "signal", "ack")


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


def guest_networks_key() -> str:
    return guest_key(NETWORKS)


def assigned_ip_key(net: str) -> str:
    return guest_key(entry(NETWORKS, net), "assigned", "IP")


def assigned_ips_key(net: str) -> str:
    return guest_key(entry(NETWORKS, net), "assigned", "IPs")


def error_key(component: str) -> str:
    return guest_key(entry(ERRORS, component))


def errors_index_key() -> str:
    return guest_key(ERRORS)
