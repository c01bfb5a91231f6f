"""Sessions scenario, part two: a tethered VM vMotioned to another host mid-exec.

A real ``vic agent`` (VM ``vm-vmo-1``, ``[session]`` on) connects to its device, a
socket the lab owns (:mod:`vic.lab.vm_device`) that forwards to the relay of the
host the VM runs on (:mod:`vic.lab.vmotion_hosts`): first **esx-a**, whose relay
goes straight to the appliance; then **esx-b**, whose relay reaches the appliance
over the TLS peer mesh. ``vic console exec -i VM -- sh -c 'cat; ...'`` streams
lines both ways (the client sends at most ``WINDOW`` lines ahead of their echo).
Halfway through (with several moves: at equal fractions) the VM moves: the lab's
vCenter inventory says esx-b, the device switches host and resets the live
connection, the tether connects again through esx-b and the sealed session
resumes. Every line must come back exactly once, in order, and the exit status
once. Then a stream from the old host naming the VM must be refused by the
appliance (placement), and the session still answers.
"""

from __future__ import annotations

import subprocess
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from common.proto import guestinfo as gi
from relay.daemon import RelayDaemon
from vic.lab.agent_processes import STEP_TIMEOUT, start_agent, stop
from vic.lab.session_checks import ROOT, SessionCheck, agent_toml, env, vic, vic_cmd
from vic.lab.vm_device import VmDevice
from vic.lab.vmotion_hosts import Inventory, VCenter, ingress_path, start_hosts
from vspc.endpoint import Endpoint
from vspc.guestinfo_watch import (
    FileStoreWatcher,
    SessionStartFailed,
    VMPoweredOff,
    configure_session,
    go_ahead,
    wait_for_started,
)
from vspc.placement import Placement
from vspc.service import VspcService

VM = "vm-vmo-1"
LINES = 2000
WINDOW = 64  # lines the client sends ahead of their echo: bytes in flight at the move
EXIT = 7
SCRIPT = f'cat; echo "stdin closed" >&2; exit {EXIT}'
HOSTS = ("esx-a", "esx-b")


def line(i: int) -> bytes:
    return b"%05d the quick brown fox %d\n" % (i, i * 7919 % 10007)


@dataclass
class ExecRun:
    """What ``vic console exec -i`` saw across the moves."""

    sent: bytes
    out: bytearray = field(default_factory=bytearray)
    err: bytearray = field(default_factory=bytearray)
    code: int | None = None
    moves: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return bytes(self.out) == self.sent and bytes(self.err) == b"stdin closed\n"


class Progress:
    """Lines echoed so far; tasks wait for a count."""

    def __init__(self) -> None:
        self.lines = 0
        self._lot = trio.lowlevel.ParkingLot()

    def add(self, n: int) -> None:
        self.lines += n
        self._lot.unpark_all()

    async def at_least(self, n: int) -> None:
        while self.lines < n:
            await self._lot.park()


class VmotionLab:
    """The VM, its device, the hosts' relays and vCenter, set up and torn down.

    ``hosts``: where the VM starts (its relay goes straight to the appliance) and
    the other host (its relay reaches the appliance over the mesh); ``vcenter``:
    the endpoint's placement while the lab runs (default: the lab's inventory)."""

    def __init__(
        self,
        service: VspcService,
        endpoint: Endpoint,
        workdir: Path,
        *,
        vm: str = VM,
        hosts: tuple[str, str] = HOSTS,
        vcenter: VCenter | None = None,
    ) -> None:
        self.service = service
        self.endpoint = endpoint
        self.workdir = workdir
        self.vm = vm
        self.hosts = hosts
        self.d = workdir / "vmo"
        # the lab's vCenter knows the sessions scenario's VM too: while it is the
        # endpoint's placement, relay esx-s may still speak for vm-sess-1
        self.vcenter = vcenter or Inventory({vm: hosts[0], "vm-sess-1": "esx-s"})
        self.device = VmDevice(
            vm, self.d / "device.sock", {h: ingress_path(self.d, h) for h in hosts}, hosts[0]
        )
        self.relays: dict[str, RelayDaemon] = {}
        self.agent: trio.Process | None = None
        self._placement: Placement | None = None

    async def start(self, nursery: trio.Nursery) -> None:
        """Relays, vCenter as the endpoint's placement, the device, then the VM: its
        session config and secret in guestinfo, the agent, ``started``."""
        assert self.service.sessions is not None
        vm = self.vm
        self.d.mkdir(parents=True, exist_ok=True)
        gi_dir = self.workdir / "sess" / "guestinfo"
        self.relays = await start_hosts(nursery, self.d, vm, self.workdir, self.hosts)
        self._placement, self.endpoint.placement = self.endpoint.placement, self.vcenter
        await nursery.start(self.device.serve)
        watcher = FileStoreWatcher(gi_dir)
        main = gi.SessionConfig(
            id=f"lab-{vm}", path="/bin/sh", args=("sh", "-c", "exec sleep 100000"), runblock=True
        )
        await self.service.sessions.prepare(vm)
        await configure_session(watcher, vm, main)
        self.agent = await start_agent(agent_toml(self.d, vm, self.device.path, gi_dir))
        await go_ahead(watcher, vm, main.id)
        await wait_for_started(watcher, vm, main.id, STEP_TIMEOUT)

    async def vmotion(self, host: str) -> str:
        """The switchover: vCenter places the VM on ``host``; its vsock is reset there."""
        old = self.device.host
        await self.vcenter.vmotion(self.vm, host)
        reset = self.device.move(host)
        return f"{old} -> {host}: {reset} connection(s) reset"

    async def wind_down(self) -> None:
        """Power the VM off; let its relayed streams end before the relays stop."""
        await stop(self.agent)
        with trio.move_on_after(10):
            for relay in self.relays.values():
                await relay.wait_active_at_most(0)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await stop(self.agent)
            if self.endpoint.placement is self.vcenter:
                self.endpoint.placement = self._placement


