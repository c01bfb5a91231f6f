"""``SessionEndpoint``: two endpoints over real socketpairs through a test proxy that can
cut a connection after N bytes (mid-frame included), flip a byte, or prefix junk."""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from common.io.sealedsession import ConnectionEnd, EndKind, Liveness, SessionEndpoint
from common.proto.session import channels as chs
from common.proto.session.errors import SecureError
from common.proto.session.messages import (
    ErrorCode,
    ExecSpec,
    ExitStatus,
    Stream,
)
from common.proto.session.session import Session, SessionConfig

T = 30  # safety net only
SECRET = b"k" * 32


def appliance(
    secrets: list[bytes] | None = None, max_events: int = 64, liveness: Liveness | None = None
) -> SessionEndpoint:
    session = Session(chs.Role.APPLIANCE, os.urandom(16), SessionConfig(replay_limit=256 * 1024))
    chosen = secrets or [SECRET]
    return SessionEndpoint(
        chs.Role.APPLIANCE,
        session,
        lambda: chosen,
        name="app",
        max_events=max_events,
        liveness=liveness,
    )


def tether(
    secrets: list[bytes] | None = None, flow: bool = False, liveness: Liveness | None = None
) -> SessionEndpoint:
    session = Session(chs.Role.TETHER, config=SessionConfig(replay_limit=256 * 1024))
    chosen = secrets or [SECRET]
    return SessionEndpoint(
        chs.Role.TETHER,
        session,
        lambda: chosen,
        name="tether",
        ack_on_consume=flow,
        liveness=liveness,
    )


@dataclass
class Fault:
    """What the proxy does to one direction of one connection."""

    cut_after: int | None = None  # forward this many bytes, then cut both ways
    flip_at: int | None = None  # xor this byte offset with 0x01
    junk: bytes = b""  # sent first


@dataclass
class Link:
    """Runs connections between two endpoints through a proxy, one after another."""

    a: SessionEndpoint
    b: SessionEndpoint
    faults: list[tuple[Fault, Fault]] = field(default_factory=list)  # per connection
    ends: list[tuple[ConnectionEnd, ConnectionEnd]] = field(default_factory=list)

    async def one(self, to_b: Fault, to_a: Fault) -> tuple[ConnectionEnd, ConnectionEnd]:
        a_sock, pa = trio.socket.socketpair()
        pb, b_sock = trio.socket.socketpair()
        ea: list[ConnectionEnd] = []
        eb: list[ConnectionEnd] = []
        sa, sb = trio.SocketStream(pa), trio.SocketStream(pb)
        async with trio.open_nursery() as n:
            n.start_soon(_forward, sa, sb, to_b)
            n.start_soon(_forward, sb, sa, to_a)

            async def run(
                ep: SessionEndpoint, sock: trio.socket.SocketType, out: list[ConnectionEnd]
            ) -> None:
                out.append(await ep.run_connection(trio.SocketStream(sock), handshake_timeout=T))

            async with trio.open_nursery() as eps:
                eps.start_soon(run, self.a, a_sock, ea)
                eps.start_soon(run, self.b, b_sock, eb)
            n.cancel_scope.cancel()
        for s in (sa, sb):
            await s.aclose()
        end = (ea[0], eb[0])
        self.ends.append(end)
        return end

    async def run_until(self, done: trio.Event) -> None:
        """Connections with the faults given, then clean ones, until ``done``."""
        async with trio.open_nursery() as n:

            async def loop() -> None:
                i = 0
                while True:
                    to_b, to_a = self.faults[i] if i < len(self.faults) else (Fault(), Fault())
                    await self.one(to_b, to_a)
                    i += 1

            n.start_soon(loop)
            await done.wait()
            n.cancel_scope.cancel()


