"""SIGHUP: limits, ring, retention and endpoints change live; clients stay attached."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import trio
import trio.testing

from vspc.console.client import Endpoint, list_consoles

from .test_console_support import KEY, attach_client, make_config, read_exactly, short_dir, start

__all__ = ["short_dir"]


async def test_reconfigure_keeps_clients_and_moves_the_socket(
    short_dir: Path, nursery: trio.Nursery
) -> None:
    cfg = make_config(short_dir, ring_bytes=100)
    svc = await start(nursery, cfg)
    con = svc.open(KEY, "vm")
    await con.from_vm(b"a" * 100)
    stream, status, buf = await attach_client(svc, "vm", replay=1000)
    assert status["replay"] == 100
    assert await read_exactly(stream, buf, 100) == b"a" * 100

    new_sock = short_dir / "new.sock"
    new = replace(
        cfg, ring_bytes=10, client_queue_bytes=5000, socket=new_sock, socket_mode=0o660, log_keep=1
    )
    await svc.reconfigure(new)
    assert not (short_dir / "c.sock").exists()
    assert (new_sock.stat().st_mode & 0o777) == 0o660
    assert len(await list_consoles(Endpoint(socket=new_sock))) == 1

    await con.from_vm(b"after")
    with trio.fail_after(5):
        assert await read_exactly(stream, buf, 5) == b"after"  # the old client is still here
    assert con.replay_size(1000) == 10
    # the new client limit applies: 6000 bytes at once is too much for a stalled client
    stalled, _, _ = await attach_client(svc, "vm")
    await con.from_vm(b"x" * 6000)
    assert svc.metrics.slow_clients_dropped_total._value.get() >= 1
    await stream.aclose()
    await stalled.aclose()


async def test_bad_new_endpoint_keeps_the_old_one(short_dir: Path, nursery: trio.Nursery) -> None:
    cfg = make_config(short_dir)
    svc = await start(nursery, cfg)
    blocker = short_dir / "file"
    blocker.write_text("not a socket")
    await svc.reconfigure(replace(cfg, socket=blocker))
    assert svc.config.socket == short_dir / "c.sock"
    assert await list_consoles(Endpoint(socket=short_dir / "c.sock")) == []
