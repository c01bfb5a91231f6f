"""Issue 14: hostile HTTP against the Docker endpoint costs only its own connection.

Each attack is a raw connection to the endpoint's Unix socket of a real appliance with
a tethered VM (``tests.hostile.docker_hostile``). Where a response is possible it is
docker's error JSON with a status; every refusal is one log line with the client's
wire text escaped (``common.ops.wiretext.wire``) and one
``vspc_protocol_errors_total{where="docker"}``; and the real ``docker ps`` and
``docker logs`` through the same socket keep working while the attack is on.
"""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest
import trio

from tests.hostile.docker_hostile import (
    CLOSE_WITHIN,
    VM,
    answer,
    answers,
    attached,
    clients_back_to,
    exec_inspect,
    exec_started,
    hostile,
    open_fds,
    output_ends,
    rss,
    send_until_refused,
    until_closed,
)
from tests.support.daemons import MiB
from tests.support.waiting import wait_until, wait_until_async
from tests.vspc.conftest import metric
from vspc.core.docker_frames import Deframer
from vspc.docker.http import RECV, Limits

pytestmark = [pytest.mark.trio]

HOST = b"Host: docker\r\n"
FD_SLACK = 5

#: (what, request bytes, status, escaped text the log line must hold)
MALFORMED = [
    ("garbage line", b"GARBAGE\x1b[2J\r\n\r\n", 400, "\\x1b[2J"),
    ("control bytes", b"\x00\xff\x1b]0;pwn\x07GET / HTTP/1.1\r\n\r\n", 400, "\\x00\\xff\\x1b]0;"),
    ("header name byte", b"GET /_ping HTTP/1.1\r\n" + HOST + b"X-B\x01d: y\r\n\r\n", 400, "\\x01"),
    ("NUL in a value", b"GET /_ping HTTP/1.1\r\n" + HOST + b"X: a\x00b\r\n\r\n", 400, "\\x00"),
    ("no colon", b"GET /_ping HTTP/1.1\r\n" + HOST + b"no-colon\r\n\r\n", 400, "no-colon"),
    ("no Host", b"GET /_ping HTTP/1.1\r\n\r\n", 400, "GET /_ping"),
    (
        "bad Content-Length",
        b"POST /x HTTP/1.1\r\n" + HOST + b"Content-Length: -1\r\n\r\n",
        400,
        "-1",
    ),
    (
        "two Content-Lengths",
        b"POST /x HTTP/1.1\r\n" + HOST + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n",
        400,
        "Content-Length: 2",
    ),
    (
        "gzip transfer coding",
        b"POST /x HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: gzip\r\n\r\n",
        501,
        "gzip",
    ),
    (
        "raw non-UTF-8 path",
        b"GET /containers/\xff\xfe/json?all=\xc3 HTTP/1.1\r\n\r\n",
        400,
        "\\xff",
    ),
]


def printable(line: str) -> bool:
    return all(ch.isprintable() for ch in line)


