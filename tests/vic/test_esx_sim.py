"""The ESX simulator's wire codec, handshake and console data, checked against a
tiny fake vSPC that works on raw bytes (:mod:`tests.vic.esx_fake_vspc`), so the
simulator is tested independently of ``common.proto.telnet`` and of its own decoder.
"""

from __future__ import annotations

import ssl
from typing import Any

import pytest
import trio
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.vic.esx_fake_vspc import (
    ANSWER,
    DO,
    DONT,
    IAC,
    KS1,
    OFFER,
    SB,
    SE,
    VM,
    WILL,
    WONT,
    RawPeer,
    dbl,
    fake_handshake,
    frame,
    open_pair,
    port_of,
)
from vic.lab import telnet_wire as tw
from vic.lab.esx_sim import (
    EsxBehaviour,
    EsxConnection,
    HandshakeTimeout,
    esx_uuid_format,
    known_without,
)

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
