"""Names from configuration that end up naming things (log files, metrics, headers).

A VM is a VC UUID (32 hex digits once spaces and dashes are removed) or a name of
1..64 characters from ``[A-Za-z0-9._-]`` and space, not starting with ``.`` or
``-``; a port label is 1..32 characters from ``[A-Za-z0-9._-]``, not starting with
``.``; a host name 1..253 characters from ``[A-Za-z0-9._-]``. The same grammar as
the one applied to names that arrive on the wire, so a configured name is never
one the appliance refuses, and a 60,000-digit "UUID" never reaches a file name.
"""

from __future__ import annotations

import string

from vic.ops.config import require

MAX_VM_NAME = 64
MAX_LABEL = 32
MAX_HOST = 253
UUID_DIGITS = 32

_LABEL_CHARS = frozenset(string.ascii_letters + string.digits + "._-")
_NAME_CHARS = _LABEL_CHARS | {" "}
_HEX = frozenset(string.hexdigits)


def _charset_problem(value: str, allowed: frozenset[str], what: str) -> str | None:
    bad = sorted(set(value) - allowed)
    if bad:
        shown = "".join(bad[:8]).encode("unicode_escape").decode("ascii")
        return f"{what} may hold only letters, digits, '.', '_', '-' (not {shown!r})"
    return None


def vm_problem(value: str) -> str | None:
    """Why ``value`` is not a VM identity, or None."""
    compact = value.replace(" ", "").replace("-", "")
    if len(compact) == UUID_DIGITS and set(compact) <= _HEX:
        return None
    if not 1 <= len(value) <= MAX_VM_NAME:
        return (f"a VM is a VC UUID or a name of 1..{MAX_VM_NAME} characters "
                f"(this one has {len(value)})")
    if value[0] in ".-":
        return "a VM name must not start with '.' or '-'"
    return _charset_problem(value, _NAME_CHARS, "a VM name (besides spaces)")


def label_problem(value: str) -> str | None:
    """Why ``value`` is not a port label, or None."""
    if not 1 <= len(value) <= MAX_LABEL:
        return f"a label has 1..{MAX_LABEL} characters (this one has {len(value)})"
    if value[0] == ".":
        return "a label must not start with '.'"
    return _charset_problem(value, _LABEL_CHARS, "a label")


def host_problem(value: str) -> str | None:
    """Why ``value`` is not a host name, or None."""
    if not 1 <= len(value) <= MAX_HOST:
        return f"a host name has 1..{MAX_HOST} characters (this one has {len(value)})"
    return _charset_problem(value, _LABEL_CHARS, "a host name")


def require_vm(value: str, key: str) -> None:
    problem = vm_problem(value)
    require(problem is None, key, problem or "")


def require_label(value: str, key: str) -> None:
    problem = label_problem(value)
    require(problem is None, key, problem or "")


def require_host(value: str, key: str) -> None:
    problem = host_problem(value)
    require(problem is None, key, problem or "")
