"""The ESX simulator's vMotion roles, whole migrations and hostile input, checked
against a tiny fake vSPC that works on raw bytes (:mod:`tests.vic.esx_fake_vspc`).
"""

from __future__ import annotations

import os
import random
import time

import pytest
import trio

from tests.support.waiting import wait_until_async
from tests.vic.esx_fake_vspc import (
    IAC,
    SB,
    SE,
    VM,
    RawPeer,
    dbl,
    fake_handshake,
    frame,
    open_pair,
    port_of,
)
from vic.lab import telnet_wire as tw
from vic.lab.esx_sim import (
    ConnectionClosed,
    EsxConnection,
    VMotionNotNow,
    VMotionRefused,
    VMotionTimeout,
    migrate,
    random_seq,
)

# ------------------------------------------------------------------ vMotion


async def test_vmotion_source_goahead_with_ff(listener: trio.SocketListener) -> None:
    seq = b"\xff\x01\xff\xff\x02\xff"
    secret = b"\xff\xfe\x00\xff"
    async with trio.open_nursery() as n:
        c, peer = await open_pair(n, listener)
        async with trio.open_nursery() as inner:

            async def vspc() -> None:
                await peer.expect_exact(frame(40, dbl(seq)))
                await peer.send(frame(41, dbl(seq + secret)), per_byte=True)

            inner.start_soon(vspc)
            assert await c.vmotion_begin(seq) == secret
        assert len(c.stats.begin_latencies) == 1
        assert len(c.stats.begin_receipt_latencies) == 1
        assert 0 <= c.stats.begin_receipt_latencies[0] <= c.stats.begin_latencies[0]
        await c.vmotion_abort()
        await peer.expect_exact(frame(48))
        assert not c.violations
        await c.aclose()


async def test_vmotion_answer_timed_by_kernel_arrival(listener: trio.SocketListener) -> None:
    # kernel_timestamps: the answer is also timed by when it reached this host,
    # so a simulated host whose own loop is busy does not charge that to the vSPC.
    seq = b"\x01\x02\xff\x03"
    secret = b"\xff\x00\x07"
    busy = 0.08
    async with trio.open_nursery() as n:
        c, peer = await open_pair(n, listener, kernel_timestamps=True)

        async def stamped() -> bool:
            # Linux turns receive stamping on lazily: segments that arrive before
            # it takes effect carry no TCP timestamp. Exchange console bytes
            # until one comes stamped, so the answer below will be too.
            await peer.send(b"ping")
            await c.receive_console_exactly(4)
            return c._last_rx_ns is not None

        await wait_until_async(stamped, 10, "the kernel stamps what arrives")
        async with trio.open_nursery() as inner:

            async def vspc() -> None:
                await peer.expect_exact(frame(40, dbl(seq)))
                # the answer goes out and, with no checkpoint in between, this
                # host's event loop is busy (no await) while the answer waits
                assert isinstance(peer.stream, trio.SocketStream)
                sock = peer.stream.socket
                assert os.write(sock.fileno(), frame(41, dbl(seq + secret))) > 0
                end = time.perf_counter() + busy
                while time.perf_counter() < end:
                    pass

            inner.start_soon(vspc)
            assert await c.vmotion_begin(seq) == secret
        (kernel,) = c.stats.begin_kernel_latencies
        (receipt,) = c.stats.begin_receipt_latencies
        assert receipt >= busy
        # The answer reached the kernel as it was written, before the busy loop:
        # the reader saw it at least ``busy`` later. (Compared with each other, not
        # with ``busy`` alone: how long this loaded host takes to schedule the
        # simulated vSPC task before the write is not the point.)
        assert 0 < kernel and receipt - kernel >= 0.9 * busy
        assert not c.violations
        await c.aclose()


