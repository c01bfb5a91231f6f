"""Write one route into the relay's TOML file, leaving the rest of it as it was.

``vic relay route set --persist`` edits the ``[peer.routes.NAME]`` table in place:
its ``address``, ``identity`` and ``tls`` lines (comments after a value are kept),
nothing else. The result is parsed again and checked to say exactly the new
route before it replaces the file (atomically, same mode). A route written
another way (an inline table, dotted keys elsewhere) is refused with a message:
the operator edits such a file by hand.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path

from common.link.route import Route

_VALUE = r'"(?:[^"\\]|\\.)*"|\'[^\']*\'|true|false'


def _header(name: str) -> re.Pattern[str]:
    quoted = re.escape(json.dumps(name))
    return re.compile(rf"^\s*\[\s*peer\.routes\.(?:{re.escape(name)}|{quoted})\s*\]\s*(?:#.*)?$")


def _key(key: str) -> re.Pattern[str]:
    return re.compile(rf"^(\s*{key}\s*=\s*)({_VALUE})(\s*#.*)?$")


def _toml_value(v: str | bool) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else json.dumps(v)


def rewrite(text: str, name: str, route: Route) -> str:
    """``text`` with the ``[peer.routes.NAME]`` table saying ``route``."""
    lines = text.splitlines(keepends=True)
    head = _header(name)
    start = next((i for i, line in enumerate(lines) if head.match(line)), None)
    if start is None:
        raise ValueError(f"no [peer.routes.{name}] table in the file to write the route into")
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines)
    )
    want: dict[str, str | bool | None] = {
        "address": route.address,
        "identity": route.identity or None,
        "tls": None if route.tls else False,  # true is the default: left out unless present
    }
    body = lines[start + 1 : end]
    for key, value in want.items():
        pat = _key(key)
        at = next((i for i, line in enumerate(body) if pat.match(line.rstrip("\r\n"))), None)
        if at is not None:
            m = pat.match(body[at].rstrip("\r\n"))
            assert m is not None
            if value is None and key != "tls":
                del body[at]
                continue
            val = _toml_value(route.tls if key == "tls" else value or "")
            body[at] = f"{m.group(1)}{val}{m.group(3) or ''}\n"
        elif value is not None:
            body.insert(0, f"{key} = {_toml_value(value)}\n")
    out = "".join([*lines[: start + 1], *body, *lines[end:]])
    _check(out, name, route)
    return out


def _check(text: str, name: str, route: Route) -> None:
    try:
        got = tomllib.loads(text)["peer"]["routes"][name]
    except (tomllib.TOMLDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"cannot write the route into this file (edit it by hand): {e}") from None
    said = (got.get("address"), got.get("identity", ""), got.get("tls", True))
    if said != (route.address, route.identity, route.tls):
        raise ValueError("cannot write the route into this file (edit it by hand)")


def write_route(path: Path, name: str, route: Route) -> None:
    """Rewrite ``path`` so that its ``[peer.routes.NAME]`` says ``route``."""
    text = path.read_text()
    out = rewrite(text, name, route)
    tmp = path.with_name(f".{path.name}.route.tmp")
    mode = path.stat().st_mode & 0o7777
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(out)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
