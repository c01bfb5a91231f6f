"""A handoff with a connect-mode pipe serial port: its live stream moves to the
successor, and the successor does not connect to the VM end a second time while
that stream lives (the VM end serves one client; a second connection would wait
in its backlog and the appliance would give the console's input to it).

Real processes: the VM end (this test: a Unix socket that serves one client at a
time, like QEMU's and ESX's pipe servers) <--connect-- `vic relay` --tcp--> an
appliance that echoes (this test)."""

from __future__ import annotations

import select
import socket
from pathlib import Path

import pytest
import trio

from common.ops.lifecycle import Changed
from tests.fault.livestreams import EchoedVm, continued_exactly, serve_tls
from tests.relay.relayfix import Appliance
from tests.support.daemons import Daemons

pytestmark = pytest.mark.slow


def _toml(app_port: int, vm_end: Path, handoff: Path, tls: Path | None = None) -> str:
    secure = f'[egress.default.tls]\nca = "{tls}"\nserver-name = "appliance.test"\n'
    return f"""log-level = "info"
handoff-socket = "{handoff}"
[egress.default]
kind = "tcp"
host = "127.0.0.1"
port = {app_port}
{secure if tls else ""}[metrics]
enabled = false
[timeouts]
drain = 30.0
retry-min = 0.05
retry-max = 0.2
[[pipe]]
name = "com1"
vm = "vm1"
path = "{vm_end}"
mode = "connect"
"""


async def vm_end_listener(path: Path) -> trio.socket.SocketType:
    """The VM end of a connect-mode pipe: a Unix listener the relay dials."""
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(str(path))
    listener.listen(8)
    return listener


def pending_connection(listener: trio.socket.SocketType) -> bool:
    readable, _w, _x = select.select([listener.fileno()], [], [], 0)
    return bool(readable)


async def test_a_connect_mode_pipe_stream_moves_and_is_not_doubled(tmp_path: Path) -> None:
    app = Appliance(echo=True)
    vm_end = tmp_path / "vm.sock"
    listener = await vm_end_listener(vm_end)
    with trio.fail_after(60):
        async with trio.open_nursery() as n, Daemons(tmp_path) as ds:
            toml = _toml(await app.serve_tcp(n), vm_end, tmp_path / "h.sock")
            old, new = ds.add("relay", "esx-a", toml), ds.add("relay", "esx-a2", toml)
            await old.start()
            conn, _ = await listener.accept()
            progress = Changed()
            vm = EchoedVm(0, trio.SocketStream(conn), progress)
            async with trio.open_nursery() as traffic:
                vm.start(traffic)
                await progress.wait_until(lambda: len(vm.got) > 5000)
                await new.start()
                assert await old.wait_exit(timeout=20) == 0  # moved: nothing to drain
                await new.wait_log("took over from relay pid")
                mark = len(vm.got)
                await progress.wait_until(lambda: len(vm.got) > mark + 5000)  # flows on
                # the successor has not connected a second time (it would have at start)
                assert not pending_connection(listener)
                vm.stop.set()
            assert vm.got == vm.sent and not vm.cut
            await vm.stream.aclose()  # the VM end goes away: the successor connects again
            again, _ = await listener.accept()
            stream = trio.SocketStream(again)
            await stream.send_all(b"after the move\n")
            got = b""
            while len(got) < 15:
                got += await stream.receive_some(100)
            assert got == b"after the move\n"
            await stream.aclose()
            n.cancel_scope.cancel()
    listener.close()
    assert "moved to the successor" in old.log() and "taken over (" in new.log()
    assert [bytes(r.data) for r in app.streams][:1] == [bytes(vm.sent)]  # one, exact


async def test_a_pipe_stream_with_a_tls_egress_continues_and_is_not_doubled(
    tmp_path: Path,
) -> None:
    """With a TLS egress the stream moves by continuation (relay.pump_tls): the old
    process is gone at once, the successor carries the VM end it was passed in a new
    TLS connection that continues the stream, and does not connect to the VM end
    meanwhile."""
    app = Appliance(echo=True)
    vm_end = tmp_path / "vm.sock"
    listener = await vm_end_listener(vm_end)
    with trio.fail_after(60):
        async with trio.open_nursery() as n, Daemons(tmp_path) as ds:
            port = await serve_tls(app, n, tmp_path)
            toml = _toml(port, vm_end, tmp_path / "h.sock", tls=tmp_path / "ca.pem")
            old, new = ds.add("relay", "esx-a", toml), ds.add("relay", "esx-a2", toml)
            await old.start()
            conn, _ = await listener.accept()
            progress = Changed()
            vm = EchoedVm(0, trio.SocketStream(conn), progress)
            async with trio.open_nursery() as traffic:
                vm.start(traffic)
                await progress.wait_until(lambda: len(vm.got) > 5000)
                await new.start()
                assert await old.wait_exit(timeout=20) == 0  # moved: nothing to drain
                mark = len(vm.got)
                await progress.wait_until(lambda: len(vm.got) > mark + 2000)  # flows on
                assert not pending_connection(listener)
                vm.stop.set()
                await progress.wait_until(lambda: not continued_exactly(app, vm))
                traffic.cancel_scope.cancel()  # (a TLS egress takes no half-close)
            assert not pending_connection(listener)  # it carries the stream it was passed
            await vm.stream.aclose()
            n.cancel_scope.cancel()
    listener.close()
    assert not (why := continued_exactly(app, vm)), why
    assert "moved to the successor" in old.log() and "taken over (" in new.log()