async def test_vmotion_notnow_and_bad_goahead(listener: trio.SocketListener) -> None:
    async with trio.open_nursery() as n:
        c, peer = await open_pair(n, listener)
        await peer.send(frame(43, b"s1"))
        with pytest.raises(VMotionNotNow):
            await c.vmotion_begin(b"s1")
        await peer.send(frame(41, b"other-seq-secret"))
        with pytest.raises(Exception, match="sequence"):
            await c.vmotion_begin(b"s2")
        assert any("does not start with seq" in v for v in c.violations)
        await c.aclose()


async def test_vmotion_begin_gives_up(
    listener: trio.SocketListener, autojump_clock: trio.abc.Clock
) -> None:
    async with trio.open_nursery() as n:
        c, peer = await open_pair(n, listener)
        t0 = trio.current_time()
        with pytest.raises(VMotionTimeout):
            await c.vmotion_begin(b"seq")
        assert trio.current_time() - t0 == pytest.approx(5.0, abs=0.5)
        await peer.expect_exact(frame(40, b"seq"))
        await c.aclose()


async def test_late_goahead_after_give_up_is_ignored(
    listener: trio.SocketListener, autojump_clock: trio.abc.Clock
) -> None:
    async with trio.open_nursery() as n:
        c, peer = await open_pair(n, listener)
        with pytest.raises(VMotionTimeout):
            await c.vmotion_begin(b"old", timeout=1.0)
        # The GOAHEAD for the abandoned BEGIN arrives late, just before the next one's.
        await peer.send(frame(41, b"old-secret") + frame(43, b"old") + frame(41, b"newSECRET"))
        assert await c.vmotion_begin(b"new") == b"SECRET"
        assert c.stats.stale_replies == 2
        assert not c.violations
        await c.aclose()


async def test_vmotion_begin_connection_closed(listener: trio.SocketListener) -> None:
    async with trio.open_nursery() as n:
        c, peer = await open_pair(n, listener)
        await peer.stream.aclose()
        with pytest.raises(ConnectionClosed):
            await c.vmotion_begin(b"seq")


async def test_destination_role(listener: trio.SocketListener) -> None:
    seq, secret = b"\x00\xff\x10", b"\xff\xff\xffSECRET"
    async with trio.open_nursery() as n:
        dest, peer = await open_pair(n, listener, do_proxy=False, uri=None)
        async with trio.open_nursery() as inner:

            async def vspc() -> None:
                got = await peer.expect(frame(44, dbl(seq + secret)))
                assert frame(70, b"S") not in got
                await peer.send(frame(45, dbl(seq)))

            inner.start_soon(vspc)
            await dest.vmotion_peer(seq, secret)
        await dest.vmotion_complete(seq)
        await peer.expect_exact(frame(46, dbl(seq)))
        await dest.send_console(b"after")
        await peer.expect_exact(b"after")
        assert not dest.violations
        await dest.aclose()


async def test_destination_refused(listener: trio.SocketListener) -> None:
    async with trio.open_nursery() as n:
        dest, peer = await open_pair(n, listener, do_proxy=False, uri=None)

        async def vspc() -> None:
            await peer.expect_exact(frame(44, b"seqwrong"))
            await peer.stream.aclose()  # the vSPC drops a PEER with a wrong cookie

        n.start_soon(vspc)
        with pytest.raises(VMotionRefused):
            await dest.vmotion_peer(b"seq", b"wrong")


async def test_destination_silence(
    listener: trio.SocketListener, autojump_clock: trio.abc.Clock
) -> None:
    async with trio.open_nursery() as n:
        dest, _peer = await open_pair(n, listener, do_proxy=False, uri=None)
        with pytest.raises(VMotionTimeout):
            await dest.vmotion_peer(b"unknown-seq", b"x", timeout=2.0)
        await dest.aclose()


