"""Who an exec runs as: ``user`` (``name``, ``uid``, ``name:group``, ``uid:gid``) resolved
against the container's own /etc/passwd and /etc/group, not the agent's name service.

A numeric uid need not be listed (gid 0 then, like docker); a name must be. The
supplementary groups are the groups that list the user's name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from guestagent.execspec import ExecStartError

MAX_DB_BYTES = 4 * 1024 * 1024  # /etc/passwd or /etc/group larger than this: refuse
MAX_ID = 0xFFFFFFFE  # (uid_t)-1 means "unchanged" to setuid and friends


@dataclass(frozen=True)
class Credentials:
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str | None  # from passwd, for HOME


def _read_db(root: str, name: str) -> list[list[str]]:
    path = os.path.join(root, "etc", name)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_DB_BYTES + 1)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise ExecStartError(f"cannot read /etc/{name}: {e.strerror}") from None
    if len(data) > MAX_DB_BYTES:
        raise ExecStartError(f"/etc/{name} is larger than {MAX_DB_BYTES} bytes")
    rows = []
    for line in data.decode("utf-8", "replace").splitlines():
        if line and not line.startswith("#"):
            rows.append(line.split(":"))
    return rows


def _numeric(s: str, what: str) -> int | None:
    if not (s.isascii() and s.isdigit()):
        return None
    n = int(s)
    if n > MAX_ID:
        raise ExecStartError(f"{what} {s} is out of range")
    return n


def _parse_id(field: str) -> int | None:
    return int(field) if field.isascii() and field.isdigit() and int(field) <= MAX_ID else None


def _passwd_entry(rows: list[list[str]], user: str) -> tuple[str, int, int, str] | None:
    """(name, uid, gid, home) of ``user`` (a name or a uid), or None."""
    uid = _numeric(user, "uid")
    for r in rows:
        if len(r) < 7:
            continue
        ruid, rgid = _parse_id(r[2]), _parse_id(r[3])
        if ruid is None or rgid is None:
            continue
        if (uid is None and r[0] == user) or (uid is not None and ruid == uid):
            return r[0], ruid, rgid, r[5]
    return None


def _group_id(rows: list[list[str]], group: str) -> int:
    gid = _numeric(group, "gid")
    if gid is not None:
        return gid
    for r in rows:
        if len(r) >= 3 and r[0] == group and (n := _parse_id(r[2])) is not None:
            return n
    raise ExecStartError(f"unknown group {group!r} in the container's /etc/group")


def _supplementary(rows: list[list[str]], name: str | None, gid: int) -> tuple[int, ...]:
    out = [gid]
    if name is not None:
        for r in rows:
            if len(r) >= 4 and name in r[3].split(",") and (n := _parse_id(r[2])) is not None:
                if n not in out:
                    out.append(n)
    return tuple(out)


def resolve_user(user: str | None, root: str) -> Credentials | None:
    """Credentials for ``user`` inside the filesystem rooted at ``root``; None for no
    user (keep the agent's). Raises ``ExecStartError`` for an unknown name."""
    if not user:
        return None
    name_part, _, group_part = user.partition(":")
    entry = _passwd_entry(_read_db(root, "passwd"), name_part)
    if entry is None:
        uid = _numeric(name_part, "uid")
        if uid is None:
            raise ExecStartError(f"unknown user {name_part!r} in the container's /etc/passwd")
        name, gid, home = None, 0, None
    else:
        name, uid, gid, home = entry
    groups = _read_db(root, "group")
    if group_part:
        gid = _group_id(groups, group_part)
        return Credentials(uid, gid, (gid,), home)
    return Credentials(uid, gid, _supplementary(groups, name, gid), home)
