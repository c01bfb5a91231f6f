"""The handoff socket as an operator and a failing successor meet it (real `vic relay`
processes): a path that cannot be opened is a one-line config error; a successor
that takes the sockets and dies before READY leaves the old relay serving."""

from __future__ import annotations

from pathlib import Path

import trio

from common.ops import inherit
from relay import handoff
from tests.relay.relayfix import Appliance, pattern, roundtrip
from tests.support.daemons import Daemons, free_port
from tests.support.vic_cli import assert_one_line, run_vic


def relay_toml(app_port: int, vm_port: int, handoff_path: Path) -> str:
    return f"""log-level = "warning"
handoff-socket = "{handoff_path}"
[egress.default]
kind = "tcp"
host = "127.0.0.1"
port = {app_port}
[metrics]
enabled = false
[[tcp]]
name = "vm1"
vm = "vm1"
port = {vm_port}
"""


def test_handoff_socket_that_cannot_be_opened_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    cfg = tmp_path / "relay.toml"
    cfg.write_text(relay_toml(7000, free_port(), tmp_path / "file" / "h.sock"))
    assert_one_line(run_vic("relay", cfg), "handoff-socket")


async def test_successor_that_dies_before_ready_leaves_the_relay_serving(
    tmp_path: Path,
) -> None:
    app = Appliance()
    vm_port, path = free_port(), tmp_path / "h.sock"
    data = pattern(200_000, 9)
    with trio.fail_after(60):
        async with trio.open_nursery() as n, Daemons(tmp_path) as ds:
            app_port = await app.serve_tcp(n)
            relay = ds.add("relay", "esx-a", relay_toml(app_port, vm_port, path))
            await relay.start()
            taker = await handoff.take_over(path)  # this test is the would-be successor
            assert taker is not None and taker.pid == relay.pid
            assert f"tcp 127.0.0.1:{vm_port}#0" in taker.keys and f"unix {path}" in taker.keys
            assert sorted(inherit.unclaimed()) == sorted(taker.keys)  # we close our copies
            await taker.stream.aclose()  # ... and die before READY
            await relay.wait_log("carrying on")
            vm = await trio.open_tcp_stream("127.0.0.1", vm_port)
            assert await roundtrip(vm, data) == data  # still served by the old relay
            await vm.aclose()
            second = await handoff.take_over(path)  # and it can still hand off later
            assert second is not None
            inherit.unclaimed()
            await second.stream.aclose()
            assert await relay.stop() == 0
            n.cancel_scope.cancel()


def test_handoff_with_a_device_or_outgoing_listener_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "relay.toml"
    base = relay_toml(7000, free_port(), tmp_path / "h.sock")
    client = '[[tcp]]\nname = "esx"\nvm = "vm2"\nhost = "127.0.0.1"\nport = 7001\nmode = "client"\n'
    cfg.write_text(base + client)
    line = assert_one_line(run_vic("relay", cfg, "--check"), "handoff-socket")
    assert "tcp[1]" in line


def test_handoff_takes_a_connect_mode_pipe_and_refuses_a_fifo(tmp_path: Path) -> None:
    """A connect-mode pipe's successor waits for the stream it is passed before it
    connects, and for the old process to exit (relay.handoff_holds): so also with
    a TLS egress, whose stream stays there; a FIFO pair would be read by both."""
    cfg = tmp_path / "relay.toml"
    base = relay_toml(7000, free_port(), tmp_path / "h.sock")
    pipe = f'[[pipe]]\nname = "p"\nvm = "vm2"\npath = "{tmp_path / "p"}"\nmode = "%s"\n'
    cfg.write_text(base + pipe % "connect")
    assert run_vic("relay", cfg, "--check").returncode == 0
    cfg.write_text(base + pipe % "fifo")
    line = assert_one_line(run_vic("relay", cfg, "--check"), "handoff-socket")
    assert "pipe[0]" in line
    tls = '[egress.secure]\nkind = "tcp"\nhost = "127.0.0.1"\nport = 1\n'
    tls += '[egress.secure.tls]\nca = "/ca.pem"\n'
    cfg.write_text(base + pipe % "connect" + 'egress = "secure"\n' + tls)
    assert run_vic("relay", cfg, "--check").returncode == 0