class MiniVspc:
    """A fake vSPC that accepts connections and does one vMotion, by bytes."""

    def __init__(self, listener: trio.SocketListener, *, secret: bytes, refuse_peer: bool = False):
        self.listener = listener
        self.secret = secret
        self.refuse_peer = refuse_peer
        self.source: RawPeer | None = None
        self.dest: RawPeer | None = None
        self.source_tail = b""

    async def run(self, seq: bytes) -> None:
        self.source = RawPeer(await self.listener.accept())
        await fake_handshake(self.source)
        await self.source.expect_exact(b"before" + frame(40, dbl(seq)))
        await self.source.send(frame(41, dbl(seq + self.secret)))
        self.dest = RawPeer(await self.listener.accept())
        await fake_handshake(self.dest, uri=None)
        await self.dest.expect_exact(frame(44, dbl(seq + self.secret)))
        if self.refuse_peer:
            await self.dest.stream.aclose()
            await self.source.expect_exact(frame(48))
            return
        await self.dest.send(frame(45, dbl(seq)))
        await self.dest.expect_exact(frame(46, dbl(seq)))
        self.source_tail = await self.source.read_until_eof()


async def test_migrate(listener: trio.SocketListener) -> None:
    rng = random.Random(7)
    seq = random_seq(rng, with_ff=True)
    assert seq.count(0xFF) >= 2
    fake = MiniVspc(listener, secret=b"\xffk\xff")
    async with trio.open_nursery() as n:
        n.start_soon(fake.run, seq)
        c = await EsxConnection.open(n, "127.0.0.1", port_of(listener), vm=VM)
        await c.send_console(b"before")
        m = await migrate(c, "127.0.0.1", port_of(listener), nursery=n, seq=seq)
        assert m.secret == b"\xffk\xff" and m.seq == seq
        assert c.closed.is_set()
        await m.dest.send_console(b"after")
        assert fake.dest is not None
        await fake.dest.expect_exact(b"after")
        await m.dest.aclose()
    assert fake.source_tail == b""


async def test_migrate_refused_aborts_at_source(listener: trio.SocketListener) -> None:
    fake = MiniVspc(listener, secret=b"s", refuse_peer=True)
    async with trio.open_nursery() as n:
        n.start_soon(fake.run, b"q")
        c = await EsxConnection.open(n, "127.0.0.1", port_of(listener), vm=VM)
        await c.send_console(b"before")
        with pytest.raises(VMotionRefused):
            await migrate(c, "127.0.0.1", port_of(listener), nursery=n, seq=b"q")
        assert not c.closed.is_set()  # the VM runs on at the source
        await c.send_console(b"still here")
        assert fake.source is not None
        await fake.source.expect_exact(b"still here")
        await c.aclose()


# ------------------------------------------------------------------ hostile


async def test_hostile_senders(listener: trio.SocketListener) -> None:
    async with trio.open_nursery() as n:
        c, peer = await open_pair(n, listener)
        await c.send_ext(tw.VMOTION_PEER, b"\xffseq", escaped=False)
        await peer.expect_exact(frame(44, b"\xffseq"))
        junk = await c.send_garbage(random.Random(1), 50)
        assert junk.endswith(bytes([IAC, SE]))
        await peer.expect_exact(junk)
        await c.send_overlong_sub(10_000)
        await peer.expect_exact(frame(70, b"S" + b"x" * 10_000))
        await c.send_overlong_sub(100, terminate=False)
        await peer.expect_exact(bytes([IAC, SB, 232, 70]) + b"S" + b"x" * 100)
        await c.aclose()


async def test_overlong_sub_from_vspc_closes(listener: trio.SocketListener) -> None:
    async with trio.open_nursery() as n:
        c, peer = await open_pair(n, listener, max_sb=100)
        await peer.send(bytes([IAC, SB, 232, 82]) + b"y" * 200)
        await c.wait_closed(5)
        assert any("longer than" in v for v in c.violations)
        assert await peer.read_until_eof() == b""


async def test_broken_sb_from_vspc_closes(listener: trio.SocketListener) -> None:
    async with trio.open_nursery() as n:
        c, peer = await open_pair(n, listener)
        await peer.send(b"ok" + bytes([IAC, SB, 232, 41, 1, IAC, 7]))
        await c.wait_closed(5)
        assert await c.receive_console() == b"ok"
        assert any("inside a subnegotiation" in v for v in c.violations)
