"""Results the guest publishes (session start/exit, networks, errors) and the appliance's view."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from common.proto.guestinfo.codec import (
    NIL,
    TRUE,
    IPAddress,
    decode_ip,
    decode_ip_list,
    decode_map_keys,
    decode_str,
    encode_ip,
    encode_ip_list,
    encode_map_keys,
    encode_str,
)
from common.proto.guestinfo.errors import GuestinfoError
from common.proto.guestinfo.keys import (
    assigned_ip_key,
    assigned_ips_key,
    error_key,
    errors_index_key,
    guest_networks_key,
    signaled_key,
    started_key,
    starttime_key,
    status_key,
    stoptime_key,
)


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


MAX_ERROR_TEXT = 4096


def clip_error(text: str, limit: int = MAX_ERROR_TEXT) -> str:
    t = text.strip() or "error"
    return (
        t if len(t.encode()) <= limit else t.encode()[: limit - 3].decode("utf-8", "ignore") + "..."
    )


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