Director = Callable[["VmotionLab", ExecRun, Progress], Awaitable[None]]


def evenly(moves: Sequence[str], lines: int) -> Director:
    """Move the VM to each host of ``moves`` in turn, at equal fractions of the lines."""

    async def direct(lab: VmotionLab, run: ExecRun, progress: Progress) -> None:
        for k, host in enumerate(moves, 1):
            await progress.at_least(k * lines // (len(moves) + 1))
            at = progress.lines
            run.moves.append(f"{await lab.vmotion(host)} at line {at}")

    return direct


async def exec_across(
    lab: VmotionLab, moves: Sequence[str], lines: int = LINES, director: Director | None = None
) -> ExecRun:
    """``vic console exec -i VM -- sh -c 'cat; ...'``, moving the VM to each host of
    ``moves`` in turn at equal fractions of the lines echoed (or as ``director`` does)."""
    run = ExecRun(b"".join(line(i) for i in range(lines)))
    cmd = vic_cmd(lab.workdir, "exec", lab.vm, "-i", "--", "sh", "-c", SCRIPT)
    proc = await trio.lowlevel.open_process(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=env(),
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    progress = Progress()

    async def send() -> None:
        assert proc.stdin is not None
        try:
            for i in range(lines):
                await progress.at_least(i - WINDOW)
                await proc.stdin.send_all(line(i))
        except trio.BrokenResourceError:  # the exec ended early: its output tells
            pass
        await proc.stdin.aclose()

    try:
        with trio.fail_after(STEP_TIMEOUT * (1 + len(moves))):
            async with trio.open_nursery() as n:
                n.start_soon(send)
                n.start_soon(director or evenly(moves, lines), lab, run, progress)
                n.start_soon(_read_all, proc.stdout, run.out, progress)
                n.start_soon(_read_all, proc.stderr, run.err, None)
            run.code = await proc.wait()
    finally:
        await stop(proc)
    return run


async def _read_all(
    stream: trio.abc.ReceiveStream, buf: bytearray, progress: Progress | None
) -> None:
    while data := await stream.receive_some(65536):
        buf += data
        if progress is not None:
            progress.add(data.count(b"\n"))


async def old_host_refused(lab: VmotionLab, old: str) -> str:
    """Open a stream for the VM on ``old``'s relay, as if the VM still ran there; the
    appliance must refuse it (placement). The reason it gives."""
    probe = await trio.open_unix_socket(str(ingress_path(lab.d, old)))
    try:
        await probe.send_all(b"\x00" * 64)  # whatever a stale guest end would send
        with trio.fail_after(STEP_TIMEOUT):
            return await lab.vcenter.refused(lab.vm, old)
    finally:
        await probe.aclose()


async def check_vmotion(lab: VmotionLab, moves: Sequence[str]) -> SessionCheck:
    path = " -> ".join((lab.hosts[0], *moves))
    what = f"exec -i across vMotion {path} ({lab.hosts[1]} over the mesh); {LINES} lines each way"
    try:
        r = await exec_across(lab, moves)
    except (trio.TooSlowError, OSError) as e:
        return SessionCheck(what, f"failed: {type(e).__name__} {e}", False, lab.vm)
    ok = r.exact and r.code == EXIT
    at = ", ".join(m.rsplit(" ", 1)[-1] for m in r.moves)
    seen = f"{len(r.out)}/{len(r.sent)} bytes, exit {r.code}, moved at line {at}"
    seen += ", every line once" if ok else ", output differs"
    return SessionCheck(what, seen, ok, lab.vm)


async def check_old_host(lab: VmotionLab, old: str) -> SessionCheck:
    what = f"after the move, {old}'s relay speaks for {lab.vm}; exec via {lab.device.host}"
    try:
        reason = await old_host_refused(lab, old)
    except (trio.TooSlowError, OSError) as e:
        return SessionCheck(what, f"not refused: {type(e).__name__} {e}", False, lab.vm)
    r = await vic(lab.workdir, "exec", lab.vm, "--", "echo", "still here")
    ok = f"on {lab.device.host}, not on '{old}'" in reason and r.stdout == b"still here\n"
    seen = f"refused ({reason.split(', ')[-1]}); exec: {r.stdout!r}, exit {r.returncode}"
    return SessionCheck(what, seen, ok, lab.vm)


async def run(service: VspcService, endpoint: Endpoint, workdir: Path) -> list[SessionCheck]:
    lab = VmotionLab(service, endpoint, workdir)
    try:
        async with trio.open_nursery() as nursery:
            try:
                await lab.start(nursery)
            except (trio.TooSlowError, OSError, SessionStartFailed, VMPoweredOff) as e:
                nursery.cancel_scope.cancel()
                return [SessionCheck("start: relays, device, agent", f"failed: {e!r}", False, VM)]
            checks = [await check_vmotion(lab, (HOSTS[1],))]
            checks.append(await check_old_host(lab, HOSTS[0]))
            await lab.wind_down()
            nursery.cancel_scope.cancel()
    finally:
        await lab.aclose()
    return checks
