"""Issue 11, items 7, 8, 9: nobody speaks for a VM on the Telnet port that they are not.

Each attack runs against a real `vic vspc` while an honest ESX VM on its own
source address keeps writing; its console log must stay byte-exact, its
operator's keystrokes must keep reaching it, and the daemon's descriptors and
memory come back near where they were.
"""

from __future__ import annotations

import random
from pathlib import Path

import trio

from tests.hostile.appliance import (
    ATTACKER_HOST,
    OTHER_HOST,
    VICTIM_HOST,
    Baseline,
    Vspc,
    closed_by_peer,
    endpoint_stream,
    honest_vm,
    open_esx,
    origin_header,
    start_vspc,
)
from tests.support.waiting import wait_any, wait_until, wait_until_async
from vic.lab import telnet_wire as tw
from vic.lab.esx_sim import EsxConnection, SimVM, VMotionNotNow, known_without, migrate

REFUSED = "vspc_telnet_refused_total"
REFUSAL_WORDS = ("refus", "reject", "denied", "takeover")


# ---- item 7: Telnet takeover


async def test_takeover_from_another_source_is_refused(vspc: Vspc) -> None:
    """A second connection from another address that claims a live VM's UUID does
    not take its console: it is refused (logged, counted), the victim stays
    connected and keeps receiving the operator's keystrokes (passwords)."""
    async with trio.open_nursery() as n:
        victim = await honest_vm(n, vspc, VICTIM_HOST)
        operator = await vspc.attach(victim.uuid, "rw")
        base = Baseline.of(vspc)
        refused = await vspc.daemon.metric(REFUSED)
        stop = trio.Event()
        n.start_soon(victim.pump, stop)

        attacker = await open_esx(n, vspc, victim.conn.vm, ATTACKER_HOST, wait_ready=False)
        with trio.fail_after(10):  # the attacker has claimed the UUID (or been refused)
            await wait_any(attacker.identity_asked, attacker.closed)
        await operator.send_all(b"password-during\r")
        await attacker.wait_closed(timeout=20)  # refused within the probe's bound
        await operator.send_all(b"password-after\r")

        want = b"password-during\rpassword-after\r"
        with trio.fail_after(10):
            assert await victim.conn.receive_console_exactly(len(want)) == want
        assert not victim.conn.closed.is_set()
        assert attacker.console_pending() == b"", "the attacker got the operator's keystrokes"
        stop.set()
        await victim.check()
        assert await vspc.daemon.metric(REFUSED) >= refused + 1
        assert any(
            ATTACKER_HOST in ln and any(w in ln.lower() for w in REFUSAL_WORDS)
            for ln in vspc.daemon.log_lines()
        ), "no log line refusing the attacker"
        listed = [c for c in await vspc.consoles() if c["uuid"] == victim.uuid]
        assert listed and listed[0]["connected"]
        await base.back(vspc)
        await operator.aclose()
        await victim.conn.aclose()


async def test_reconnect_from_same_source_takes_over(vspc: Vspc) -> None:
    """ESX reconnects legitimately: a new connection from the same host address for
    the same VM carries its console from then on (a guard for the takeover rule)."""
    async with trio.open_nursery() as n:
        first = await honest_vm(n, vspc, VICTIM_HOST)
        again = await open_esx(n, vspc, first.conn.vm, VICTIM_HOST)
        await first.conn.wait_closed(timeout=20)
        client = await vspc.attach(first.uuid, "rw")
        async with client:
            await client.send_all(b"after-reconnect\r")
            with trio.fail_after(10):
                assert await again.receive_console_exactly(16) == b"after-reconnect\r"
        await again.aclose()


async def test_source_outside_allowed_sources_is_refused_at_accept(tmp_path: Path) -> None:
    """`[listen] allowed-sources`: a connection from elsewhere is closed before any
    protocol (no negotiation sent), logged and counted; allowed hosts work."""
    async with start_vspc(tmp_path, listen={"allowed-sources": [f"{VICTIM_HOST}/32"]}) as vspc:
        async with trio.open_nursery() as n:
            honest = await honest_vm(n, vspc, VICTIM_HOST)
            base = Baseline.of(vspc)
            for _ in range(20):
                s = await trio.open_tcp_stream(
                    "127.0.0.1", vspc.esx_port, local_address=ATTACKER_HOST
                )
                async with s:
                    assert await closed_by_peer(s) == b"", "negotiated with a refused source"
            await honest.send(4096)
            await honest.check()
            await honest.check_input()
            assert await vspc.daemon.metric(REFUSED) >= 20
            assert any(ATTACKER_HOST in ln for ln in vspc.daemon.log_lines())
            await base.back(vspc)
            await honest.conn.aclose()


# ---- item 8: vMotion lockout


async def _begin(conn: EsxConnection, seq: bytes) -> bool:
    """BEGIN on ``conn``; True for GOAHEAD (a slot held until the vMotion times out)."""
    try:
        await conn.vmotion_begin(seq)
    except VMotionNotNow:
        return False
    return True


