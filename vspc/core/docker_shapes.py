"""Containers as the Docker Engine API shows them, from what the appliance knows (sans-IO).

A containerVM is one container. ``ContainerFacts`` is what the adapter gathers
for it: the VM's published guestinfo (``common.proto.guestinfo``: the session
config the appliance wrote, ``started``/exit status/times and the networks the
guest published), its power state, and the session service's view of its main
process (``MainFacts``: running, exited with a status, refused). From those:

* ``container_state``: docker's ``State`` (created / running / exited, exit
  code, started and finished times, the launch error). The session's exit
  status wins over guestinfo's (it comes first); a launch error is an exited
  container with ``Error`` set; a powered-off VM that said nothing is exited
  with docker's unknown exit code 255;
* ``inspect`` (``GET /containers/{id}/json``), ``ps_entry``
  (``GET /containers/json``), ``status_text`` ("Up 5 minutes", "Exited (3)
  2 hours ago"), ``version_body``, ``info_body``.

Times come in as ``now`` (seconds since the epoch). A container's id is the
VM's published container id (``guestinfo.vice./common/id``) or, without one,
the SHA-256 of its name, so it is stable and 64 hex digits like docker's.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from common.proto import guestinfo as gi
from vspc.core.docker_api import API_VERSION, MIN_API_VERSION
from vspc.core.docker_params import Candidate
from vspc.core.linelog import NS, rfc3339nano

ZERO_TIME = "0001-01-01T00:00:00Z"
UNKNOWN_EXIT = 255
LAUNCH_FAILED_EXIT = 128
IMAGE = "containervm"


@dataclass(frozen=True)
class MainFacts:
    """The session service's view of the main process."""

    state: str  # vspc.sessions.channel.MainState values: unknown, running, exited, refused
    exit_code: int | None = None
    signal: int | None = None
    reason: str = ""  # why the tether refused to attach
    connected: bool = False


_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ContainerFacts:
    name: str  # the VM's name
    values: Mapping[str, str] = field(default_factory=dict)  # its guestinfo
    powered_on: bool = True
    main: MainFacts | None = None  # None: no session
    created: float | None = None  # seconds since the epoch, when known

    @property
    def id(self) -> str:
        """The VM's own container id when it is docker's shape (64 hex digits); else
        one made from it (or the name): ``docker ps`` shows 12 digits, which must differ."""
        own = gi.decode_str(self.values.get(gi.common_id_key()))
        if own and _HEX64.fullmatch(own):
            return own
        return hashlib.sha256((own or self.name).encode()).hexdigest()

    @property
    def session_id(self) -> str | None:
        """The main session's id: the first in the VM's sessions map."""
        try:
            ids = gi.decode_map_keys(self.values.get(gi.sessions_key()))
        except gi.GuestinfoError:
            return None
        return ids[0] if ids else None

    def config(self) -> gi.SessionConfig | None:
        sid = self.session_id
        if sid is None:
            return None
        try:
            return gi.decode_session(sid, self.values)
        except gi.GuestinfoError:
            return None


@dataclass(frozen=True)
class State:
    status: str  # created, running, exited
    exit_code: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    error: str = ""

    @property
    def running(self) -> bool:
        return self.status == "running"


def _view(f: ContainerFacts) -> gi.SessionView | None:
    sid = f.session_id
    return None if sid is None else gi.view_session(sid, f.values)


def _main_exit(m: MainFacts | None) -> int | None:
    if m is None or m.state != "exited":
        return None
    if m.signal:
        return 128 + m.signal
    return m.exit_code if m.exit_code is not None else UNKNOWN_EXIT


def container_state(f: ContainerFacts) -> State:
    """See the module doc."""
    v = _view(f)
    started = float(v.starttime) if v is not None and v.starttime is not None else None
    stopped = v.exit.stoptime if v is not None and v.exit is not None else None
    finished = float(stopped) if stopped is not None else None
    code = _main_exit(f.main)
    if code is None and v is not None and v.exit is not None:
        code = v.exit.status
    if code is not None:
        return State("exited", code, started, finished)
    error = _launch_error(f, v)
    if error is not None:
        return State("exited", LAUNCH_FAILED_EXIT, started, finished, error)
    began = (v is not None and v.started is not None) or f.main is not None
    if not f.powered_on and began:
        return State("exited", UNKNOWN_EXIT, started, finished, "the containerVM powered off")
    if (v is not None and v.started == gi.TRUE) or (
        f.main is not None and f.main.state == "running"
    ):
        return State("running", 0, started)
    return State("created")


def _launch_error(f: ContainerFacts, v: gi.SessionView | None) -> str | None:
    if v is not None and v.start_error is not None:
        return v.start_error
    if f.main is not None and f.main.state == "refused":
        return f.main.reason or "the container's main process could not be attached"
    return None


def docker_time(t: float | None) -> str:
    return ZERO_TIME if t is None else rfc3339nano(round(t * NS))