async def test_malformed_requests_get_docker_errors_and_cost_their_connection(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with hostile(tmp_path, caplog) as h:
        fds = open_fds()
        for what, data, status, escaped in MALFORMED:
            errors, logged = h.errors(), len(h.logged())
            s = await h.connect()
            await s.send_all(data)
            got, body = answer(await until_closed(s))  # and the endpoint closed it
            await s.aclose()
            assert got == status and body["message"].startswith("bad request: "), (what, body)
            assert h.errors() == errors + 1, what
            (line,) = h.logged()[logged:]
            assert escaped in line and printable(line), (what, line)
        await h.check_intact()
        assert open_fds() <= fds + FD_SLACK


async def test_garbage_pipelined_after_valid_requests(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Valid requests on one connection are answered in order, then the garbage
    behind them gets its 400 and the connection closes."""
    async with hostile(tmp_path, caplog) as h:
        s = await h.connect()
        valid = b"GET /_ping HTTP/1.1\r\n" + HOST + b"\r\n"
        listing = b"GET /v1.45/containers/json HTTP/1.1\r\n" + HOST + b"\r\n"
        await s.send_all(valid + listing + b"\x16\x03\x01garbage\r\n\r\n" + valid)
        got = answers(await until_closed(s))
        assert [status for status, _ in got] == [200, 200, 400], got
        assert got[2][1]["message"].startswith("bad request: illegal request line")
        assert any("\\x16\\x03\\x01garbage" in line for line in h.logged()), h.logged()
        await h.check_intact()


async def test_huge_headers_are_refused_at_a_bound(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """16 clients each try to send 4 MiB of request head (many header lines, or one
    endless line): each gets 431 and is closed after the endpoint read at most the
    bound plus one read, so neither memory nor descriptors grow."""
    limit = 16 << 10
    async with hostile(tmp_path, caplog, max_header_bytes=limit) as h:
        fds, before, errors = open_fds(), rss(), h.errors()
        heads = [b"X-Pad: " + b"A" * 1000 + b"\r\n", b"A" * 4096]
        results: list[tuple[int, bytes]] = []

        async def flood(i: int) -> None:
            s = await h.connect()
            s.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            await s.send_all(b"GET /containers/json HTTP/1.1\r\n" + HOST)
            sent = await send_until_refused(s, heads[i % 2], 4 * MiB)
            results.append((sent, await until_closed(s)))
            await s.aclose()

        async with trio.open_nursery() as n:
            for i in range(16):
                n.start_soon(flood, i)
            await h.check_intact()
        for sent, data in results:
            assert sent < 1 * MiB, sent  # refused long before 4 MiB
            status, body = answer(data)
            assert status == 431 and "bad request" in body["message"], body
        assert h.errors() == errors + 16
        assert rss() - before < 20 * MiB
        assert open_fds() <= fds + FD_SLACK
        assert limit + RECV < 1 * MiB


async def test_lying_or_huge_content_length_costs_one_bounded_drain(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A body the endpoint does not want is read and dropped up to ``drain_bytes``
    within ``drain_seconds``, after the answer; then the connection closes, whether
    the client sends the 10 GB it announced, or only part of 100 bytes."""
    async with hostile(tmp_path, caplog) as h:
        assert h.rig.service.docker is not None
        h.rig.service.docker.limits = Limits(drain_bytes=1 * MiB, drain_seconds=2.0)
        huge = await h.connect()
        await huge.send_all(
            b"POST /containers/create HTTP/1.1\r\n" + HOST + b"Content-Length: 10000000000\r\n\r\n"
        )
        sent = await send_until_refused(huge, b"\0" * 65536, 256 * MiB)
        status, body = answer(await until_closed(huge))
        assert status == 501 and "does not create containers" in body["message"], body
        assert sent < 16 * MiB, sent

        liar = await h.connect()
        await liar.send_all(b"GET /_ping HTTP/1.1\r\n" + HOST + b"Content-Length: 100\r\n\r\n0123")
        async with trio.open_nursery() as n:
            n.start_soon(h.check_intact)  # while the liar's drain holds its connection
            with trio.fail_after(10):
                status, _ = answer(await until_closed(liar))
        assert status == 200


async def test_slow_clients_are_cut_at_the_request_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Slowloris: 20 clients trickle a request head a byte at a time, 10 more send
    nothing; the request timeout bounds the whole head, not the gap between bytes,
    so each is closed within it while docker keeps working (the silent ones quietly,
    as idle keep-alive connections are)."""
    timeout = 2.0
    async with hostile(tmp_path, caplog, request_timeout=timeout) as h:
        fds, errors = open_fds(), h.errors()
        closed_after: list[float] = []

        async def trickle(data: bytes) -> None:
            s = await h.connect()
            start = trio.current_time()
            try:
                for b in data:
                    await s.send_all(bytes([b]))
                    await trio.sleep(0.05)  # the attacker's pace, not synchronisation
            except trio.BrokenResourceError:
                pass
            await until_closed(s, timeout + 10)
            closed_after.append(trio.current_time() - start)
            await s.aclose()

        async with trio.open_nursery() as n:
            for _ in range(20):
                n.start_soon(trickle, b"GET /containers/json HTTP/1.1\r\n" + HOST * 100)
            for _ in range(10):
                n.start_soon(trickle, b"")
            await h.check_intact()
        assert len(closed_after) == 30 and max(closed_after) < timeout + 5, closed_after
        assert h.errors() == errors + 20
        lines = [ln for ln in h.logged() if "within the request timeout" in ln]
        assert len(lines) == 20 and all(printable(ln) for ln in lines)
        assert open_fds() <= fds + FD_SLACK


async def test_many_idle_connections_do_not_lock_docker_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """40 connections that send nothing, against ``max-clients`` 16 and a long request
    timeout: a new client still gets in (the longest-idle connection waiting for a
    request makes room), so the idle ones cost only themselves."""
    async with hostile(tmp_path, caplog, max_clients=16, request_timeout=600.0) as h:
        idle = [await h.connect() for _ in range(40)]
        await trio.testing.wait_all_tasks_blocked()
        await h.check_intact()
        assert metric(h.rig.service, "vspc_docker_clients") <= 16
        made_room = [m for m in caplog.messages if m.endswith(": closed to make room")]
        assert len(made_room) >= 40 - 16, made_room
        for s in idle:
            await s.aclose()


async def test_logs_follower_that_leaves_mid_stream_costs_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A ``docker logs -f`` killed mid-stream, a raw follower that closes, and one that
    shuts its sending side (half-open): each follower is let go of."""
    async with hostile(tmp_path, caplog) as h:
        fds = open_fds()
        proc = await h.rig.open_docker("logs", "-f", VM)
        assert proc.stdout is not None
        seen = b""
        with trio.fail_after(30):
            while b"line5\n" not in seen:
                seen += await proc.stdout.receive_some(65536)
        assert h.followers() == 1
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        await wait_until(lambda: h.followers() == 0, 10, "docker logs -f let go of")

        follow = b"GET /containers/web-1/logs?follow=1&stdout=1&stderr=1 HTTP/1.1\r\n" + HOST
        for how in ("close", "shutdown"):
            s = await h.connect()
            await s.send_all(follow + b"\r\n")
            got = b""
            with trio.fail_after(30):
                while b"line5\n" not in got:
                    got += await s.receive_some(65536)
            assert got.startswith(b"HTTP/1.1 200 ") and h.followers() == 1, got
            if how == "close":
                await s.aclose()
            else:
                await s.send_eof()  # half-open: still reading, no longer sending
                await until_closed(s)
                await s.aclose()
            await wait_until(lambda: h.followers() == 0, 10, f"the follower that did {how}")
        await h.check_intact()
        assert open_fds() <= fds + FD_SLACK


async def test_half_open_requests(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A client that stops sending inside a request head gets its 400; one that stops
    after a whole request gets its answer; both connections then close."""
    async with hostile(tmp_path, caplog) as h:
        partial = await h.connect()
        await partial.send_all(b"GET /containers/json HTTP/1.1\r\nHos")
        await partial.send_eof()
        status, body = answer(await until_closed(partial))
        assert status == 400 and "bad request" in body["message"], body
        whole = await h.connect()
        await whole.send_all(b"GET /_ping HTTP/1.1\r\n" + HOST + b"\r\n")
        await whole.send_eof()
        status, _ = answer(await until_closed(whole))
        assert status == 200
        await h.check_intact()


async def test_non_utf8_escapes_in_paths_and_queries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Percent-escaped bytes that are not UTF-8, and targets too long to look at (414),
    are valid HTTP: docker's error JSON with a status, the connection stays usable."""
    async with hostile(tmp_path, caplog) as h:
        s = await h.connect()
        asks = [
            (b"/containers/%ff%fe%00/json", 404),
            (b"/containers/json?filters=%ff%fe", 400),
            (b"/containers/web-1/logs?stdout=1&tail=%ff%c3", 400),
            (b"/containers/%c3%28/logs?stdout=1", 404),
            (b"/containers/" + b"%ff" * 15000 + b"/json", 414),  # 45 KB of path
            (b"/containers/json?" + b"filters=%7B%7D&" * 3000, 414),  # 3,000 parameters
            (b"/_ping", 200),
        ]
        for path, _ in asks:
            await s.send_all(b"GET " + path + b" HTTP/1.1\r\n" + HOST + b"\r\n")
        await s.send_eof()
        got = answers(await until_closed(s))
        assert [status for status, _ in got] == [want for _, want in asks], got
        assert all(body["message"] for _, body in got[:-1]), got  # docker's error JSON
        await h.check_intact()


async def test_half_open_hijacked_exec(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """docker exec's hijacked stream: a client's half-close is its process's EOF (the
    output still reaches it, then the connection closes with the exit code kept); a
    client that leaves while its process writes ends that exec only."""
    async with hostile(tmp_path, caplog) as h:
        fds = open_fds()
        exec_id, s = await exec_started(h, ["cat"], stdin=True)
        await s.send_all(b"through a half-open stream\n")
        await s.send_eof()
        frames = Deframer().feed(await until_closed(s))
        await s.aclose()
        assert b"".join(f.payload for f in frames) == b"through a half-open stream\n", frames
        got = await exec_inspect(h, exec_id)
        assert (got["Running"], got["ExitCode"]) == (False, 0), got

        exec_id, s = await exec_started(
            h, ["sh", "-c", "while :; do echo chatter; done"], stdin=False
        )
        with trio.fail_after(CLOSE_WITHIN):
            assert await s.receive_some(65536)
        await s.aclose()
        await h.check_intact()

        async def ended() -> bool:
            return not (await exec_inspect(h, exec_id))["Running"]

        await wait_until_async(ended, CLOSE_WITHIN, "the abandoned exec ended")
        assert open_fds() <= fds + FD_SLACK


async def test_request_bodies_are_bounded_in_size_and_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A body the endpoint reads (``docker exec``'s create): past ``max_body_bytes`` a
    413, and a body that does not come within the request timeout a 408; each closes
    its connection while docker keeps working."""
    timeout = 2.0
    async with hostile(tmp_path, caplog, request_timeout=timeout) as h:
        errors = h.errors()
        create = f"POST /v1.45/containers/{VM}/exec HTTP/1.1\r\n".encode() + HOST
        huge = await h.connect()
        await huge.send_all(create + b"Content-Length: 10000000000\r\n\r\n")
        sent = await send_until_refused(huge, b"{" * 65536, 256 * MiB)
        status, body = answer(await until_closed(huge))
        assert status == 413 and "bad request" in body["message"], body
        assert sent < 16 * MiB, sent

        slow = await h.connect()
        await slow.send_all(create + b'Content-Length: 100\r\n\r\n{"Cmd": ')
        async with trio.open_nursery() as n:
            n.start_soon(h.check_intact)
            with trio.fail_after(timeout + 5):
                status, body = answer(await until_closed(slow))
        assert status == 408 and "request timeout" in body["message"], body
        assert h.errors() == errors + 2

        cut = await h.connect()
        await cut.send_all(create + b'Content-Length: 100\r\n\r\n{"Cmd": ')
        await cut.send_eof()
        status, body = answer(await until_closed(cut))
        assert status == 400 and "without sending complete" in body["message"], body
        assert h.errors() == errors + 3
        assert not [r for r in caplog.records if r.exc_info], "a traceback in the log"


async def test_abandoned_silent_exec_and_attach(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Hijacked connections whose clients leave while nothing is written (an exec of a
    silent process, attachments to a quiet main process, with and without stdin, one
    half-closed first): each is let go of, the container runs on."""
    async with hostile(tmp_path, caplog) as h:
        docker = h.rig.service.docker
        assert docker is not None
        base = docker.clients
        exec_id, s = await exec_started(h, ["sleep", "100000"], stdin=False)
        await s.aclose()
        await clients_back_to(h, base)
        assert not (await exec_inspect(h, exec_id))["Running"]
        for query in ("stream=1&stdout=1&stderr=1", "stream=1&stdin=1&stdout=1&stderr=1"):
            s = await attached(h, query)
            assert docker.clients == base + 1
            await s.send_eof()  # half-open: the attachment's input ends, not the attachment
            await trio.testing.wait_all_tasks_blocked()
            assert docker.clients == base + 1
            await s.aclose()
            await clients_back_to(h, base)
        await h.check_intact()  # still running, its log intact


def chatty(go: Path) -> list[str]:
    """A main process that writes 32 MiB of lines, then DONE, once ``go`` exists."""
    wait = f"while [ ! -e {go} ]; do sleep 0.05; done"
    lines = "head -c 33554432 /dev/zero | tr '\\0' x | fold -w 99"
    return ["sh", "-c", f"{wait}; {lines}; echo DONE; exec sleep 100000"]


async def test_a_follower_that_never_reads_holds_bounded_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``docker logs -f`` of a container writing 32 MiB, from a client that never
    reads: the endpoint holds a bounded backlog for it (the follower's bound and the
    socket's buffers), not the output; docker keeps working; its close frees it."""
    async with hostile(tmp_path, caplog) as h:
        before = rss()
        await h.rig.vm("chatty", chatty(tmp_path / "go"))
        stuck = await h.connect()
        stuck.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        follow = b"GET /containers/chatty/logs?follow=1&stdout=1&tail=0 HTTP/1.1\r\n" + HOST
        await stuck.send_all(follow + b"\r\n")
        await wait_until(lambda: h.followers("chatty") == 1, 10, "the stuck follower")
        async with trio.open_nursery() as n:
            n.start_soon(output_ends, h, "chatty", b"DONE\n")
            await wait_until(lambda: h.followers("chatty") == 2, 10, "an honest follower too")
            (tmp_path / "go").touch()
        assert rss() - before < 20 * MiB, (rss() - before) / MiB
        await h.check_intact()
        await stuck.aclose()
        await wait_until(lambda: h.followers("chatty") == 0, 10, "the stuck follower let go of")
