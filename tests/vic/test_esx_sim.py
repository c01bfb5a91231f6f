"""The ESX simulator, checked against a tiny fake vSPC that works on raw bytes.

The fake vSPC below uses no Telnet codec at all: it compares and builds wire
bytes by hand, so the simulator is tested independently of ``common.proto.telnet`` and
of its own decoder.
"""

from __future__ import annotations

import os
import random
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.waiting import wait_until_async
from vic.lab import telnet_wire as tw
from vic.lab.esx_sim import (
    ConnectionClosed,
    EsxBehaviour,
    EsxConnection,
    HandshakeTimeout,
    SimVM,
    VMotionNotNow,
    VMotionRefused,
    VMotionTimeout,
    esx_uuid_format,
    known_without,
    migrate,
    random_seq,
)

IAC, SB, SE = 255, 250, 240
DO, DONT, WILL, WONT = 253, 254, 251, 252

VM = SimVM(
    uuid="42 3f 5a 1b 2c 3d 4e 5f-60 71 82 93 a4 b5 c6 d7",
    name="web-01 ü",
    bios_uuid="56 4d 00 11 22 33 44 55-66 77 88 99 aa bb cc dd",
    location_uuid="00 11 22 33 44 55 66 77-88 99 aa bb cc dd ee ff",
)

# The bytes the simulated ESX sends first (initiate=True, offers AUTH and COM-PORT).
OFFER = bytes([IAC, WILL, 0, IAC, DO, 0, IAC, WILL, 3, IAC, DO, 3, IAC, WILL, 232]) + bytes(
    [IAC, WILL, 37, IAC, WILL, 44]
)
# What a vSPC answers: accept BINARY/SGA/232, refuse AUTHENTICATION and COM-PORT.
ANSWER = bytes([IAC, DO, 0, IAC, WILL, 0, IAC, DO, 3, IAC, WILL, 3, IAC, DO, 232]) + bytes(
    [IAC, DONT, 37, IAC, DONT, 44]
)


def frame(cmd: int, payload: bytes = b"") -> bytes:
    """An option-232 frame built by hand (payload already escaped by the caller)."""
    return bytes([IAC, SB, 232, cmd]) + payload + bytes([IAC, SE])


def dbl(b: bytes) -> bytes:
    out = bytearray()
    for x in b:
        out.append(x)
        if x == 0xFF:
            out.append(0xFF)
    return bytes(out)


KS1 = frame(0, bytes(sorted(tw.EXT_NAMES)))


class RawPeer:
    """One accepted connection of the fake vSPC: raw bytes only."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.eof = False

    async def expect(self, needle: bytes, timeout: float = 5.0) -> bytes:
        """Read until ``needle`` appears; return everything up to and including it."""
        with trio.fail_after(timeout):
            while (k := self.buf.find(needle)) < 0:
                chunk = await self.stream.receive_some(65536)
                if not chunk:
                    raise AssertionError(f"EOF waiting for {needle!r}; got {bytes(self.buf)!r}")
                self.buf += chunk
        out = bytes(self.buf[: k + len(needle)])
        del self.buf[: k + len(needle)]
        return out

    async def expect_exact(self, wanted: bytes, timeout: float = 5.0) -> None:
        got = await self.expect(wanted, timeout)
        assert got == wanted, f"unexpected bytes before {wanted!r}: {got!r}"

    async def read_until_eof(self, timeout: float = 5.0) -> bytes:
        with trio.fail_after(timeout):
            while True:
                try:
                    chunk = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    chunk = b""
                if not chunk:
                    break
                self.buf += chunk
        out = bytes(self.buf)
        self.buf.clear()
        return out

    async def send(self, data: bytes, *, per_byte: bool = False) -> None:
        if per_byte:
            for k in range(len(data)):
                await self.stream.send_all(data[k : k + 1])
        else:
            await self.stream.send_all(data)


async def fake_handshake(
    peer: RawPeer, vm: SimVM = VM, *, uri: bytes | None = b"Svic-console", per_byte: bool = False
) -> None:
    """The vSPC's side of connecting, by bytes: negotiation, KS, DO-PROXY, identity."""
    await peer.expect_exact(OFFER)
    await peer.send(ANSWER, per_byte=per_byte)
    await peer.expect_exact(KS1)
    if uri is not None:
        await peer.expect_exact(frame(70, uri))
    reply = frame(1, bytes([1, 3, 41, 43, 45, 71, 73, 81, 83]))
    if uri is not None:
        reply += frame(71)
    reply += frame(81) + frame(83)
    await peer.send(reply, per_byte=per_byte)
    await peer.expect_exact(frame(80, vm.uuid.encode()))
    await peer.expect_exact(frame(82, vm.name.encode("utf-8")))