async def _forward(src: trio.SocketStream, dst: trio.SocketStream, f: Fault) -> None:
    sent = 0
    try:
        if f.junk:
            await dst.send_all(f.junk)
        while data := await src.receive_some(65536):
            chunk = bytearray(data)
            if f.flip_at is not None and sent <= f.flip_at < sent + len(chunk):
                chunk[f.flip_at - sent] ^= 0x01
            if f.cut_after is not None and sent + len(chunk) >= f.cut_after:
                await dst.send_all(chunk[: f.cut_after - sent])
                break
            await dst.send_all(chunk)
            sent += len(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    for s in (src, dst):  # either direction ending cuts the connection both ways
        await s.aclose()


# ---------------------------------------------------------------- an echo "exec"
async def echo_peer(ep: SessionEndpoint, nursery: trio.Nursery, starve: int = 0) -> None:
    """The tether side of the tests: accept, echo STDIN to STDOUT, exit 7 at its EOF;
    channel ``starve`` is a process that never reads its STDIN."""
    pending: dict[int, trio.MemorySendChannel[bytes | None]] = {}

    async def pump(ch: int, rx: trio.MemoryReceiveChannel[bytes | None]) -> None:
        async for data in rx:
            if data is None:
                ep.exit(ch, ExitStatus(code=7))
                return
            await ep.send_all(ch, Stream.STDOUT, data)
            ep.consumed(ch, Stream.STDIN, len(data))  # a no-op unless ack_on_consume

    async for ev in ep.events():
        if isinstance(ev, chs.ExecRequested):
            ep.accept(ev.ch)
            tx, rx = trio.open_memory_channel[bytes | None](float("inf"))
            pending[ev.ch] = tx
            nursery.start_soon(pump, ev.ch, rx)
        elif isinstance(ev, chs.Data) and ev.ch != starve:
            pending[ev.ch].send_nowait(ev.data)
        elif isinstance(ev, chs.Eof):
            pending[ev.ch].send_nowait(None)


@dataclass
class Client:
    out: bytearray = field(default_factory=bytearray)
    status: ExitStatus | None = None
    done: trio.Event = field(default_factory=trio.Event)


async def exec_echo(ep: SessionEndpoint, data: bytes, client: Client) -> None:
    """Open one exec, write ``data`` in uneven pieces, collect STDOUT until it exits."""
    ch = ep.open_exec(ExecSpec(("cat",)))

    async def feed() -> None:
        view, size = memoryview(data), 1
        while view:
            assert await ep.send_all(ch, Stream.STDIN, bytes(view[:size]))
            view, size = view[size:], size * 3 % 70001 + 1
        ep.close_stdin(ch)

    async with trio.open_nursery() as n:
        n.start_soon(feed)
        async for ev in ep.events():
            if isinstance(ev, chs.Data):
                client.out += ev.data
            elif isinstance(ev, chs.Exited):
                client.status = ev.status
                break
    client.done.set()


async def run_echo(link: Link, data: bytes) -> Client:
    client = Client()
    with trio.fail_after(T):
        async with trio.open_nursery() as n:
            n.start_soon(echo_peer, link.b, n)
            n.start_soon(exec_echo, link.a, data, client)
            await link.run_until(client.done)
            n.cancel_scope.cancel()
    return client


# ---------------------------------------------------------------- tests
async def test_handshake_and_data_both_ways() -> None:
    link = Link(appliance(), tether())
    data = os.urandom(1 << 20)
    client = await run_echo(link, data)
    assert client.out == data
    assert client.status == ExitStatus(code=7)
    assert link.a.stats.established == 1 == link.b.stats.established
    assert link.b.last_established is not None and link.b.last_established.secret_index == 0


@pytest.mark.parametrize(
    "cuts",
    [
        [(Fault(cut_after=5000), Fault())],  # appliance -> tether, early
        [(Fault(), Fault(cut_after=300_001))],  # tether -> appliance, mid-frame
        [(Fault(cut_after=70_001), Fault()), (Fault(), Fault(cut_after=200_000))]
        + [(Fault(cut_after=400_000 + i * 99_991), Fault()) for i in range(3)],
    ],
)
async def test_cut_mid_transfer_resumes_exactly_once(cuts: list[tuple[Fault, Fault]]) -> None:
    link = Link(appliance(), tether(), faults=cuts)
    data = os.urandom(3 << 20)
    client = await run_echo(link, data)
    assert len(client.out) == len(data) and client.out == data  # no loss, no duplicate
    assert client.status == ExitStatus(code=7)
    assert link.a.stats.established >= len(cuts) + 1


async def test_acks_on_consumption_survive_cuts_exactly_once() -> None:
    b = tether(flow=True)
    cuts = [(Fault(cut_after=150_001), Fault()), (Fault(), Fault(cut_after=500_000))]
    link = Link(appliance(), b, faults=cuts)
    data = os.urandom(2 << 20)
    client = await run_echo(link, data)
    assert client.out == data
    assert client.status == ExitStatus(code=7)
    assert link.a.stats.established >= 3


async def test_a_stdin_nobody_reads_stalls_only_its_own_channel() -> None:
    """The core's receive window: the tether holds at most the appliance's replay bound
    of an unread STDIN and keeps reading the connection, so another exec's large
    ``cat`` still runs to its end, across a cut."""
    a, b = appliance(), tether(flow=True)
    link = Link(a, b, faults=[(Fault(cut_after=300_001), Fault())])
    limit = a.session.config.replay_limit
    data = os.urandom(2 << 20)
    client = Client()
    with trio.fail_after(T):
        async with trio.open_nursery() as n:
            stuck = a.open_exec(ExecSpec(("sleep", "inf")))
            n.start_soon(echo_peer, b, n, stuck)
            n.start_soon(exec_echo, a, data, client)
            n.start_soon(a.send_all, stuck, Stream.STDIN, bytes(3 * limit))
            await link.run_until(client.done)
            n.cancel_scope.cancel()
    assert client.out == data and client.status == ExitStatus(code=7)
    assert b.session.held(stuck, Stream.STDIN) <= limit
    assert a.session.room(stuck, Stream.STDIN) < limit  # its writer is held back


async def test_junk_before_the_handshake_is_skipped() -> None:
    noise = b"[    0.000000] Linux version 6.1\r\n\x00\xff" * 100
    link = Link(appliance(), tether(), faults=[(Fault(junk=noise), Fault(junk=noise))])
    client = await run_echo(link, b"after the noise")
    assert client.out == b"after the noise"
    assert link.a.stats.connections == 1


async def test_wrong_secret_is_refused_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    link = Link(appliance([b"w" * 32]), tether())
    with trio.fail_after(T):
        ea, eb = await link.one(Fault(), Fault())
    assert (ea.kind, ea.code, ea.established) == (EndKind.REFUSED, SecureError.AUTH, False)
    assert (eb.kind, eb.code) == (EndKind.REFUSED, SecureError.AUTH)
    lines = [r for r in caplog.records if r.name == "vic.session"]
    assert len(lines) == 2 and all(r.levelno == logging.WARNING for r in lines)
    assert all("refused (code 3)" in r.getMessage() for r in lines)
    assert link.b.stats.refused == {"refused:3": 1}


async def test_previous_secret_still_opens_while_rotating() -> None:
    link = Link(appliance([b"old" * 11]), tether([b"new" * 11, b"old" * 11]))
    client = await run_echo(link, b"x" * 1000)
    assert client.out == b"x" * 1000
    assert link.b.last_established is not None and link.b.last_established.secret_index == 1


async def test_tampered_byte_drops_the_connection_and_the_session_resumes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # byte 20_000 appliance -> tether lies inside a sealed record (stdin data)
    link = Link(appliance(), tether(), faults=[(Fault(flip_at=20_000), Fault())])
    data = os.urandom(1 << 20)
    client = await run_echo(link, data)
    assert client.out == data
    first_a, first_b = link.ends[0]
    assert (first_b.kind, first_b.code, first_b.established) == (
        EndKind.REFUSED,
        SecureError.TAMPERED,
        True,
    )
    assert first_a.code == SecureError.TAMPERED  # told by the ALERT
    logged = [r.getMessage() for r in caplog.records if r.name == "vic.session"]
    assert any(m.startswith("tether: connection ended, refused (code 5)") for m in logged)
    assert link.a.stats.established >= 2


async def test_handshake_timeout(autojump_clock: trio.testing.MockClock) -> None:
    ep = tether()
    mine, theirs = trio.testing.memory_stream_pair()  # a peer that never speaks
    end = await ep.run_connection(mine, handshake_timeout=5)
    assert (end.kind, end.established) == (EndKind.TIMEOUT, False)
    assert trio.current_time() >= 5
    await theirs.aclose()


async def test_no_secret_sends_nothing() -> None:
    ep = SessionEndpoint(chs.Role.TETHER, Session(chs.Role.TETHER), lambda: [], name="t")
    mine, theirs = trio.testing.memory_stream_pair()
    end = await ep.run_connection(mine, handshake_timeout=5)
    assert end.kind is EndKind.NO_SECRET
    assert await theirs.receive_some() == b""  # closed, nothing written


async def test_a_newer_connection_replaces_the_running_one_once_it_authenticates() -> None:
    """The appliance's live connection stays while a newer stream sends junk, a wrong
    secret or nothing; a newer one that proves the secret takes over (REPLACED)."""
    ep, peer, wrong = appliance(), tether(), tether([b"w" * 32])
    ends: list[ConnectionEnd] = []
    with trio.fail_after(T):
        async with trio.open_nursery() as n:

            async def run(other: SessionEndpoint) -> None:
                mine, theirs = trio.testing.memory_stream_pair()
                n.start_soon(functools.partial(other.run_connection, theirs, handshake_timeout=T))
                ends.append(await ep.run_connection(mine, handshake_timeout=T))

            n.start_soon(run, peer)
            while not ep.live:
                await ep.wait_changed()
            await run(wrong)  # refused on its own; the live connection never noticed
            silent, _keep = trio.testing.memory_stream_pair()
            ends.append(await ep.run_connection(silent, handshake_timeout=0.5))
            assert [e.kind for e in ends] == [EndKind.REFUSED, EndKind.TIMEOUT] and ep.live
            n.start_soon(run, peer)  # the same tether on a new path: replaces the live one
            while len(ends) < 3:
                await ep.wait_changed()
            assert ends[2].kind is EndKind.REPLACED and ends[2].established
            n.cancel_scope.cancel()


async def test_a_peer_that_lost_the_session_is_reported() -> None:
    a, b = appliance(), tether()
    link = Link(a, b)
    await run_echo(link, b"one")
    link.a = appliance()  # the appliance restarted: a new session id
    with trio.fail_after(T):
        await link.one(Fault(), Fault())
        while not isinstance(ev := await b.next_event(), chs.ProtocolError):
            pass
    assert ev.code is ErrorCode.SESSION_MISMATCH
    assert link.ends[-1][1].kind is EndKind.PROTOCOL


async def test_events_wait_for_a_slow_consumer_and_none_is_lost() -> None:
    """The reader stops at ``max_events`` unconsumed; the rest arrive once consumed."""
    a = appliance(max_events=2)
    b = tether()
    link = Link(a, b)
    data = os.urandom(200_000)
    client = await run_echo(link, data)
    assert client.out == data


# ---------------------------------------------------------------- several channels x random cuts
async def exec_many(ep: SessionEndpoint, datas: list[bytes], done: trio.Event) -> dict[int, bytes]:
    """One echo exec per item of ``datas``, all at once; their outputs by channel."""
    out: dict[int, bytearray] = {}
    inputs: dict[int, bytes] = {}
    for data in datas:
        ch = ep.open_exec(ExecSpec(("cat",)))
        out[ch], inputs[ch] = bytearray(), data

    async def feed(ch: int, data: bytes) -> None:
        for i in range(0, len(data), 40_000):
            assert await ep.send_all(ch, Stream.STDIN, data[i : i + 40_000])
        ep.close_stdin(ch)

    exited = 0
    async with trio.open_nursery() as n:
        for ch, data in inputs.items():
            n.start_soon(feed, ch, data)
        while exited < len(datas):
            ev = await ep.next_event()
            if isinstance(ev, chs.Data):
                out[ev.ch] += ev.data
            elif isinstance(ev, chs.Exited):
                exited += 1
    done.set()
    return {ch: bytes(b) for ch, b in out.items()}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(0, 300_000), min_size=1, max_size=4),
    cuts=st.lists(st.tuples(st.booleans(), st.integers(1, 150_000)), min_size=0, max_size=4),
    flow=st.booleans(),
)
@example(sizes=[0, 65404, 0], cuts=[(True, 65964)], flow=False)  # EOF while the writer wrote
def test_random_channels_and_cuts_exactly_once(
    sizes: list[int], cuts: list[tuple[bool, int]], flow: bool
) -> None:
    faults = [
        (Fault(cut_after=at), Fault()) if to_tether else (Fault(), Fault(cut_after=at))
        for to_tether, at in cuts
    ]
    datas = [os.urandom(n) for n in sizes]

    async def main() -> dict[int, bytes]:
        link = Link(appliance(), tether(flow=flow), faults=faults)
        done = trio.Event()
        result: dict[int, bytes] = {}
        with trio.fail_after(T):
            async with trio.open_nursery() as n:
                n.start_soon(echo_peer, link.b, n)

                async def client() -> None:
                    result.update(await exec_many(link.a, datas, done))

                n.start_soon(client)
                await link.run_until(done)
                n.cancel_scope.cancel()
        return result

    result = trio.run(main)
    assert [result[ch] for ch in sorted(result)] == datas


