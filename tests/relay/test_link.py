"""Peer links end to end over real TCP (and TLS): cuts, stalls, corruption, moves, gaps.

The big transfer is VIC_LINK_BIG_MB MiB (default 32; the issue's figure is 256:
``VIC_LINK_BIG_MB=256 pytest tests/relay/test_link.py -k cut``).
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from common.link.peering import LinkServer, open_session_table
from common.link.peerlink import LinkConfig
from common.link.resumable import ResumableStream, SessionTable, StreamFailedError
from common.link.route import Route, Router
from common.link.tls import TlsFiles
from common.proto.link import frames as F
from common.proto.link.frames import ErrorCode
from common.proto.link.mux import MuxConfig
from tests.relay.faultproxy import FaultProxy
from tests.relay.pki_helpers import Pki
from tests.support.waiting import wait_until

BIG = int(os.environ.get("VIC_LINK_BIG_MB", "32")) * 1024 * 1024
MiB = 1024 * 1024


def pattern(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


@dataclass
class Acceptor:
    table: SessionTable
    server: LinkServer
    port: int
    streams: list[ResumableStream] = field(default_factory=list)
    failures: list[StreamFailedError] = field(default_factory=list)
    received: dict[bytes, int] = field(default_factory=dict)
    first_bytes: trio.Event = field(default_factory=trio.Event)


async def echo(acc: Acceptor, st: ResumableStream) -> None:
    try:
        while True:
            data = await st.receive_some()
            if not data:
                break
            acc.received[st.header] = acc.received.get(st.header, 0) + len(data)
            acc.first_bytes.set()
            await st.send_all(data)
        await st.send_eof()
    except StreamFailedError as e:
        acc.failures.append(e)
    finally:
        await st.aclose()


@asynccontextmanager
async def acceptor(
    config: LinkConfig, *, tls_files: TlsFiles | None = None, allowed: Collection[str] = ()
) -> AsyncIterator[Acceptor]:
    async with open_session_table(config) as table, trio.open_nursery() as n:
        server = LinkServer(table, tls_files=tls_files, allowed_peers=allowed, config=config)
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await n.start(server.serve, listeners)
        acc = Acceptor(table, server, listeners[0].socket.getsockname()[1])

        async def loop() -> None:
            async for a in table:
                acc.streams.append(a.stream)
                n.start_soon(echo, acc, a.stream)

        n.start_soon(loop)
        yield acc
        n.cancel_scope.cancel()


async def roundtrip(
    st: ResumableStream,
    data: bytes,
    chunk: int = 256 * 1024,
    on_progress: Callable[[int], Awaitable[None]] | None = None,
) -> bytes:
    """Send ``data`` and read the echo concurrently; returns what came back."""
    back = bytearray()

    async def sender() -> None:
        for i in range(0, len(data), chunk):
            await st.send_all(data[i : i + chunk])
            if on_progress is not None:
                await on_progress(i + chunk)
        await st.send_eof()

    async with trio.open_nursery() as n:
        n.start_soon(sender)
        while True:
            got = await st.receive_some()
            if not got:
                break
            back += got
    await st.aclose()
    return bytes(back)


def small_config(**kw: Any) -> LinkConfig:
    # a 1 MiB replay buffer: send_all returns only once the rest is nearly delivered,
    # so "bytes sent" below tracks what is really on the wire
    mux = kw.pop("mux", MuxConfig(ping_interval=0.5, dead_after=2.0))
    kw.setdefault("replay_limit", MiB)
    return LinkConfig(mux=mux, reconnect_min=0.01, reconnect_max=0.2, **kw)


async def test_many_streams_plain() -> None:
    cfg = small_config()
    with trio.fail_after(30):
        async with acceptor(cfg) as acc, trio.open_nursery() as n:
            router = Router(Route(f"tcp:127.0.0.1:{acc.port}", tls=False), n, config=cfg)
            results: dict[int, bool] = {}

            async def one(i: int) -> None:
                st = await router.open_stream(f"s{i}".encode())
                data = pattern(100_000 + i * 997, seed=i)
                results[i] = await roundtrip(st, data, chunk=7000) == data

            async with trio.open_nursery() as inner:
                for i in range(20):
                    inner.start_soon(one, i)
            assert results == dict.fromkeys(range(20), True)
            assert router.links_opened == 1  # all multiplexed on one link
            n.cancel_scope.cancel()


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "ca")


async def stream_roundtrip(
    st: ResumableStream, total: int, chunk: int = 256 * 1024
) -> tuple[str, str, int]:
    """Send ``total`` generated bytes, read the echo; (sent sha256, echoed sha256, echoed len)."""
    sent_h, back_h = hashlib.sha256(), hashlib.sha256()
    back = 0

    async def sender() -> None:
        for i, off in enumerate(range(0, total, chunk)):
            block = random.Random(i).randbytes(min(chunk, total - off))
            sent_h.update(block)
            await st.send_all(block)
        await st.send_eof()

    async with trio.open_nursery() as n:
        n.start_soon(sender)
        while got := await st.receive_some():
            back_h.update(got)
            back += len(got)
    await st.aclose()
    return sent_h.hexdigest(), back_h.hexdigest(), back


async def test_cut_repeatedly_during_big_transfer_tls(pki: Pki) -> None:
    cfg = small_config()
    srv_files, cli_files = pki.issue("host", "egress"), pki.issue("host", "ingress")
    with trio.fail_after(60 + BIG / MiB * 2):
        async with (
            acceptor(cfg, tls_files=srv_files, allowed={"vic://host/ingress"}) as acc,
            trio.open_nursery() as n,
        ):
            proxy = FaultProxy(("127.0.0.1", acc.port), cut_every=max(BIG // 10, MiB))
            await n.start(proxy.serve)
            router = Router(
                Route(proxy.address, identity="vic://host/egress"),
                n,
                tls_files=cli_files,
                config=cfg,
            )
            st = await router.open_stream(b"big")
            sent, back, n_back = await stream_roundtrip(st, BIG)
            # in order, nothing lost, nothing repeated, in both directions
            assert n_back == BIG and back == sent
            assert proxy.cuts >= 5, proxy.cuts
            assert router.links_opened >= proxy.cuts
            assert st.failure is None and not acc.failures
            await st.wait_finished()
            n.cancel_scope.cancel()


async def test_corruption_detected_by_tls_and_recovered(pki: Pki) -> None:
    cfg = small_config()
    srv_files, cli_files = pki.issue("host", "egress"), pki.issue("host", "ingress")
    data = pattern(8 * MiB, seed=7)
    with trio.fail_after(60):
        async with (
            acceptor(cfg, tls_files=srv_files, allowed={"vic://host/ingress"}) as acc,
            trio.open_nursery() as n,
        ):
            proxy = FaultProxy(("127.0.0.1", acc.port))
            await n.start(proxy.serve)
            router = Router(
                Route(proxy.address, identity="vic://host/egress"),
                n,
                tls_files=cli_files,
                config=cfg,
            )
            st = await router.open_stream(b"c")
            flipped = 0

            async def progress(sent: int) -> None:
                nonlocal flipped
                if sent in (2 * MiB, 4 * MiB, 6 * MiB):
                    proxy.corrupt_next("up" if flipped % 2 == 0 else "down")
                    flipped += 1

            back = await roundtrip(st, data, on_progress=progress)
            assert back == data
            assert router.links_opened >= 2  # TLS refused the corrupted record, link replaced
            n.cancel_scope.cancel()


async def test_stalled_peer_is_declared_dead_and_stream_resumes() -> None:
    cfg = small_config(mux=MuxConfig(ping_interval=0.1, dead_after=0.5))
    data = pattern(2 * MiB, seed=3)
    with trio.fail_after(30):
        async with acceptor(cfg) as acc, trio.open_nursery() as n:
            proxy = FaultProxy(("127.0.0.1", acc.port))
            await n.start(proxy.serve)
            router = Router(Route(proxy.address, tls=False), n, config=cfg)
            st = await router.open_stream(b"s")

            async def staller(sent: int) -> None:
                if sent == 3 * MiB // 2:  # > replay_limit: the link is up and carrying
                    link = router.link
                    assert link is not None
                    proxy.stall()
                    await link.closed.wait()  # keepalive gives up on the silent peer
                    assert "silent" in (link.dead_reason or "")
                    proxy.cut()
                    proxy.resume()

            assert await roundtrip(st, data, on_progress=staller) == data
            assert router.links_opened >= 2
            n.cancel_scope.cancel()


async def test_route_change_mid_transfer_moves_streams_without_loss(pki: Pki) -> None:
    cfg = small_config()
    srv_files, cli_files = pki.issue("appliance", "vch"), pki.issue("host", "esx-a")
    data = pattern(16 * MiB, seed=5)
    with trio.fail_after(60):
        async with (
            acceptor(cfg, tls_files=srv_files, allowed={"vic://host/esx-a"}) as acc,
            trio.open_nursery() as n,
        ):
            via_b = FaultProxy(("127.0.0.1", acc.port))
            via_c = FaultProxy(("127.0.0.1", acc.port))
            await n.start(via_b.serve)
            await n.start(via_c.serve)
            router = Router(
                Route(via_b.address, identity="vic://appliance/vch", name="b"),
                n,
                tls_files=cli_files,
                config=cfg,
            )
            streams = [await router.open_stream(f"m{i}".encode()) for i in range(3)]

            async def mover(sent: int) -> None:
                if sent == 4 * MiB:
                    router.set_route(Route(via_c.address, identity="vic://appliance/vch", name="c"))
                    via_b.refuse()  # the old host is gone

            results: list[bool] = []

            async def one(i: int, st: ResumableStream) -> None:
                d = data if i == 0 else pattern(3 * MiB, seed=i)
                results.append(await roundtrip(st, d, on_progress=mover if i == 0 else None) == d)

            async with trio.open_nursery() as inner:
                for i, st in enumerate(streams):
                    inner.start_soon(one, i, st)
            assert results == [True, True, True]
            assert via_c.forwarded > 0 and via_b.closed
            assert streams[0].attachments >= 2
            n.cancel_scope.cancel()


async def test_replay_overflow_ends_with_explicit_gap() -> None:
    cfg = small_config(replay_limit=256 * 1024, overflow="discard")
    with trio.fail_after(30):
        async with acceptor(cfg) as acc, trio.open_nursery() as n:
            proxy = FaultProxy(("127.0.0.1", acc.port))
            await n.start(proxy.serve)
            router = Router(Route(proxy.address, tls=False), n, config=cfg)
            st = await router.open_stream(b"g")
            await st.send_all(b"x" * 1000)
            await acc.first_bytes.wait()
            proxy.refuse()  # the path is down; the guest keeps writing
            with pytest.raises(StreamFailedError) as ei:
                try:
                    # 8 MiB into a 256 KiB replay buffer: the source never waits; the
                    # gap shows when the dying link notices or when the stream resumes
                    for _ in range(32):
                        await st.send_all(bytes(256 * 1024))
                finally:
                    proxy.reopen()
                while await st.receive_some():
                    pass
            assert ei.value.code == ErrorCode.GAP
            await st.wait_finished()
            await wait_until(lambda: acc.failures, 5, "the acceptor's stream failure")
            assert acc.failures[0].code == ErrorCode.GAP
            assert st.session.discarded > 0
            n.cancel_scope.cancel()


async def test_malformed_frame_kills_only_that_link(caplog: pytest.LogCaptureFixture) -> None:
    cfg = small_config()
    data = pattern(4 * MiB, seed=11)
    with trio.fail_after(30):
        async with acceptor(cfg) as acc, trio.open_nursery() as n:
            router = Router(Route(f"tcp:127.0.0.1:{acc.port}", tls=False), n, config=cfg)
            st = await router.open_stream(b"good")

            async def hostile(sent: int) -> None:
                if sent == MiB:
                    bad = await trio.open_tcp_stream("127.0.0.1", acc.port)
                    await bad.send_all(F.encode(F.Hello(1, 300000)) + b"\x63" + bytes(40))
                    assert await bad.receive_some(100000) is not None
                    await bad.aclose()

            assert await roundtrip(st, data, on_progress=hostile) == data
            assert router.links_opened == 1  # the good link never noticed
            assert any("protocol error" in r.getMessage() for r in caplog.records)
            n.cancel_scope.cancel()


async def test_untrusted_and_wrong_identity_links_refused(pki: Pki, tmp_path: Path) -> None:
    cfg = small_config()
    srv_files = pki.issue("host", "egress")
    other = Pki(tmp_path / "other")
    with trio.fail_after(30):
        async with (
            acceptor(cfg, tls_files=srv_files, allowed={"vic://host/ingress"}) as acc,
            trio.open_nursery() as n,
        ):
            addr = f"tcp:127.0.0.1:{acc.port}"
            foreign = other.issue("host", "ingress")
            bad = [pki.issue("host", "mallory"), pki.expired("host", "ingress"), foreign]
            for i, files in enumerate(bad):
                router = Router(
                    Route(addr, identity="vic://host/egress"), n, tls_files=files, config=cfg
                )
                # TLS 1.3: the client may finish its side before the server refuses it
                try:
                    link = await router.get_link()
                except Exception:  # refused during the handshake is fine too
                    pass
                else:
                    await link.closed.wait()

                def refused(k: int = i + 1) -> bool:
                    return acc.server.refused >= k

                await wait_until(refused, 5, f"link {i} refused")
            assert len(acc.table) == 0
            n.cancel_scope.cancel()


async def test_acceptor_gives_up_when_opener_never_returns() -> None:
    cfg = small_config(resume_timeout=0.3)
    with trio.fail_after(30):
        async with acceptor(cfg) as acc, trio.open_nursery() as n:
            proxy = FaultProxy(("127.0.0.1", acc.port))
            await n.start(proxy.serve)
            router = Router(Route(proxy.address, tls=False), n, config=cfg)
            st = await router.open_stream(b"t")
            await st.send_all(b"hello")
            await acc.first_bytes.wait()
            proxy.refuse()
            await wait_until(lambda: acc.failures, 10, "the acceptor gives up")
            assert acc.failures[0].code == ErrorCode.TIMEOUT
            n.cancel_scope.cancel()


async def test_goaway_drains_old_link_and_new_streams_use_a_new_one() -> None:
    cfg = small_config()
    with trio.fail_after(30):
        async with acceptor(cfg) as acc, trio.open_nursery() as n:
            router = Router(Route(f"tcp:127.0.0.1:{acc.port}", tls=False), n, config=cfg)
            st1 = await router.open_stream(b"1")
            await st1.send_all(b"a" * 1000)
            await acc.first_bytes.wait()
            first = router.link
            acc.server.goaway_all("restart")
            await wait_until(lambda: first is None or first.draining, 5, "the old link draining")
            st2 = await router.open_stream(b"2")
            assert await roundtrip(st2, b"b" * 5000) == b"b" * 5000
            assert router.link is not first and router.links_opened == 2
            await st1.send_all(b"c" * 1000)  # the old stream carries on on the old link
            await st1.send_eof()
            back = b""
            while d := await st1.receive_some():
                back += d
            assert back == b"a" * 1000 + b"c" * 1000
            n.cancel_scope.cancel()


async def test_link_closed_locally_again_and_again() -> None:
    """The ingress kills its own link (as the bench does every second): no spin, no loss."""
    cfg = small_config()
    data = pattern(12 * MiB, seed=13)
    with trio.fail_after(60):
        async with acceptor(cfg) as acc, trio.open_nursery() as n:
            router = Router(Route(f"tcp:127.0.0.1:{acc.port}", tls=False), n, config=cfg)
            st = await router.open_stream(b"k")
            kills = 0

            async def killer(sent: int) -> None:
                nonlocal kills
                if sent % MiB == 0 and sent > cfg.replay_limit and router.link is not None:
                    router.link.close("test: killed")
                    kills += 1

            assert await roundtrip(st, data, on_progress=killer) == data
            assert kills >= 5 and router.links_opened >= kills
            n.cancel_scope.cancel()


async def test_replay_memory_is_bounded_across_many_streams() -> None:
    """50 streams writing flat out through a small shared replay pool: memory stays
    within pool + streams * reserve, and every stream still arrives intact."""
    cfg = small_config(replay_limit=4 * MiB, replay_pool=MiB, replay_reserve=16 * 1024)
    n_streams = 50
    with trio.fail_after(60):
        async with acceptor(cfg) as acc, trio.open_nursery() as n:
            router = Router(Route(f"tcp:127.0.0.1:{acc.port}", tls=False), n, config=cfg)
            bound = cfg.replay_pool + n_streams * cfg.replay_reserve
            peak = 0
            results: list[bool] = []

            async def one(i: int) -> None:
                nonlocal peak
                st = await router.open_stream(f"p{i}".encode())
                data = pattern(400_000, seed=100 + i)

                async def watch(_sent: int) -> None:
                    nonlocal peak
                    held = sum(s.session.buffered for s in router.streams)
                    peak = max(peak, held)
                    assert router.pool.used <= cfg.replay_pool

                results.append(await roundtrip(st, data, chunk=50_000, on_progress=watch) == data)

            async with trio.open_nursery() as inner:
                for i in range(n_streams):
                    inner.start_soon(one, i)
            assert results == [True] * n_streams
            assert 0 < peak <= bound
            n.cancel_scope.cancel()


class _Catch:
    def __init__(self) -> None:
        self.reset: tuple[int, str] | None = None
        self.got = trio.Event()

    def on_data(self, offset: int, payload: bytes | bytearray) -> None: ...
    def on_ack(self, offset: int, fin: bool) -> None: ...
    def on_eof(self, offset: int) -> None: ...
    def on_credit(self) -> None: ...
    def on_batch_end(self) -> None: ...
    def produce(self, max_bytes: int) -> bool:
        return False

    def on_reset(self, code: int, reason: str) -> None:
        self.reset = (code, reason)
        self.got.set()


async def test_only_the_opening_peer_may_resume_a_session(pki: Pki) -> None:
    cfg = small_config()
    srv = pki.issue("host", "egress")
    allowed = {"vic://host/a", "vic://host/b"}
    with trio.fail_after(30):
        async with acceptor(cfg, tls_files=srv, allowed=allowed) as acc, trio.open_nursery() as n:
            addr = f"tcp:127.0.0.1:{acc.port}"
            ra = Router(
                Route(addr, identity="vic://host/egress"),
                n,
                tls_files=pki.issue("host", "a"),
                config=cfg,
            )
            st = await ra.open_stream(b"a")
            await st.send_all(b"secret")
            await acc.first_bytes.wait()
            rb = Router(
                Route(addr, identity="vic://host/egress"),
                n,
                tls_files=pki.issue("host", "b"),
                config=cfg,
            )
            link_b = await rb.get_link()
            catch = _Catch()
            link_b.open(catch, st.session_id, 0, b"", resume=True)  # hijack attempt
            await catch.got.wait()
            assert catch.reset is not None and catch.reset[0] == ErrorCode.REFUSED
            assert acc.streams[0].link is not None
            assert acc.streams[0].link.peer_identity == "vic://host/a"  # still A's
            n.cancel_scope.cancel()


async def test_abort_tells_the_peer() -> None:
    cfg = small_config()
    with trio.fail_after(20):
        async with acceptor(cfg) as acc, trio.open_nursery() as n:
            router = Router(Route(f"tcp:127.0.0.1:{acc.port}", tls=False), n, config=cfg)
            st = await router.open_stream(b"x")
            await st.send_all(b"hello")
            await acc.first_bytes.wait()
            st.abort("bad header")
            await st.wait_finished()
            await wait_until(lambda: acc.failures, 5, "the abort reaches the peer")
            assert acc.failures[0].code == ErrorCode.CANCEL
            assert "bad header" in str(acc.failures[0])
            n.cancel_scope.cancel()


async def test_opener_gives_up_when_no_path_comes_back() -> None:
    cfg = small_config(resume_timeout=0.5)
    with trio.fail_after(20):
        async with acceptor(cfg) as acc, trio.open_nursery() as n:
            proxy = FaultProxy(("127.0.0.1", acc.port))
            await n.start(proxy.serve)
            router = Router(Route(proxy.address, tls=False), n, config=cfg)
            st = await router.open_stream(b"t")
            await st.send_all(b"hello")
            await acc.first_bytes.wait()
            proxy.refuse()  # gone for good
            with pytest.raises(StreamFailedError) as ei:
                while await st.receive_some():
                    pass
            assert ei.value.code == ErrorCode.TIMEOUT
            await st.wait_finished()
            assert not router.streams  # nothing left retrying in the background
            n.cancel_scope.cancel()