@pytest.fixture
async def listener() -> AsyncIterator[trio.SocketListener]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    yield listeners[0]
    await listeners[0].aclose()


def port_of(listener: trio.SocketListener) -> int:
    return int(listener.socket.getsockname()[1])


async def open_pair(
    nursery: trio.Nursery,
    listener: trio.SocketListener,
    *,
    handshake: bool = True,
    uri: bytes | None = b"Svic-console",
    vm: SimVM = VM,
    **knobs: object,
) -> tuple[EsxConnection, RawPeer]:
    send, recv = trio.open_memory_channel[EsxConnection](1)

    async def esx() -> None:
        c = await EsxConnection.open(nursery, "127.0.0.1", port_of(listener), vm=vm, **knobs)  # type: ignore[arg-type]
        await send.send(c)

    nursery.start_soon(esx)
    peer = RawPeer(await listener.accept())
    if handshake:
        await fake_handshake(peer, vm, uri=uri)
    with trio.fail_after(5):
        conn = await recv.receive()
    return conn, peer


# ------------------------------------------------------------------ wire codec


def test_uuid_format() -> None:
    assert esx_uuid_format("423F5A1B2C3D4E5F60718293A4B5C6D7") == VM.uuid
    assert VM.canonical_uuid == "423f5a1b2c3d4e5f60718293a4b5c6d7"
    with pytest.raises(ValueError):
        esx_uuid_format("xyz")


def test_encoders_escape_ff() -> None:
    assert tw.escape(b"a\xffb\xff\xff") == b"a\xff\xffb\xff\xff\xff\xff"
    assert tw.ext(40, b"\xff\x01") == frame(40, b"\xff\xff\x01")
    assert tw.ext(40, b"\xff", escaped=False) == frame(40, b"\xff")
    assert tw.negotiation(tw.DO, 232) == bytes([IAC, DO, 232])


def test_decoder_events() -> None:
    wire = (
        b"ab\xff\xffc"
        + bytes([IAC, DO, 0])
        + frame(41, b"\x01\xff\xff\x02")
        + bytes([IAC, 241])
        + b"\x00\r\n"
    )
    assert tw.decode_all(wire) == [
        tw.Data(b"ab\xffc"),
        tw.Negotiation(DO, 0),
        tw.Subnegotiation(232, b"\x29\x01\xff\x02"),
        tw.Command(241),
        tw.Data(b"\x00\r\n"),
    ]


def test_decoder_rejects_bad_input() -> None:
    with pytest.raises(tw.WireError):
        tw.Decoder(max_sb=10).feed(frame(70, b"S" + b"x" * 20))
    with pytest.raises(tw.WireError):
        tw.decode_all(bytes([IAC, SB, 232, 1, IAC, 5]))
    with pytest.raises(tw.WireError):
        tw.decode_all(bytes([IAC, SE]))


def _merge(events: list[tw.Event]) -> list[tw.Event]:
    out: list[tw.Event] = []
    for ev in events:
        if isinstance(ev, tw.Data) and out and isinstance(out[-1], tw.Data):
            out[-1] = tw.Data(out[-1].data + ev.data)
        elif not (isinstance(ev, tw.Data) and not ev.data):
            out.append(ev)
    return out


_items = st.one_of(
    st.binary(min_size=1, max_size=40).map(lambda b: ("data", b)),
    st.tuples(st.sampled_from([DO, DONT, WILL, WONT]), st.integers(0, 255)).map(
        lambda t: ("neg", t)
    ),
    st.tuples(st.integers(0, 255), st.binary(max_size=30)).map(lambda t: ("sb", t)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_items, max_size=12), st.lists(st.integers(1, 7), min_size=1, max_size=30))
