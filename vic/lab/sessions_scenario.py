"""Lab scenario ``sessions``: a tethered VM (issue 13).

A real ``vic agent`` with ``[session]`` on (the session takes over its console channel,
a Unix socket) runs a container's main process; relay ``esx-s`` carries that stream,
labelled ``session``, to the appliance's endpoint; the appliance (``[sessions]`` on)
holds the sealed session. The scenario runs what a person types:

* ``vic console exec VM -- sh -c 'echo out; echo err >&2; exit 3'``: stdout and
  stderr apart, exit code 3;
* ``vic console logs VM --tail 2``: the main process's last two lines;
* ``vic console exec -i`` of a shell that echoes its input, with the relay process
  killed (SIGKILL) and started again mid-exec while the guest writes 2,000 lines:
  every line once, in order;
* with the appliance's endpoint at hand, :mod:`vic.lab.vmotion_scenario`: a second
  tethered VM vMotioned from esx-a to esx-b (over the peer mesh) mid ``exec -i``,
  every byte once both ways, and the old host no longer speaking for it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import trio

from common.proto import guestinfo as gi
from vic.lab import report, vmotion_scenario
from vic.lab.agent_processes import STEP_TIMEOUT, start_agent, stop
from vic.lab.polling import wait_until
from vic.lab.session_checks import ROOT, SessionCheck, agent_toml, env, read_until, vic, vic_cmd
from vspc.endpoint import Endpoint
from vspc.guestinfo_watch import FileStoreWatcher, configure_session, go_ahead, wait_for_started
from vspc.service import VspcService

VM = "vm-sess-1"
MAIN = "echo one; echo two; echo three; exec sleep 100000"
SEQ = 2000
ECHO = (
    'read x; echo "got $x"; while [ ! -e "$1" ]; do sleep 0.02; done; '
    f'seq 1 {SEQ}; read y; echo "got $y"'
)


def main_session() -> gi.SessionConfig:
    return gi.SessionConfig(
        id=f"lab-{VM}", path="/bin/sh", args=("sh", "-c", MAIN), env=(), runblock=True
    )


class Relay:
    """Relay esx-s, a ``vic relay`` process: started, killed (SIGKILL) and started again."""

    def __init__(self, workdir: Path, pipe: Path) -> None:
        self.d = pipe.parent
        self.conf = self.d / "esx-s.toml"
        self.conf.write_text(
            'host = "esx-s"\nlog-level = "warning"\n[metrics]\nenabled = false\n'
            f'[egress.default]\nkind = "unix"\npath = "{workdir / "endpoint.sock"}"\n'
            f'[[pipe]]\nname = "s"\nvm = "{VM}"\npath = "{pipe}"\nlabel = "session"\n'
        )
        self.pipe = pipe
        self.proc: trio.Process | None = None
        self.starts = 0

    async def start(self) -> None:
        """Start it; return once it says READY=1 (sd_notify)."""
        self.pipe.unlink(missing_ok=True)  # a killed relay leaves its socket behind
        self.starts += 1
        notify = self.d / f"relay-notify-{self.starts}.sock"
        with trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_DGRAM) as sock:
            await sock.bind(str(notify))
            log = os.open(self.d / "esx-s.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                self.proc = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "vic.cli", "relay", "--config", str(self.conf)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    cwd=ROOT,
                    env=env() | {"NOTIFY_SOCKET": str(notify)},
                )
            finally:
                os.close(log)
            with trio.fail_after(STEP_TIMEOUT):
                while b"READY=1" not in (await sock.recv(65536)).split(b"\n"):
                    pass
        notify.unlink(missing_ok=True)

    async def kill(self) -> None:
        await stop(self.proc)  # SIGKILL: no goodbye on any stream


async def run(
    service: VspcService, workdir: Path, endpoint: Endpoint | None = None
) -> list[SessionCheck]:
    """The checks on ``VM``; with the appliance's ``endpoint``, then the vMotion's
    (:mod:`vic.lab.vmotion_scenario`)."""
    if service.sessions is None:
        return [SessionCheck("sessions", "the appliance has [sessions] off", False)]
    d = workdir / "sess"
    (d / "guestinfo").mkdir(parents=True, exist_ok=True)
    pipe = d / f"{VM}.sock"
    watcher = FileStoreWatcher(d / "guestinfo")
    relay = Relay(workdir, pipe)
    proc: trio.Process | None = None
    try:
        await service.sessions.prepare(VM)  # the secret in guestinfo, before power-on
        await configure_session(watcher, VM, main_session())
        await relay.start()
        proc = await start_agent(agent_toml(d, VM, pipe))
        await go_ahead(watcher, VM, main_session().id)
        await wait_for_started(watcher, VM, main_session().id, STEP_TIMEOUT)
        checks = [await check_exec(workdir), await check_logs(workdir)]
        checks.append(await check_resume(workdir, d, relay))
    finally:
        await stop(proc)
        await relay.kill()
    if endpoint is not None:
        checks += await vmotion_scenario.run(service, endpoint, workdir)
    return checks


async def check_exec(workdir: Path) -> SessionCheck:
    r = await vic(workdir, "exec", VM, "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    seen = f"stdout {r.stdout!r}, stderr {r.stderr!r}, exit {r.returncode}"
    ok = (r.stdout, r.stderr, r.returncode) == (b"out\n", b"err\n", 3)
    return SessionCheck("exec sh -c 'echo out; echo err >&2; exit 3'", seen, ok)


async def check_logs(workdir: Path) -> SessionCheck:
    """The main process printed three lines; its logs reach the appliance as it runs."""
    want = b"two\nthree\n"
    r = await vic(workdir, "logs", VM, "--tail", "2")

    async def tail_is_there() -> bool:  # the lines are logged once the appliance reads them
        nonlocal r
        r = await vic(workdir, "logs", VM, "--tail", "2")
        return r.stdout == want

    if r.stdout != want:
        with trio.move_on_after(STEP_TIMEOUT):
            await wait_until(tail_is_there, interval=0.1)
    seen = f"{r.stdout!r}, exit {r.returncode}"
    return SessionCheck("logs --tail 2 (main: echo one two three)", seen, r.stdout == want)


async def check_resume(workdir: Path, d: Path, relay: Relay) -> SessionCheck:
    flag = d / "relay-restarted"
    cmd = vic_cmd(workdir, "exec", VM, "-i", "--", "sh", "-c", ECHO, "sh", str(flag))
    want = b"got a\n" + b"".join(b"%d\n" % i for i in range(1, SEQ + 1)) + b"got b\n"
    out = bytearray()
    proc = await trio.lowlevel.open_process(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, env=env()
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        with trio.fail_after(STEP_TIMEOUT):
            await proc.stdin.send_all(b"a\n")
            await read_until(proc.stdout, out, b"got a\n")
            await relay.kill()  # mid-exec: the guest now writes with no relay under the session
            flag.touch()
            await relay.start()
            await proc.stdin.send_all(b"b\n")
            await proc.stdin.aclose()
            await read_until(proc.stdout, out, b"got b\n")
            while data := await proc.stdout.receive_some(65536):
                out += data
            code = await proc.wait()
    except (trio.TooSlowError, EOFError) as e:
        return SessionCheck("exec -i across a relay restart", f"failed: {e}", False)
    finally:
        await stop(proc)
    ok = bytes(out) == want and code == 0
    seen = f"{len(out)}/{len(want)} bytes, exit {code}"
    seen += ", every line once, in order" if ok else ", output differs"
    return SessionCheck(
        f"exec -i, relay killed (SIGKILL) mid-exec, restarted; {SEQ} lines", seen, ok
    )


def render(title: str, checks: list[SessionCheck]) -> str:
    """Per check: the VM and what was run, then what was seen (wrapped in a column of at most
    70) and the verdict on that line's right."""
    lines = report.paragraph(f"== {title}", indent=3)
    for c in checks:
        vm = c.vm or VM
        lines += report.paragraph(f"{vm}  {c.what}", indent=len(vm) + 2)
        pad = " " * (len(vm) + 4)
        w = min(70, report.WIDTH - len(pad) - 8)
        first, *rest = report.wrap(c.seen, w)
        lines.append(f"{pad}{first:<{w}}  {'OK' if c.ok else 'FAILED'}")
        lines.extend(pad + r for r in rest)
    return "\n".join(lines)