async def test_begin_flood_does_not_lock_out_vmotion(vspc: Vspc) -> None:
    """BEGINs from 16 connections that never said which VM they are and from 64 that
    claimed made-up UUIDs, all from one host (as many as `vmotion.max-concurrent`):
    the unidentified hold no slot, the one host holds at most its per-source cap,
    and an honest vMotion from another host gets GOAHEAD and completes."""
    rng = random.Random(8)
    async with trio.open_nursery() as n:
        honest = await honest_vm(n, vspc, VICTIM_HOST)
        base = Baseline.of(vspc)
        anonymous = known_without(tw.VM_VC_UUID, tw.GET_VM_VC_UUID)
        attackers = []
        for k in range(16):
            vm = SimVM.random(rng, name=f"anon-{k}")
            c = await open_esx(n, vspc, vm, ATTACKER_HOST, known=anonymous, do_proxy=False)
            assert not await _begin(c, rng.randbytes(8)), (
                "GOAHEAD for a connection without identity"
            )
            attackers.append(c)
        held = 0
        for k in range(64):
            c = await open_esx(n, vspc, SimVM.random(rng, name=f"claim-{k}"), ATTACKER_HOST)
            held += await _begin(c, rng.randbytes(8))
            attackers.append(c)
        assert held <= 8, f"one source holds {held} vMotion slots (max-per-source default 8)"

        mig = await migrate(honest.conn, "127.0.0.1", vspc.esx_port, nursery=n, rng=rng)
        honest.conn = mig.dest
        await honest.send(8192)
        await honest.check()
        await honest.check_input()
        for c in attackers:
            await c.aclose()
        await base.back(vspc)
        await mig.dest.aclose()


async def test_vmotion_slots_are_capped_per_source(tmp_path: Path) -> None:
    """`[vmotion] max-per-source`: one host's BEGINs beyond its cap get NOTNOW and
    never refuse another host's vMotion."""
    rng = random.Random(9)
    async with start_vspc(tmp_path, vmotion={"max-per-source": 4}) as vspc:
        async with trio.open_nursery() as n:
            honest = await honest_vm(n, vspc, VICTIM_HOST)
            crowd = [await open_esx(n, vspc, SimVM.random(rng), ATTACKER_HOST) for _ in range(5)]
            for c in crowd[:4]:
                await c.vmotion_begin(rng.randbytes(8))  # GOAHEAD, then left pending
            notnow = False
            try:
                await crowd[4].vmotion_begin(rng.randbytes(8))
            except VMotionNotNow:
                notnow = True
            assert notnow, "a fifth BEGIN from one source got GOAHEAD with max-per-source = 4"
            mig = await migrate(honest.conn, "127.0.0.1", vspc.esx_port, nursery=n, rng=rng)
            honest.conn = mig.dest
            await honest.send(4096)
            await honest.check()
            for c in crowd:
                await c.aclose()
            await mig.dest.aclose()


# ---- item 9: log injection


FORGED = "FORGED 2026-12-07 00:00:00,000 ERROR vspc: operator password is hunter2"


async def test_wire_text_cannot_forge_log_lines(vspc: Vspc) -> None:
    """A DO-PROXY URI and a VM name with a newline and an ESC (and a relayed VM
    name with U+2028 and NEL, which the header's control check lets through)
    produce no forged daemon log line and no raw control character."""
    rng = random.Random(9)
    vm = SimVM(uuid=SimVM.random(rng).uuid, name=f"evil\n{FORGED}\x1b[2J")
    async with trio.open_nursery() as n:
        honest = await honest_vm(n, vspc, OTHER_HOST)
        base = Baseline.of(vspc)
        evil = await open_esx(
            n, vspc, vm, ATTACKER_HOST, service_uri=f"vic-console\n{FORGED}\x1b]0;owned\x07"
        )
        await evil.send_console(b"hello\n")
        relayed = await endpoint_stream(
            vspc, origin_header("esx-a", f"vm\u2028{FORGED}\x85x") + b"bytes"
        )

        async def decided() -> bool:  # accepted or rejected
            return await vspc.daemon.metric("vspc_relayed_streams_total") >= 1

        await wait_until_async(decided, 10, "the relayed stream handled")
        await relayed.aclose()
        await wait_until(lambda: "DO-PROXY" in vspc.daemon.log(), 10, "the DO-PROXY log line")
        await honest.send(4096)
        await honest.check()
        text = vspc.daemon.log()
        lines = text.splitlines()  # (splits on \u2028 and \x85 too, as log viewers do)
        assert not [ln for ln in lines if ln.startswith("FORGED")], "a forged log line"
        for ch in ("\x1b", "\x07", "\u2028", "\x85"):
            assert ch not in text, f"raw {ch!r} in the daemon log"
        await evil.aclose()
        await base.back(vspc)
        await honest.conn.aclose()
