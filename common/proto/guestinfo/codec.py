"""Guestinfo value encoding: strings, booleans, arrays, map key lists, IP addresses."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Iterable

from common.proto.guestinfo.errors import GuestinfoError
from common.proto.guestinfo.keys import check_name

NIL = "<nil>"
TRUE = "true"
_SEQ_RE = re.compile(r"[0-9]{1,18}")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


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


def parse_seq(raw: str | None) -> int | None:
    """A sequence number: ASCII digits only (``str.isdigit`` accepts '²')."""
    v = decode_str(raw)
    if v is None or not _SEQ_RE.fullmatch(v):
        return None
    return int(v)