def human_duration(seconds: float) -> str:
    """Docker's ``HumanDuration`` (go-units): "Less than a second", "5 minutes"..."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    m = s // 60
    if m == 1:
        return "About a minute"
    if m < 60:
        return f"{m} minutes"
    h = round(s / 3600)
    if h == 1:
        return "About an hour"
    if h < 48:
        return f"{h} hours"
    if h < 24 * 7 * 2:
        return f"{h // 24} days"
    if h < 24 * 30 * 2:
        return f"{h // 24 // 7} weeks"
    if h < 24 * 365 * 2:
        return f"{h // 24 // 30} months"
    return f"{h // 24 // 365} years"


def status_text(st: State, now: float) -> str:
    if st.status == "running":
        return "Up " + (human_duration(now - st.started_at) if st.started_at else "")
    if st.status == "exited":
        ago = f" {human_duration(now - st.finished_at)} ago" if st.finished_at else ""
        return f"Exited ({st.exit_code}){ago}"
    return "Created"


def _networks(f: ContainerFacts) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    try:
        published = gi.view_networks(f.values)
    except gi.GuestinfoError:
        published = {}
    for net, addrs in sorted(published.items()):
        v4 = [a for a in addrs if isinstance(a, ipaddress.IPv4Address)]
        v6 = [a for a in addrs if isinstance(a, ipaddress.IPv6Address)]
        out[net] = {
            "NetworkID": "",
            "EndpointID": "",
            "Gateway": "",
            "IPAddress": str(v4[0]) if v4 else "",
            "IPPrefixLen": 0,
            "IPv6Gateway": "",
            "GlobalIPv6Address": str(v6[0]) if v6 else "",
            "GlobalIPv6PrefixLen": 0,
            "MacAddress": "",
        }
    return out


def _command(cfg: gi.SessionConfig | None) -> str:
    if cfg is None:
        return ""
    return " ".join(cfg.args or (cfg.path,))


def candidate(f: ContainerFacts) -> Candidate:
    st = container_state(f)
    return Candidate(f.id, f.name, st.status, st.exit_code)


def ps_entry(f: ContainerFacts, now: float) -> dict[str, Any]:
    st = container_state(f)
    return {
        "Id": f.id,
        "Names": ["/" + f.name],
        "Image": IMAGE,
        "ImageID": "",
        "Command": _command(f.config()),
        "Created": int(f.created or st.started_at or 0),
        "Ports": [],
        "Labels": {},
        "State": st.status,
        "Status": status_text(st, now),
        "HostConfig": {"NetworkMode": "default"},
        "NetworkSettings": {"Networks": _networks(f)},
        "Mounts": [],
    }


def _config(f: ContainerFacts) -> dict[str, Any]:
    cfg = f.config()
    return {
        "Hostname": f.name,
        "Image": IMAGE,
        "Cmd": list(cfg.args) if cfg is not None else None,
        "Entrypoint": None,
        "Env": list(cfg.env) if cfg is not None else [],
        "WorkingDir": cfg.dir if cfg is not None else "",
        "Tty": cfg.tty if cfg is not None else False,
        "OpenStdin": cfg.openstdin if cfg is not None else False,
        "AttachStdin": False,
        "AttachStdout": cfg.attach if cfg is not None else False,
        "AttachStderr": cfg.attach if cfg is not None else False,
        "StdinOnce": False,
        "Labels": {},
        "StopSignal": (cfg.stopsignal if cfg is not None else "") or "SIGTERM",
    }


def inspect(f: ContainerFacts) -> dict[str, Any]:
    """``GET /containers/{id}/json``."""
    st = container_state(f)
    cfg = f.config()
    nets = _networks(f)
    first = next((n["IPAddress"] for n in nets.values() if n["IPAddress"]), "")
    return {
        "Id": f.id,
        "Created": docker_time(f.created or st.started_at),
        "Path": cfg.path if cfg is not None else "",
        "Args": list(cfg.args[1:]) if cfg is not None else [],
        "State": {
            "Status": st.status,
            "Running": st.running,
            "Paused": False,
            "Restarting": False,
            "OOMKilled": False,
            "Dead": False,
            "Pid": 0,
            "ExitCode": st.exit_code,
            "Error": st.error,
            "StartedAt": docker_time(st.started_at),
            "FinishedAt": docker_time(st.finished_at),
        },
        "Image": "",
        "Name": "/" + f.name,
        "RestartCount": 0,
        "Driver": "vic",
        "Platform": "linux",
        "HostConfig": {"NetworkMode": "default", "AutoRemove": False},
        "Mounts": [],
        "Config": _config(f),
        "NetworkSettings": {
            "IPAddress": first,
            "IPPrefixLen": 0,
            "Gateway": "",
            "MacAddress": "",
            "Ports": {},
            "Networks": nets,
        },
    }


def version_body(version: str) -> dict[str, Any]:
    return {
        "Platform": {"Name": "vic-channel"},
        "Components": [
            {"Name": "Engine", "Version": version, "Details": {"ApiVersion": API_VERSION}}
        ],
        "Version": version,
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "",
        "GoVersion": "",
        "Os": "linux",
        "Arch": "amd64",
        "KernelVersion": "",
        "BuildTime": "",
    }


def info_body(name: str, version: str, states: list[State]) -> dict[str, Any]:
    running = sum(1 for s in states if s.running)
    stopped = sum(1 for s in states if s.status == "exited")
    return {
        "ID": "",
        "Containers": len(states),
        "ContainersRunning": running,
        "ContainersPaused": 0,
        "ContainersStopped": stopped,
        "Images": 0,
        "Driver": "vic",
        "DriverStatus": [],
        "Name": name,
        "ServerVersion": version,
        "OperatingSystem": "vic-channel appliance",
        "OSType": "linux",
        "Architecture": "x86_64",
        "NCPU": 0,
        "MemTotal": 0,
        "Labels": [],
        "ExperimentalBuild": False,
        "SecurityOptions": [],
        "Warnings": [],
    }


def ps_table(text: str) -> dict[str, Any]:
    """``ps`` output as ``docker top`` wants it: the header's words as ``Titles``,
    each row split into as many fields (the last keeps its spaces: the command)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return {"Titles": [], "Processes": []}
    titles = lines[0].split()
    rows = [ln.split(None, len(titles) - 1) for ln in lines[1:]]
    return {"Titles": titles, "Processes": rows}