def test_decoder_roundtrip_any_chunking(items: list[tuple[str, Any]], cuts: list[int]) -> None:
    wire = bytearray()
    expected: list[tw.Event] = []
    for kind, v in items:
        if kind == "data":
            wire += tw.escape(v)
            expected.append(tw.Data(v))
        elif kind == "neg":
            wire += tw.negotiation(*v)
            expected.append(tw.Negotiation(*v))
        else:
            wire += tw.subnegotiation(v[0], v[1])
            expected.append(tw.Subnegotiation(v[0], v[1]))
    dec = tw.Decoder()
    got: list[tw.Event] = []
    pos, k = 0, 0
    while pos < len(wire):
        step = cuts[k % len(cuts)]
        got += dec.feed(bytes(wire[pos : pos + step]))
        pos += step
        k += 1
    assert _merge(got) == _merge(expected)
    assert dec.idle


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=2000))
def test_decoder_random_bytes_bounded(junk: bytes) -> None:
    dec = tw.Decoder(max_sb=64)
    try:
        for k in range(0, len(junk), 13):
            dec.feed(junk[k : k + 13])
    except tw.WireError:
        pass
    assert len(dec._sb) <= 64 + 13


# ------------------------------------------------------------------ handshake


async def test_handshake_exact_bytes(listener: trio.SocketListener) -> None:
    async with trio.open_nursery() as n:
        c, peer = await open_pair(n, listener, label=None)
        assert c.ready and not c.violations
        assert c.proxy_known == [1, 3, 41, 43, 45, 71, 73, 81, 83]
        assert c.proxy_answer == tw.WILL_PROXY
        assert c.option_state(232) == ("yes", "no")
        assert c.option_state(0) == ("yes", "yes")
        assert c.option_state(37) == ("no", "no")  # AUTHENTICATION refused
        assert c.option_state(44) == ("no", "no")  # COM-PORT refused
        # RFC 1143: nothing more was sent (no re-acknowledgement of the answers).
        await c.send_console(b"x")
        await peer.expect_exact(b"x")
        await c.aclose()
        assert await peer.read_until_eof() == b""


async def test_handshake_split_at_every_byte(listener: trio.SocketListener) -> None:
    async with trio.open_nursery() as n:
        send, recv = trio.open_memory_channel[EsxConnection](1)

        async def esx() -> None:
            await send.send(
                await EsxConnection.open(
                    n,
                    "127.0.0.1",
                    port_of(listener),
                    vm=VM,
                    label="con 2",
                    one_byte_segments=True,
                )
            )

        n.start_soon(esx)
        peer = RawPeer(await listener.accept())
        await fake_handshake(peer, uri=b"Svic-console?port=con 2", per_byte=True)
        c = await recv.receive()
        assert c.ready and not c.violations
        await c.aclose()


async def test_passive_negotiation_and_refusals(listener: trio.SocketListener) -> None:
    async with trio.open_nursery() as n:
        c, peer = await open_pair(
            n,
            listener,
            handshake=False,
            initiate=False,
            offer_auth=False,
            offer_comport=False,
            wait_ready=False,
            do_proxy=False,
        )
        # The proxy drives: ESX agrees to BINARY, SGA, 232; refuses ECHO and STATUS.
        await peer.send(bytes([IAC, DO, 0, IAC, WILL, 0, IAC, WILL, 1, IAC, DO, 5, IAC, DO, 232]))
        await peer.expect_exact(
            bytes([IAC, WILL, 0, IAC, DO, 0, IAC, DONT, 1, IAC, WONT, 5, IAC, WILL, 232]) + KS1
        )
        await peer.send(frame(1, b"\x01") + frame(81))
        await peer.expect_exact(frame(80, VM.uuid.encode()))
        await c.wait_ready(5)
        assert not c.violations
        # A re-acknowledging proxy is recorded as a violation, and not answered.
        await peer.send(bytes([IAC, DO, 232]) + frame(83))
        await peer.expect_exact(frame(82, VM.name.encode()))
        assert c.violations and "re-acknowledged" in c.violations[0]
        await c.aclose()


async def test_vspc_refuses_232(listener: trio.SocketListener) -> None:
    async with trio.open_nursery() as n:
        c, peer = await open_pair(n, listener, handshake=False, wait_ready=False)
        await peer.expect_exact(OFFER)
        await peer.send(bytes([IAC, DONT, 232]))
        await c.wait_ready(5)
        assert c.ext_refused
        await c.aclose()


