"""Lab scenario ``docker``: the stock ``docker`` client against the appliance (issue 14).

The appliance serves ``[docker]`` on ``<workdir>/docker.sock`` (its own endpoint when
its config has one, else one started here on its session service). Three tethered
VMs, each a real ``vic agent`` with ``[session]`` on behind relay ``esx-d``, run a
container's main process:

* ``vm-dock-1`` (no tty) prints lines, then more once the scenario says so: ``ps``,
  ``inspect``, ``logs --tail/-t/--since/--until``, ``logs -f`` while it writes,
  ``exec`` (exit code, stdout and stderr apart, ``-i``, ``-e/-w/-u``), ``kill -s``;
* ``vm-dock-tty`` (tty, stdin open, SIGTERM ignored): ``exec -it`` and ``attach``
  under tmux (:mod:`vic.lab.docker_terminal`), ``stop -t 1``;
* ``vm-dock-exit`` reads a line and exits 21: ``attach`` with input while it
  exits (attach's exit code is the container's), then ``wait``.

Then ``docker run``: the one-line answer that this endpoint creates no containers.
Every check compares output and exit codes with what docker's own daemon gives.
"""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from vic.lab import docker_checks as dc
from vic.lab import docker_terminal
from vic.lab.agent_processes import STEP_TIMEOUT, start_agent, stop
from vic.lab.docker_client import V1, Docker, mains
from vic.lab.session_checks import SessionCheck, agent_toml
from vic.lab.sessions_scenario import Relay
from vspc.docker.server import DockerServer
from vspc.docker_config import DockerConfig
from vspc.guestinfo_watch import (
    FileStoreWatcher,
    SessionStartFailed,
    configure_session,
    go_ahead,
    wait_for_started,
)
from vspc.service import VspcService


class DockerRelay(Relay):
    """Relay ``esx-d``: one pipe a VM, each labelled ``session``."""

    def __init__(self, workdir: Path, d: Path, vms: list[str]) -> None:
        super().__init__(workdir, d / f"{vms[0]}.sock")
        self.conf.write_text(
            'host = "esx-d"\nlog-level = "warning"\n[metrics]\nenabled = false\n'
            f'[egress.default]\nkind = "unix"\npath = "{workdir / "endpoint.sock"}"\n'
            + "".join(
                f'[[pipe]]\nname = "{vm}"\nvm = "{vm}"\npath = "{d / vm}.sock"\nlabel = "session"\n'
                for vm in vms
            )
        )


def unavailable() -> str:
    if shutil.which("docker") is None:
        return "no docker client on PATH (Debian's docker.io; no daemon needed)"
    return ""


async def run(service: VspcService, workdir: Path) -> list[SessionCheck]:
    """Every check (see the module doc); the caller checked ``unavailable()``."""
    if service.sessions is None:
        return [SessionCheck("docker", "the appliance has [sessions] off", False, V1)]
    d = workdir / "docker"
    d.mkdir(parents=True, exist_ok=True)
    async with trio.open_nursery() as nursery:
        server = service.docker
        if server is None:
            cfg = DockerConfig(enabled=True, socket=workdir / "docker.sock")
            server = await nursery.start(DockerServer(cfg, service.sessions).run)
        assert server.unix_path is not None
        binary = shutil.which("docker")
        assert binary is not None
        gi_dir = workdir / "sess" / "guestinfo"
        dk = Docker(binary, server.unix_path, d / "docker-config", service, gi_dir)
        checks = await _with_vms(dk, service, workdir, d)
        nursery.cancel_scope.cancel()
    return checks


async def _with_vms(dk: Docker, service: VspcService, workdir: Path, d: Path) -> list[SessionCheck]:
    assert service.sessions is not None
    gi_dir = workdir / "sess" / "guestinfo"
    watcher = FileStoreWatcher(gi_dir)
    configs = mains(d)
    relay = DockerRelay(workdir, d, list(configs))
    agents: list[trio.Process] = []
    try:
        try:
            for vm, cfg in configs.items():
                await service.sessions.prepare(vm)
                await configure_session(watcher, vm, cfg)
            await relay.start()
            for vm in configs:
                agents.append(await start_agent(agent_toml(d, vm, d / f"{vm}.sock", gi_dir)))
            for vm, cfg in configs.items():
                await go_ahead(watcher, vm, cfg.id)
            for vm, cfg in configs.items():
                await wait_for_started(watcher, vm, cfg.id, STEP_TIMEOUT)
            await dk.logged(V1, b"three\n")
        except (trio.TooSlowError, OSError, SessionStartFailed) as e:  # the lab fails, says why
            why = f"failed: {type(e).__name__} {e}"
            return [SessionCheck("start the tethered VMs behind relay esx-d", why, False, V1)]
        return await _checks(dk, d)
    finally:
        for proc in agents:
            await stop(proc)
        await relay.kill()


Check = Callable[[Docker, Path], Awaitable[SessionCheck]]


async def _checks(dk: Docker, d: Path) -> list[SessionCheck]:
    steps: list[Check] = [
        dc.check_ps,
        dc.check_inspect,
        dc.check_logs,
        dc.check_follow,
        dc.check_window,
        dc.check_exec,
        dc.check_exec_stdin,
        dc.check_exec_env,
        docker_terminal.check_exec_it,
        docker_terminal.check_attach_detach,
        dc.check_attach_exit,
        dc.check_wait,
        dc.check_kill,
        dc.check_stop,
        dc.check_unsupported,
    ]
    out = []
    for step in steps:
        try:
            out.append(await step(dk, d))
        except (trio.TooSlowError, EOFError, OSError, ValueError, KeyError, AssertionError) as e:
            name = getattr(step, "__name__", "check").removeprefix("check_")
            out.append(SessionCheck(name, f"failed: {type(e).__name__} {e}", False, V1))
    return out
