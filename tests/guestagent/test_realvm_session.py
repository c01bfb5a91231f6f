"""The tether in a real Linux VM: QEMU boots Debian's kernel with ``vic agent`` as PID 1;
the sealed session runs over the VM's 16550 UART into a real ``vic relay`` (``[[pipe]]``
ingress, from TOML) and on to an appliance-side ``SessionEndpoint`` here, through the
kernel's boot noise on the line. One VM serves every check (booting costs most)."""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from common.io.sealedsession_conn import EndKind
from common.proto import guestinfo as gi
from common.proto.link.header import OriginHeader
from common.proto.session.messages import ExecSpec, ExitStatus, Stream
from tests.guestagent import realvm
from tests.guestagent.tether_helpers import Appliance, ExecResult, write_secrets
from tests.support.daemons import Daemons
from vspc.guestinfo_watch import FileStoreWatcher, configure_session, go_ahead, wait_for_exit

pytestmark = pytest.mark.slow

BOOT = 240  # safety nets only: TCG boots in tens of seconds on a busy 2-core machine
T = 60
SECRET = bytes(range(32))
MAIN = "echo hello from pid $$; read x; echo got $x; exit 7"


class RelayedAppliance(Appliance):
    """The appliance behind the relay: each relayed stream starts with the origin header;
    the rest is a serial line, so the handshake is retried on it (the tether may still
    be booting) until the stream itself ends."""

    def __init__(self, path: str, secret: bytes) -> None:
        super().__init__(path, secret)
        self.headers: list[OriginHeader] = []
        self.lines: list[realvm.PrefixedStream] = []

    async def _run(self, stream: trio.SocketStream) -> None:
        got = await realvm.read_origin(stream)
        if got is None:
            await stream.aclose()
            return
        header, line = got
        self.headers.append(header)
        self.lines.append(line)
        while True:
            end = await self.endpoint.run_connection(line, handshake_timeout=3, close_stream=False)
            self.ends.append(end)
            if end.kind in (EndKind.EOF, EndKind.STREAM_ERROR):
                await stream.aclose()
                return


@dataclass
class Vm:
    appliance: RelayedAppliance
    watcher: FileStoreWatcher
    files: realvm.VmFiles
    boot_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


@pytest.fixture
async def vm(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Vm]:
    why = realvm.unavailable()
    if why:
        pytest.skip(why)
    files = realvm.prepare(tmp_path)
    watcher = FileStoreWatcher(files.share)
    write_secrets(str(files.share / "vm1.json"), SECRET)
    main = gi.SessionConfig(
        id="c1", path="/bin/sh", args=("sh", "-c", MAIN), openstdin=True, runblock=True
    )
    await configure_session(watcher, "vm1", main)
    appliance = RelayedAppliance(str(tmp_path / "appliance.sock"), SECRET)
    await nursery.start(appliance.serve)
    async with Daemons(tmp_path) as ds:
        await ds.add("relay", "esx", realvm.relay_toml(files, Path(appliance.path))).start()
        started = time.monotonic()
        qemu = await realvm.start_qemu(files, tmp_path / "qemu.log")
        try:
            with trio.fail_after(BOOT):
                await appliance.endpoint.wait_live()
            v = Vm(appliance, watcher, files, time.monotonic() - started)
            yield v
        except BaseException:
            print(files.console.read_text(errors="replace")[-4000:])
            raise
        finally:
            qemu.kill()
            await qemu.wait()


async def check_exec(app: Appliance) -> None:
    data = bytes(range(256)) * 40  # every byte value, through a real UART
    r = await app.exec(ExecSpec(("sh", "-c", "cat; echo oops >&2; exit 3")), data)
    assert r.text(Stream.STDOUT) == data
    assert r.text(Stream.STDERR) == b"oops\n"
    assert r.status == ExitStatus(code=3)
    r = await app.exec(ExecSpec(("sh", "-c", "echo $$; cat /proc/1/comm; uname -r")))
    pid, comm, release = r.text(Stream.STDOUT).decode().split()
    assert int(pid) > 1 and comm.startswith("python")  # the agent is PID 1 of this kernel
    assert release == Path(realvm.kernel().vmlinuz).name.removeprefix("vmlinuz-")


async def check_signal(app: Appliance) -> None:
    ch, r = app.open_exec(ExecSpec(("sh", "-c", "echo up; exec sleep 600")))
    await r.wait_for(Stream.STDOUT, b"up\n")
    assert app.endpoint.signal(ch, signal.SIGTERM)
    await r.done.wait()
    assert r.status == ExitStatus(signal=signal.SIGTERM)


async def check_tty_resize(app: Appliance) -> None:
    spec = ExecSpec(("sh", "-c", "stty size; read x; stty size"), tty=True, rows=24, cols=80)
    ch, r = app.open_exec(spec)
    await r.wait_for(Stream.TTY, b"24 80")
    assert app.endpoint.resize(ch, 50, 132)
    assert await app.endpoint.send_all(ch, Stream.STDIN, b"\n")
    await r.wait_for(Stream.TTY, b"50 132")
    await r.done.wait()
    assert r.status == ExitStatus(code=0)


async def check_main_attach(v: Vm) -> None:
    """The container's main process (runblock) attached before its go-ahead: all of its
    output, input typed into it, its exit code on the attach and in guestinfo."""
    ep = v.appliance.endpoint
    ch = ep.open_attach(tty=False)
    r = v.appliance.results[ch] = ExecResult()
    await r.opened.wait()
    await go_ahead(v.watcher, "vm1", "c1")
    await r.wait_for(Stream.STDOUT, b"hello from pid")
    assert await ep.send_all(ch, Stream.STDIN, b"there\n")
    await r.wait_for(Stream.STDOUT, b"got there\n")
    await r.done.wait()
    assert r.status == ExitStatus(code=7)
    info = await wait_for_exit(v.watcher, "vm1", "c1", T)
    assert info.status == 7


async def test_a_real_vm_serves_the_session_over_its_uart(vm: Vm) -> None:
    app = vm.appliance
    began = time.monotonic()
    with trio.fail_after(T * 4):
        await check_exec(app)
        await check_signal(app)
        await check_tty_resize(app)
        await check_main_attach(vm)
    (header,) = app.headers  # one relayed stream carried it all, noise and handshake
    assert (header.vm, header.kind, header.label) == ("vm1", "pipe", "serial1")
    assert b"Linux version" in app.lines[0].seen  # the kernel's log came first, on the line
    assert app.endpoint.stats.established >= 1
    print(
        f"realvm: boot to session {vm.boot_seconds:.1f} s, checks {time.monotonic() - began:.1f} s"
    )
