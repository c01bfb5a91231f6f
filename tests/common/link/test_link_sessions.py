"""Peer links end to end over real TCP (and TLS): who may link and resume, GOAWAY,
local closes, bounded replay memory, aborts and give-ups."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from common.link.resumable import StreamFailedError
from common.link.route import Route, Router
from common.proto.link.frames import ErrorCode
from tests.common.link.link_harness import (
    MiB,
    acceptor,
    pattern,
    roundtrip,
    small_config,
)
from tests.relay.faultproxy import FaultProxy
from tests.relay.pki_helpers import Pki
from tests.support.waiting import wait_until


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "ca")


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
