"""Pipe-backed serial ports: Unix socket with the relay listening or connecting
(reconnecting after the VM end goes away), and a FIFO pair."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import trio

from relay.config import PipeListener
from tests.relay.relayfix import (
    Appliance,
    pattern,
    relay_config,
    roundtrip,
    start_relay,
    tcp_egress,
)


async def test_listen_mode_vm_reconnects(tmp_path: Path) -> None:
    app = Appliance()
    path = tmp_path / "vm1.com1"
    async with trio.open_nursery() as n:
        port = await app.serve_tcp(n)
        cfg = relay_config(tcp_egress(port), pipe=(PipeListener(name="p", vm="vm1", path=path),))
        d = await start_relay(n, cfg)
        assert d.bound["p"] == str(path)
        for i in range(3):  # power cycles: the VM end connects again each time
            s = await trio.open_unix_socket(str(path))
            data = pattern(100_000, seed=i)
            assert await roundtrip(s, data) == data
            await s.aclose()
            rec = (await app.wait_streams(i + 1))[i]
            await rec.closed.wait()
            assert (rec.header.vm, rec.header.kind, rec.header.label) == ("vm1", "pipe", "serial0")
        await d.terminate()
        await d.stopped.wait()
        assert not path.exists()  # the listener removed its socket
        n.cancel_scope.cancel()


async def test_listen_mode_socat_as_vm(tmp_path: Path) -> None:
    if shutil.which("socat") is None:
        pytest.skip("socat not installed")
    app = Appliance()
    path = tmp_path / "vm2.com1"
    async with trio.open_nursery() as n:
        port = await app.serve_tcp(n)
        cfg = relay_config(tcp_egress(port), pipe=(PipeListener(name="p", vm="vm2", path=path),))
        await start_relay(n, cfg)
        data = pattern(64_000, seed=9)
        with trio.fail_after(20):
            r = await trio.run_process(
                ["socat", "-t", "10", "STDIO", f"UNIX-CONNECT:{path}"],
                stdin=data,
                capture_stdout=True,
            )
        assert r.stdout == data
        n.cancel_scope.cancel()


async def test_connect_mode_reconnects_when_vm_comes_back(tmp_path: Path) -> None:
    """ESX pipe in server mode: the VM end listens. It goes away (socket closed and
    removed) and comes back; the relay connects again each time."""
    app = Appliance()
    path = tmp_path / "vm3.com1"
    async with trio.open_nursery() as n:
        port = await app.serve_tcp(n)
        cfg = relay_config(
            tcp_egress(port), pipe=(PipeListener(name="p", vm="vm3", path=path, mode="connect"),)
        )
        await start_relay(n, cfg)  # VM end not there yet: the relay retries
        for i in range(3):
            lsock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
            await lsock.bind(str(path))
            lsock.listen(1)
            with trio.fail_after(10):
                conn, _ = await lsock.accept()
            vm_end = trio.SocketStream(conn)
            data = pattern(80_000, seed=i)
            assert await roundtrip(vm_end, data) == data
            await vm_end.aclose()
            lsock.close()
            path.unlink()  # VM powered off
            rec = (await app.wait_streams(i + 1))[i]
            await rec.closed.wait()
            assert rec.header.vm == "vm3" and bytes(rec.data) == data
        n.cancel_scope.cancel()


async def test_fifo_pair(tmp_path: Path) -> None:
    """QEMU-style pipe chardev: the VM writes <path>.out and reads <path>.in."""
    app = Appliance()
    base = tmp_path / "vm4"
    os.mkfifo(f"{base}.in")
    os.mkfifo(f"{base}.out")
    async with trio.open_nursery() as n:
        port = await app.serve_tcp(n)
        cfg = relay_config(
            tcp_egress(port), pipe=(PipeListener(name="f", vm="vm4", path=base, mode="fifo"),)
        )
        await start_relay(n, cfg)
        for i in range(2):  # the VM side opens, talks, closes; then again
            data = pattern(50_000, seed=i)
            # O_RDWR opens a FIFO end without waiting for the other side (and a
            # read end so opened never sees a spurious EOF before the relay writes).
            rfd = os.open(f"{base}.in", os.O_RDWR | os.O_NONBLOCK)
            wfd = os.open(f"{base}.out", os.O_RDWR | os.O_NONBLOCK)
            vm_end = trio.StapledStream(trio.lowlevel.FdStream(wfd), trio.lowlevel.FdStream(rfd))
            assert await roundtrip(vm_end, data) == data
            await vm_end.aclose()
            rec = (await app.wait_streams(i + 1))[i]
            with trio.fail_after(10):
                await rec.closed.wait()
            assert rec.header.kind == "pipe" and bytes(rec.data) == data
        n.cancel_scope.cancel()
