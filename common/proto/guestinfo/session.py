"""Session config (appliance to guest) and signal requests, encoded as guestinfo."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from common.proto.guestinfo.codec import (
    decode_array,
    decode_bool,
    decode_str,
    encode_array,
    encode_bool,
    encode_map_keys,
    encode_str,
    parse_seq,
)
from common.proto.guestinfo.errors import GuestinfoError, SessionConfigError
from common.proto.guestinfo.keys import common_id_key, config_key, session_base, sessions_key


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