async def test_handshake_timeout(
    listener: trio.SocketListener, autojump_clock: trio.abc.Clock
) -> None:
    async with trio.open_nursery() as n:

        async def silent_vspc() -> None:  # accepts and never answers
            stream = await listener.accept()
            async with stream:
                await trio.sleep_forever()

        n.start_soon(silent_vspc)
        with pytest.raises(HandshakeTimeout) as info:
            await EsxConnection.open(n, "127.0.0.1", port_of(listener), vm=VM, ready_timeout=3)
        assert isinstance(info.value, trio.TooSlowError)
        n.cancel_scope.cancel()


async def test_known_list_and_unknown_commands(listener: trio.SocketListener) -> None:
    known = known_without(tw.GET_VM_NAME, tw.VM_NAME)
    async with trio.open_nursery() as n:
        send, recv = trio.open_memory_channel[EsxConnection](1)

        async def esx() -> None:
            await send.send(
                await EsxConnection.open(
                    n, "127.0.0.1", port_of(listener), vm=VM, known=known, do_proxy=False
                )
            )

        n.start_soon(esx)
        peer = RawPeer(await listener.accept())
        await peer.expect_exact(OFFER)
        await peer.send(ANSWER)
        await peer.expect_exact(frame(0, bytes(known)))
        await peer.send(frame(1, b"") + frame(81))
        await peer.expect_exact(frame(80, VM.uuid.encode()))
        c = await recv.receive()
        # GET-VM-NAME is not in ESX's list; 99 does not exist; BEGIN is ESX's own command.
        await peer.send(frame(83) + frame(99, b"\xff\xff") + frame(40, b"x"))
        await peer.expect_exact(frame(2, b"\x53") + frame(2, b"\x63") + frame(2, b"\x28"))
        assert c.violations == ["VMOTION-BEGIN is not for the proxy to send"]
        await peer.send(frame(3, b"\x07"))
        await c.send_console(b"sync")
        await peer.expect(b"sync")
        assert c.unknown_reported == [7]
        await c.aclose()


async def test_tls(listener: trio.SocketListener) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("vspc.test").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    async with trio.open_nursery() as n:
        send, recv = trio.open_memory_channel[EsxConnection](1)

        async def esx() -> None:
            await send.send(
                await EsxConnection.open(
                    n,
                    "127.0.0.1",
                    port_of(listener),
                    vm=VM,
                    ssl_context=client_ctx,
                    server_hostname="vspc.test",
                )
            )

        n.start_soon(esx)
        tls = trio.SSLStream(await listener.accept(), server_ctx, server_side=True)
        peer = RawPeer(tls)
        await fake_handshake(peer)
        c = await recv.receive()
        await c.send_console(b"\xff over tls")
        await peer.expect_exact(b"\xff\xff over tls")
        await c.aclose()


# ------------------------------------------------------------------ data


class CountingStream(trio.abc.Stream):
    """Wraps a stream and records the size of every send_all."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.sizes: list[int] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sizes.append(len(data))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return bytes(await self.inner.receive_some(max_bytes))

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_console_data_both_ways(listener: trio.SocketListener) -> None:
    payload = bytes(range(256)) * 3 + b"\r\n\x00\x11\xff"
    async with trio.open_nursery() as n:
        c, peer = await open_pair(n, listener)
        await c.send_console(payload)
        await peer.expect_exact(dbl(payload))
        # vSPC -> VM: doubled 0xFF, a NOP in the middle, split at every byte.
        await peer.send(b"x\xff\xffy" + bytes([IAC, 241]) + b"z\x00\r", per_byte=True)
        assert await c.receive_console_exactly(6) == b"x\xffyz\x00\r"
        assert c.stats.bytes_sent == len(payload)
        assert c.stats.bytes_received == 6
        await peer.stream.aclose()
        assert await c.receive_console() == b""
        await c.wait_closed(5)


async def test_one_byte_segments(listener: trio.SocketListener) -> None:
    async with trio.open_nursery() as n:
        tcp = await EsxConnection.open_stream("127.0.0.1", port_of(listener))
        counting = CountingStream(tcp)
        c = EsxConnection(counting, VM, EsxBehaviour(one_byte_segments=True))
        n.start_soon(c._reader)
        peer = RawPeer(await listener.accept())
        await c.send_console(b"ab\xff")
        await c.send_ext(tw.VMOTION_BEGIN, b"\xff")
        assert counting.sizes == [1] * (4 + 8)
        await peer.expect_exact(b"ab\xff\xff" + frame(40, b"\xff\xff"))
        await c.aclose()


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
