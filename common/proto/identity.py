"""The identity grammar: which VM names, port labels and host names may name anything.

Every name that comes off the wire (an origin header's host, vm, label and
stream id; ESX's VM-VC-UUID and the DO-PROXY URI's ``port=``) is checked here
before it keys a console or names a file. Sans-IO: strings in, strings out.

* A **VM** is a VC UUID or a name. A UUID is exactly 32 hex digits once spaces and
  dashes are removed (ESX sends ``"42 3f 5a ... 1b-2c ..."``); its key is the
  lower-case hex. Anything else is a *name*, kept exactly as sent: 1..64 of
  ``[A-Za-z0-9._-]`` and space, not starting with ``.`` or ``-``. So ``ab-cd``
  and ``abcd``, or ``Web Server`` and ``web server``, are different VMs.
* A **label** (serial port): 1..32 of ``[A-Za-z0-9._-]``, not starting with ``.``.
* A **host** (relay host name) or **stream id**: 1..64 of ``[A-Za-z0-9._-]``,
  not starting with ``.`` or ``-``.

None of these can hold a ``/``, a NUL or a control character, or be ``.`` or
``..``: a key is safe to use in a file name as it is.
"""

from __future__ import annotations

import re

UUID_HEX_DIGITS = 32
MAX_NAME = 64
MAX_LABEL = 32
MAX_HOST = 64
# A raw UUID is at most this long with its spaces and dashes (ESX's form is 47).
MAX_RAW_UUID = 64

_UUID_SEPARATORS = str.maketrans("", "", " -")
_HEX = frozenset("0123456789abcdefABCDEF")
_NAME_RE = re.compile(rf"[A-Za-z0-9_ ][A-Za-z0-9._ -]{{0,{MAX_NAME - 1}}}")
_LABEL_RE = re.compile(rf"[A-Za-z0-9_-][A-Za-z0-9._-]{{0,{MAX_LABEL - 1}}}")
_HOST_RE = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9._-]{{0,{MAX_HOST - 1}}}")


class IdentityError(ValueError):
    """A name off the wire (or from a config) that may not name anything."""


def _shown(value: str) -> str:
    """A short, escaped rendering of *value* for an error message."""
    return repr(value[:40]) + (f"...(+{len(value) - 40})" if len(value) > 40 else "")


def uuid_key(raw: str) -> str | None:
    """The canonical form of a VC UUID (32 lower-case hex digits), or None if
    *raw* is not one (after removing spaces and dashes, nothing else)."""
    if len(raw) > MAX_RAW_UUID:
        return None
    s = raw.translate(_UUID_SEPARATORS)
    if len(s) != UUID_HEX_DIGITS or not _HEX.issuperset(s):
        return None
    return s.lower()


def _matching(pattern: re.Pattern[str], value: str, what: str, rule: str) -> str:
    """*value* if *pattern* matches all of it, else an IdentityError saying *rule*."""
    if not pattern.fullmatch(value):
        raise IdentityError(f"invalid {what} {_shown(value)}: {rule}")
    return value


def check_name(name: str, what: str = "VM name") -> str:
    return _matching(
        _NAME_RE,
        name,
        what,
        f"1-{MAX_NAME} of letters, digits, '.', '_', '-' and space, not starting with '.' or '-'",
    )


def vm_key(raw: str) -> str:
    """A VM's key: its canonical UUID if *raw* is a UUID, else *raw* itself as a
    valid name. Raises IdentityError for anything else."""
    key = uuid_key(raw)
    return key if key is not None else check_name(raw)


def check_label(label: str) -> str:
    return _matching(
        _LABEL_RE,
        label,
        "port label",
        f"1-{MAX_LABEL} of letters, digits, '.', '_', '-', not starting with '.'",
    )


def is_label(label: str) -> bool:
    return _LABEL_RE.fullmatch(label) is not None


def check_host(host: str, what: str = "host name") -> str:
    return _matching(
        _HOST_RE,
        host,
        what,
        f"1-{MAX_HOST} of letters, digits, '.', '_', '-', not starting with '.' or '-'",
    )


def name_from(text: str) -> str:
    """A valid VM name made from arbitrary *text* (a peer address, say): every
    character outside the name charset becomes ``-``, cut to the length cap."""
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "._") else "-" for c in text)
    return check_name(("x" + cleaned if cleaned[:1] in ("", ".", "-") else cleaned)[:MAX_NAME])


def check_origin(host: str, vm: str, label: str, stream_id: str) -> None:
    """An origin header's names (``label`` and ``stream_id`` may be empty)."""
    check_host(host)
    vm_key(vm)
    if label:
        check_label(label)
    if stream_id:
        check_host(stream_id, "stream id")
