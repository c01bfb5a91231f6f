"""Issue 11, items 11, 12, 13: no client pins the vSPC's descriptors or memory.

Each attack comes from its own loopback address while an honest ESX VM writes
on; afterwards the daemon's open descriptors (/proc/<pid>/fd) and resident
memory (VmRSS) are back near the baseline taken before the attack.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.hostile.appliance import (
    ATTACKER_HOST,
    VICTIM_HOST,
    Vspc,
    closed_by_peer,
    honest_vm,
    start_vspc,
)
from tests.support.daemons import MiB
from tests.support.waiting import wait_until, wait_until_async
from vic.lab import telnet_wire as tw
from vic.lab.esx_sim import SimVM

FD_SLACK = 5
RSS_SLACK = 20 * MiB
GROWTH_BOUND = 20 * MiB  # the never-reading clients: ~5 MiB once the vSPC pushes back
CONNECTIONS = "vspc_esx_connections"
REFUSED = "vspc_telnet_refused_total"  # reasons as merged with the Telnet guards


async def attacker_socket(vspc: Vspc, *, rcvbuf: int | None = None) -> trio.SocketStream:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # before connect, so the window stays small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await sock.bind((ATTACKER_HOST, 0))
    await sock.connect(("127.0.0.1", vspc.esx_port))
    return trio.SocketStream(sock)


async def send_until_blocked(
    stream: trio.SocketStream, data: bytes, total: int, stall: float = 2.0
) -> int:
    """Send ``data`` repeatedly up to ``total`` bytes; stop early once the daemon
    stops taking them for ``stall`` seconds (its back-pressure) or closes."""
    sent = 0
    while sent < total:
        with trio.move_on_after(stall) as scope:
            try:
                await stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return sent
        if scope.cancelled_caught:
            return sent
        sent += len(data)
    return sent


# ---- item 11: over 1 MiB before identifying, then close


async def test_flood_before_identity_then_close_is_reaped(vspc: Vspc) -> None:
    """16 connections each send 1.25 MiB before saying which VM they are, then
    close: the vSPC sees the close and lets go of them (fds and memory back)
    well before any identity timeout would have reaped them."""
    async with trio.open_nursery() as n:
        honest = await honest_vm(n, vspc, VICTIM_HOST)
        fds, rss = vspc.daemon.sockets(), vspc.daemon.rss()
        conns = await vspc.daemon.metric(CONNECTIONS)
        stop = trio.Event()
        n.start_soon(honest.pump, stop)
        junk = b"A" * (64 << 10)
        for _ in range(16):
            s = await attacker_socket(vspc)
            await send_until_blocked(s, junk, 20 * len(junk), stall=1.0)
            await trio.aclose_forcefully(s)
        # identify-timeout defaults to 10 s: the close itself must be noticed
        await wait_until(
            lambda: vspc.daemon.sockets() <= fds + FD_SLACK,
            5,
            "descriptors of the closed flooders released",
        )

        async def counted_out() -> bool:
            return await vspc.daemon.metric(CONNECTIONS) == conns

        await wait_until_async(counted_out, 5, f"{CONNECTIONS} back to {conns}")
        assert await vspc.daemon.metric(REFUSED, reason="flood") >= 16
        assert vspc.daemon.rss() <= rss + RSS_SLACK
        stop.set()
        await honest.check()
        await honest.check_input()
        await honest.conn.aclose()


# ---- item 12: option negotiation replies to a client that never reads


NEGOTIATION = (
    tw.ext(tw.KNOWN_SUBOPTIONS_1, bytes((tw.VM_VC_UUID, tw.VM_NAME)))
    + tw.negotiation(tw.DO, 99)
    + tw.negotiation(tw.WILL, 98)
)


@pytest.mark.slow
async def test_clients_that_never_read_cannot_grow_the_vspc(vspc: Vspc) -> None:
    """Four clients send option negotiations (each answered with several times
    its size) and never read: the replies queue only up to a bound (the vSPC
    stops reading or closes them); its memory stays within +20 MiB (main: it
    grows by about twice what they send, ~90 MiB for 4 x 12 MiB)."""
    async with trio.open_nursery() as n:
        honest = await honest_vm(n, vspc, VICTIM_HOST)
        fds, rss = vspc.daemon.sockets(), vspc.daemon.rss()
        peak = rss
        stop = trio.Event()
        n.start_soon(honest.pump, stop)
        clients = [await attacker_socket(vspc, rcvbuf=4096) for _ in range(4)]
        for c in clients:
            await c.send_all(tw.negotiation(tw.WILL, tw.VMWARE_EXT))
        block = NEGOTIATION * (16384 // len(NEGOTIATION))
        # Until every client is blocked (the vSPC pushes back: ~5 MiB grown) or
        # the vSPC has grown past the bound (~2 bytes queued per byte sent on
        # main); 45 s at most on a busy machine.
        with trio.move_on_after(45):
            async with trio.open_nursery() as flood:
                for c in clients:
                    flood.start_soon(send_until_blocked, c, block, 16 * MiB)
                while flood.child_tasks and peak - rss < GROWTH_BOUND:
                    peak = max(peak, vspc.daemon.rss())
                    with trio.move_on_after(0.1):
                        await trio.sleep_forever()
                flood.cancel_scope.cancel()
        peak = max(peak, vspc.daemon.rss())
        assert peak - rss < GROWTH_BOUND, f"the vSPC grew by {(peak - rss) / MiB:.0f} MiB"
        stop.set()
        await honest.check()
        for c in clients:
            await trio.aclose_forcefully(c)
        await wait_until(lambda: vspc.daemon.sockets() <= fds + FD_SLACK, 10, "fds back")
        await honest.conn.aclose()


# ---- item 13: identity and idle timeouts


@pytest.mark.slow
async def test_slowloris_connections_are_closed_after_identify_timeout(tmp_path: Path) -> None:
    """1,000 connections that trickle a byte and never identify are all closed
    once `[listen] identify-timeout` (1 s here) passes; the honest VM is not."""
    async with start_vspc(tmp_path, listen={"identify-timeout": 1.0}) as vspc:
        async with trio.open_nursery() as n:
            honest = await honest_vm(n, vspc, VICTIM_HOST)
            fds, rss = vspc.daemon.sockets(), vspc.daemon.rss()
            loris = []
            for _ in range(1000):
                s = await attacker_socket(vspc)
                await s.send_all(bytes((tw.IAC,)))  # half a command, then nothing
                loris.append(s)
            await honest.send(4096)
            await wait_until(
                lambda: vspc.daemon.sockets() <= fds + FD_SLACK,
                30,
                "the 1,000 unidentified connections closed",
            )
            with trio.fail_after(10):
                for s in loris:
                    await closed_by_peer(s)
                    await trio.aclose_forcefully(s)
            assert vspc.daemon.rss() <= rss + RSS_SLACK
            assert await vspc.daemon.metric(REFUSED, reason="identify_timeout") >= 1000
            assert not honest.conn.closed.is_set()
            await honest.send(4096)
            await honest.check()
            await honest.check_input()
            await honest.conn.aclose()


def deaf_esx(vm: SimVM) -> bytes:
    """What a host that identifies and then answers nothing ever sends."""
    return (
        tw.negotiation(tw.WILL, tw.VMWARE_EXT)
        + tw.ext(tw.KNOWN_SUBOPTIONS_1, bytes((tw.VM_VC_UUID,)))
        + tw.ext(tw.VM_VC_UUID, vm.uuid.encode())
    )


async def test_silent_connection_that_fails_its_probe_is_closed(tmp_path: Path) -> None:
    """`idle-probe` / `probe-timeout`: an identified connection that falls silent
    and does not answer the liveness probe is closed and its VM shown
    disconnected; an honest idle VM answers the probe and stays."""
    rng = random.Random(13)
    over: dict[str, Any] = {"listen": {"idle-probe": 1.0, "probe-timeout": 1.0}}
    async with start_vspc(tmp_path, **over) as vspc:
        async with trio.open_nursery() as n:
            honest = await honest_vm(n, vspc, VICTIM_HOST)
            vm = SimVM.random(rng, name="deaf")
            s = await attacker_socket(vspc)
            await s.send_all(deaf_esx(vm))

            async def deaf_listed() -> bool:
                return any(c["uuid"] == vm.canonical_uuid for c in await vspc.consoles())

            await wait_until_async(deaf_listed, 5, "the deaf VM's console listed")
            await closed_by_peer(s, timeout=15)
            await s.aclose()
            listed = {c["uuid"]: c for c in await vspc.consoles()}
            assert not listed[vm.canonical_uuid]["connected"]
            assert await vspc.daemon.metric(REFUSED, reason="idle") >= 1
            assert listed[honest.uuid]["connected"] and not honest.conn.closed.is_set()
            await honest.send(1024)
            await honest.check()
            await honest.check_input()
            await honest.conn.aclose()