async def test_keepalives_hold_an_idle_line_and_a_silent_peer_is_found(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A line that never ends (serial): keepalives keep an idle connection up for as
    long as it lasts; a peer that stops (it restarted) is found after ``idle_timeout``,
    and a new sealed channel on the same line reaches the new peer."""
    live = Liveness(keepalive=1.0, idle_timeout=3.0)
    a = appliance(liveness=live)
    line_a, line_b = trio.testing.memory_stream_pair()
    ends: list[ConnectionEnd] = []

    async def run_a() -> None:
        while True:
            ends.append(await a.run_connection(line_a, handshake_timeout=2, close_stream=False))

    async def run_b(ep: SessionEndpoint, scope: trio.CancelScope) -> None:
        with scope:
            await ep.run_connection(line_b, handshake_timeout=10, close_stream=False)

    async with trio.open_nursery() as n:
        n.start_soon(run_a)
        old, old_scope = tether(liveness=live), trio.CancelScope()
        n.start_soon(run_b, old, old_scope)
        await a.wait_live()
        await trio.sleep(100)  # idle, on the mock clock
        assert ends == [] and a.live and old.live
        old_scope.cancel()  # the tether stops; the line stays up, silent
        stopped = trio.current_time()
        while not ends:
            await a.wait_changed()
        assert (ends[0].kind, ends[0].established) == (EndKind.TIMEOUT, True)
        assert trio.current_time() - stopped <= live.idle_timeout + live.keepalive
        new = tether(liveness=live)
        n.start_soon(run_b, new, trio.CancelScope())
        await a.wait_live()
        assert new.live and new.session.session_id == a.session.session_id
        n.cancel_scope.cancel()
