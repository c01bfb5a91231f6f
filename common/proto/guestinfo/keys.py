"""Guestinfo key names: config (``/``) and result (``.``) paths, map entries."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence

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


# ---------------------------------------------------------------- sealed sessions (issue 13)
TETHER = "tether"
SECRETS_VERSION = "v1"
MAX_SESSION_SECRETS = 4  # the sealed transport's bound (``secure.MAX_SECRETS``)
MIN_SECRET_LEN = 16
MAX_SECRET_LEN = 64


def session_secrets_key() -> str:
    """The per-VM session secrets: ``guestinfo.vice./tether/secrets``.

    Appliance-written, guest read-only (a ``/`` path): the guest can read it, never set
    it. The value is ``encode_session_secrets``'s: the current secret first, then the
    previous ones still accepted while a rotation settles.
    """
    return config_key(TETHER, "secrets")


def encode_session_secrets(secrets: Sequence[bytes]) -> str:
    """``v1:`` then the secrets (current first) in unpadded base64url, comma-separated."""
    _check_secrets(secrets)
    items = (base64.urlsafe_b64encode(s).rstrip(b"=").decode("ascii") for s in secrets)
    return f"{SECRETS_VERSION}:" + ",".join(items)


def decode_session_secrets(raw: str | None) -> tuple[bytes, ...]:
    """The secrets in a value, current first; ``()`` when unset. GuestinfoError if bad."""
    if raw is None or raw.strip() in ("", "<nil>"):
        return ()
    version, sep, body = raw.strip().partition(":")
    if not sep or version != SECRETS_VERSION:
        raise GuestinfoError(f"session secrets: not a {SECRETS_VERSION}: value")
    secrets: list[bytes] = []
    for item in body.split(","):
        if not _B64URL_RE.match(item):
            raise GuestinfoError("session secrets: an item is not unpadded base64url")
        try:
            secrets.append(base64.urlsafe_b64decode(item + "=" * (-len(item) % 4)))
        except (binascii.Error, ValueError) as e:
            raise GuestinfoError(f"session secrets: {e}") from None
    _check_secrets(secrets)
    return tuple(secrets)


_B64URL_RE = re.compile(r"^[A-Za-z0-9_-]{2,128}$")


def _check_secrets(secrets: Sequence[bytes]) -> None:
    if not 0 < len(secrets) <= MAX_SESSION_SECRETS:
        raise GuestinfoError(f"session secrets: 1 to {MAX_SESSION_SECRETS} secrets")
    for s in secrets:
        if not MIN_SECRET_LEN <= len(s) <= MAX_SECRET_LEN:
            raise GuestinfoError(
                f"session secrets: each {MIN_SECRET_LEN} to {MAX_SECRET_LEN} bytes, not {len(s)}"
            )
