"""The link multiplexer, sans-IO: two Mux objects wired back to back."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.proto.link import frames as F
from common.proto.link.frames import ErrorCode, LinkProtocolError
from common.proto.link.mux import (
    AckReceived,
    CreditAvailable,
    DataReceived,
    EofReceived,
    Event,
    GoAwayReceived,
    LinkClosingError,
    Mux,
    MuxConfig,
    PongReceived,
    StreamOpened,
    StreamReset,
)

SID = bytes(range(16))


def xfer(src: Mux, dst: Mux, now: float = 0.0) -> list[Event]:
    data = b"".join(bytes(c) for c in src.data_to_send())
    return dst.receive_data(data, now)


def pair(cfg: MuxConfig | None = None) -> tuple[Mux, Mux]:
    c, s = Mux(cfg, client=True, now=0.0), Mux(cfg, client=False, now=0.0)
    assert xfer(c, s) == [] and xfer(s, c) == []
    return c, s


def open_one(cfg: MuxConfig) -> tuple[Mux, Mux]:
    """A client and a server with stream 1 open and its first credit granted."""
    c, s = pair(cfg)
    c.open_stream(SID, 0, b"")
    xfer(c, s)
    xfer(s, c)
    return c, s


def test_stream_lifecycle() -> None:
    c, s = pair()
    sid = c.open_stream(SID, 0, b"hdr")
    assert sid == 1
    ev = xfer(c, s)
    assert ev == [StreamOpened(1, SID, 0, b"hdr", False), CreditAvailable(1)]
    ev = xfer(s, c)  # the server's WINDOW for stream 1
    assert ev == [CreditAvailable(1)]
    assert c.send_credit(1) == min(c.config.initial_window, c.config.max_payload)
    assert c.send_data(1, 0, b"hello") == 5
    c.send_eof(1, 5)
    assert xfer(c, s) == [DataReceived(1, 0, b"hello"), EofReceived(1, 5)]
    s.consumed(1, 5)
    s.send_ack(1, 5, True)
    ev = xfer(s, c)
    assert AckReceived(1, 5, True) in ev
    s.reset_stream(1, ErrorCode.NO_ERROR, "done")
    assert xfer(s, c)[-1] == StreamReset(1, 0, "done")
    assert c.stream_count == 0 and s.stream_count == 0
    assert s.budget_used == 0
    # late frames for a closed stream are ignored, not fatal
    s.receive_data(F.encode(F.Ack(1, 5)), 0.0)


def test_flow_control_violation_kills_link() -> None:
    cfg = MuxConfig(
        min_window=4096,
        initial_window=8192,
        stream_window=8192,
        connection_window=8192,
        max_payload=4096,
    )
    _c, s = open_one(cfg)
    # a hostile sender ignores credit: 8192 granted, 12288 sent
    wire = b"".join(F.encode(F.Data(1, i * 4096, bytes(4096))) for i in range(3))
    with pytest.raises(LinkProtocolError, match="credit"):
        s.receive_data(wire, 0.0)


def test_slow_stream_does_not_block_others_and_memory_is_bounded() -> None:
    cfg = MuxConfig(
        stream_window=256 * 1024,
        min_window=16 * 1024,
        connection_window=512 * 1024,
        max_payload=16 * 1024,
    )
    c, s = pair(cfg)
    sids = [c.open_stream(SID, 0, b"") for _ in range(20)]
    xfer(c, s)
    got = dict.fromkeys(sids, 0)
    slow = sids[0]
    for _round in range(200):
        for sid in sids:
            while c.send_data(sid, 0, bytes(4096)):
                pass
        for ev in xfer(c, s):
            if isinstance(ev, DataReceived):
                got[ev.stream_id] += len(ev.payload)
                if ev.stream_id != slow:
                    s.consumed(ev.stream_id, len(ev.payload))
        xfer(s, c)
        bound = cfg.connection_window + len(sids) * cfg.min_window
        assert s.budget_used <= bound
    # the slow stream got its window and stopped; everyone else kept flowing
    assert got[slow] <= cfg.stream_window
    assert min(got[x] for x in sids[1:]) > 10 * cfg.stream_window


def test_window_autotunes_up_for_a_bulk_stream() -> None:
    cfg = MuxConfig(
        min_window=16 * 1024,
        initial_window=32 * 1024,
        stream_window=1024 * 1024,
        max_payload=16 * 1024,
    )
    c, s = open_one(cfg)
    in_flight = []
    for _ in range(200):
        while k := c.send_data(1, 0, bytes(16 * 1024)):
            in_flight.append(k)
        for ev in xfer(c, s):
            if isinstance(ev, DataReceived):
                s.consumed(1, len(ev.payload))  # a fast consumer
        xfer(s, c)
    # the sender could finally keep a full stream_window in flight
    c.send_data(1, 0, b"")
    total = 0
    while k := c.send_data(1, 0, bytes(16 * 1024)):
        total += k
    assert total > cfg.stream_window // 2


@pytest.mark.parametrize("lag", [1, 2, 4])
def test_window_autotunes_up_for_a_pipelined_consumer(lag: int) -> None:
    # A bulk stream whose application keeps up with the rate but takes each
    # frame a few steps after it arrived (the pump runs after the link reader):
    # part of the window is always buffered, part in flight. The window, not
    # the application, limits the sender, so it grows until the sender no
    # longer waits for credit.
    cfg = MuxConfig(
        min_window=16 * 1024,
        initial_window=64 * 1024,
        stream_window=1024 * 1024,
        max_payload=16 * 1024,
    )
    c, s = open_one(cfg)
    arrived: list[tuple[int, int]] = []
    stalls = []
    for step in range(400):
        stalls.append(c.send_data(1, 0, bytes(16 * 1024)) == 0)
        for ev in xfer(c, s):
            if isinstance(ev, DataReceived):
                arrived.append((step, len(ev.payload)))
        while arrived and arrived[0][0] <= step - lag:
            s.consumed(1, arrived.pop(0)[1])
        xfer(s, c)
    assert sum(stalls[-200:]) == 0, "still waiting for credit after the warm-up"
    assert s.budget_used <= cfg.stream_window


def test_trickling_stream_keeps_a_small_window() -> None:
    # A stream that sends far below its window (a console) never looks
    # window-limited: its credit stays above a quarter, its window stays put.
    cfg = MuxConfig(
        min_window=16 * 1024,
        initial_window=64 * 1024,
        stream_window=1024 * 1024,
        max_payload=16 * 1024,
    )
    c, s = open_one(cfg)
    for _ in range(2000):
        assert c.send_data(1, 0, bytes(100)) == 100
        for ev in xfer(c, s):
            if isinstance(ev, DataReceived):
                s.consumed(1, len(ev.payload))
        xfer(s, c)
    assert s.budget_used <= 64 * 1024  # granted + buffered: the window never grew


def test_connection_cap_shares_budget() -> None:
    cfg = MuxConfig(
        stream_window=1024 * 1024,
        min_window=16 * 1024,
        connection_window=1024 * 1024,
        max_payload=64 * 1024,
    )
    c, s = pair(cfg)
    for _ in range(50):
        c.open_stream(SID, 0, b"")
    xfer(c, s)
    # every stream has at least its reserve; total within cap + reserves
    assert s.budget_used <= cfg.connection_window + 50 * cfg.min_window
    xfer(s, c)
    assert all(c.send_credit(sid) >= cfg.min_window for sid in range(1, 101, 2))


def test_ping_and_dead_peer() -> None:
    cfg = MuxConfig(ping_interval=1.0, dead_after=3.0)
    c, s = pair(cfg)
    assert c.tick(1.0)
    xfer(c, s, 1.0)  # server answers PONG
    ev = xfer(s, c, 1.25)
    assert ev == [PongReceived(0.25, 1)]
    assert c.tick(2.0) and c.tick(4.0)
    assert not c.tick(4.26)  # nothing from the server since 1.25
    assert c.dead_reason


def test_goaway_drain() -> None:
    c, s = pair()
    c.open_stream(SID, 0, b"")  # 1
    xfer(c, s)
    s.goaway(ErrorCode.NO_ERROR, "restarting")
    c.open_stream(SID, 0, b"")  # 3, crosses the GOAWAY
    ev = xfer(s, c)
    assert GoAwayReceived(1, 0, "restarting") in ev
    assert StreamReset(3, ErrorCode.REFUSED, "peer is draining") in ev
    with pytest.raises(LinkClosingError):
        c.open_stream(SID, 0, b"")
    ev = xfer(c, s)  # stream 3's OPEN arrives after our GOAWAY: refused
    assert not any(isinstance(e, StreamOpened) for e in ev)
    assert c.has_stream(1) and s.has_stream(1)


@pytest.mark.parametrize(
    "wire",
    [
        F.encode(F.Data(1, 0, b"x")),  # before HELLO
        F.encode(F.Hello(9, 300000)),  # wrong version
    ],
)
def test_hello_required(wire: bytes) -> None:
    s = Mux(client=False, now=0)
    with pytest.raises(LinkProtocolError):
        s.receive_data(wire, 0)


@pytest.mark.parametrize(
    "frame",
    [
        F.Data(7, 0, b"x"),  # never opened
        F.Open(2, SID, 0, b""),  # server parity from the client side
        F.Hello(1, 300000),  # second HELLO
    ],
)
def test_protocol_errors_after_hello(frame: F.Frame) -> None:
    _c, s = pair()
    with pytest.raises(LinkProtocolError):
        s.receive_data(F.encode(frame), 0)


def test_stream_limit_refuses() -> None:
    cfg = MuxConfig(max_streams=2)
    c, s = pair(cfg)
    c.open_stream(SID, 0, b"")
    c.open_stream(SID, 0, b"")
    with pytest.raises(LinkClosingError):
        c.open_stream(SID, 0, b"")
    # a peer that ignores the limit gets a REFUSED reset, not a crash
    ev = s.receive_data(
        b"".join(bytes(x) for x in c.data_to_send()) + F.encode(F.Open(5, SID, 0, b"")), 0
    )
    assert sum(isinstance(e, StreamOpened) for e in ev) == 2
    out = b"".join(bytes(x) for x in s.data_to_send())
    assert F.encode(F.Reset(5, ErrorCode.REFUSED, "too many streams")) in out


@given(
    st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3), st.integers(1, 70000)), max_size=200)
)
@settings(max_examples=150, deadline=None)
def test_random_traffic_bytes_exact_and_bounded(ops: list[tuple[int, int, int]]) -> None:
    cfg = MuxConfig(
        stream_window=128 * 1024,
        min_window=8 * 1024,
        connection_window=192 * 1024,
        max_payload=8 * 1024,
    )
    c, s = pair(cfg)
    sids = [c.open_stream(SID, 0, b"") for _ in range(6)]
    xfer(c, s)
    xfer(s, c)
    sent = {x: 0 for x in sids}
    recv = {x: 0 for x in sids}
    unconsumed = {x: 0 for x in sids}
    for idx, action, n in ops:
        sid = sids[idx]
        if action == 0:
            payload = bytes([sid]) * n
            while payload:
                k = c.send_data(sid, sent[sid], payload)
                if not k:
                    break
                sent[sid] += k
                payload = payload[k:]
        elif action == 1:
            for ev in xfer(c, s):
                if isinstance(ev, DataReceived):
                    assert ev.offset == recv[ev.stream_id]
                    assert ev.payload == bytes([ev.stream_id]) * len(ev.payload)
                    recv[ev.stream_id] += len(ev.payload)
                    unconsumed[ev.stream_id] += len(ev.payload)
        elif action == 2:
            k = min(n, unconsumed[sid])
            unconsumed[sid] -= k
            s.consumed(sid, k)
        else:
            xfer(s, c)
        assert s.budget_used <= cfg.connection_window + len(sids) * cfg.min_window
        assert all(u <= cfg.stream_window for u in unconsumed.values())
    for ev in xfer(c, s):
        if isinstance(ev, DataReceived):
            recv[ev.stream_id] += len(ev.payload)
    assert recv == sent


def test_passed_payload_bytes_count_as_received() -> None:
    """A large payload whose bytes the reader moves itself (``passed``) uses credit
    like any DATA, and its consumption grants more; none is offered beyond credit."""
    cfg = MuxConfig(max_payload=256 * 1024, initial_window=128 * 1024)
    c, s = open_one(cfg)
    n = c.send_credit(1)
    assert c.send_data(1, 0, bytes(n)) == n
    wire = b"".join(bytes(x) for x in c.data_to_send())
    assert s.receive_data(wire[: F.HEADER_SIZE + 8], 1.0) == []
    assert s.pass_target() == (1, 0, n) and not s.passing
    assert s.passed(1000, 1.0) == (1, 0) and s.passing
    assert s.pass_target() == (1, 1000, n - 1000)
    assert s.passed(n - 1000, 1.0) == (1, 1000) and not s.passing
    assert s.pass_target() is None
    assert s.data_to_send() == []  # nothing consumed yet: no credit back
    s.consumed(1, n)
    assert CreditAvailable(1) in xfer(s, c)  # (a WINDOW)


def test_payload_beyond_credit_is_not_passed() -> None:
    cfg = MuxConfig(max_payload=256 * 1024, initial_window=128 * 1024)
    c, s = open_one(cfg)
    n = c.send_credit(1)
    big = F.encode(F.Data(1, 0, bytes(n + 1)))  # (a peer that ignores our credit)
    s.receive_data(big[: F.HEADER_SIZE + 8], 1.0)
    assert s.pass_target() is None  # received as usual: refused there
    with pytest.raises(LinkProtocolError):
        s.receive_data(big[F.HEADER_SIZE + 8 :], 1.0)
