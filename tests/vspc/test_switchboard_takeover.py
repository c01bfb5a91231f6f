"""Switchboard: a port is taken over only from the same source or after a failed probe;
vMotion slots are capped per source address."""

from __future__ import annotations

from collections.abc import Sequence

from vspc.core.identity import PortKey
from vspc.core.switchboard import (
    Action,
    CloseConn,
    Deliver,
    Dropped,
    EventKind,
    PortEvent,
    ProbeConn,
    SendData,
    SendGoahead,
    SendNotNow,
    Switchboard,
)

K = PortKey("501d2a" + "0" * 26, "serial0")


def sb(**kw: int) -> Switchboard:
    args = {
        "vmotion_timeout": 30.0,
        "max_concurrent_vmotions": 64,
        "to_vm_buffer_limit": 1024,
        "max_vmotions_per_source": 2,
    }
    args.update(kw)
    return Switchboard(**args)  # type: ignore[arg-type]


def kinds(acts: Sequence[object]) -> list[str]:
    return [str(a.kind) for a in acts if isinstance(a, PortEvent)]


def arrives(
    s: Switchboard, conn: str, source: str, now: float = 1.0, key: PortKey = K
) -> list[Action]:
    """A connection from ``source`` opens and names ``key`` at ``now``: the actions."""
    s.connection_opened(conn, source)
    return s.identified(conn, key, now)


def carried(s: Switchboard, conn: str, source: str, key: PortKey = K) -> None:
    arrives(s, conn, source, 0.0, key)


def test_same_source_takes_over_at_once() -> None:
    s = sb()
    carried(s, "old", "10.0.0.1")
    acts = arrives(s, "new", "10.0.0.1")
    assert kinds(acts) == ["identity", "takeover"]
    assert s.carrier(K) == "new"


def test_other_source_refused_when_the_carrier_answers() -> None:
    s = sb()
    carried(s, "esx", "10.0.0.1")
    acts = arrives(s, "thief", "10.9.9.9")
    assert ProbeConn("esx") in acts and kinds(acts) == ["takeover_probe"]
    assert s.carrier(K) == "esx"
    assert s.from_vm("thief", b"evil") == []  # held, never delivered
    assert s.to_vm(K, b"password") == [SendData("esx", b"password")]
    acts = s.probe_answered("esx")
    assert kinds(acts) == ["takeover_refused"]
    assert any(isinstance(a, CloseConn) and a.conn == "thief" for a in acts)
    assert Dropped("thief", b"evil", "takeover refused") in acts
    assert not any(isinstance(a, Deliver) for a in acts)
    assert s.carrier(K) == "esx"
    assert s.probe_failed("esx", 9.0) == []  # nobody contends any more


def test_other_source_takes_over_a_dead_carrier() -> None:
    s = sb()
    carried(s, "esx", "10.0.0.1")
    arrives(s, "new", "10.0.0.2")
    s.from_vm("new", b"after")
    acts = s.probe_failed("esx", 6.0)
    assert kinds(acts) == ["identity", "takeover"]
    assert any(isinstance(a, CloseConn) and a.conn == "esx" for a in acts)
    assert s.carrier(K) == "new"
    acts = s.connection_closed("esx", 7.0)
    assert Deliver(K, b"after") in acts


def test_contender_promoted_when_the_carrier_closes() -> None:
    s = sb()
    carried(s, "esx", "10.0.0.1")
    for c in ("a", "b"):
        arrives(s, c, "10.0.0.2")
    acts = s.connection_closed("esx", 2.0)
    assert s.carrier(K) == "b"
    assert any(isinstance(a, CloseConn) and a.conn == "a" for a in acts)


def test_contender_closing_is_forgotten() -> None:
    s = sb()
    carried(s, "esx", "10.0.0.1")
    arrives(s, "x", "10.0.0.2")
    s.from_vm("x", b"zz")
    acts = s.connection_closed("x", 2.0)
    assert Dropped("x", b"zz", "contender closed") in acts
    assert s.probe_failed("esx", 9.0) == []
    assert s.carrier(K) == "esx"


def _vm(s: Switchboard, i: int, source: str) -> str:
    conn = f"{source}/{i}"
    carried(s, conn, source, PortKey(f"{i:032x}", "serial0"))
    return conn


def test_vmotion_slots_are_capped_per_source() -> None:
    s = sb(max_vmotions_per_source=2, max_concurrent_vmotions=3)
    flood = [_vm(s, i, "10.6.6.6") for i in range(5)]
    answers = [type(s.begin(c, b"s%d" % i, b"k", 0.0)[0]) for i, c in enumerate(flood)]
    assert answers == [SendGoahead, SendGoahead, SendNotNow, SendNotNow, SendNotNow]
    honest = [_vm(s, 100 + i, src) for i, src in enumerate(["10.0.0.1", "10.0.0.2"])]
    # the total (3) is reached by the 2nd source's first; another source's first still passes
    assert isinstance(s.begin(honest[0], b"h0", b"k", 0.0)[0], SendGoahead)
    assert isinstance(s.begin(honest[1], b"h1", b"k", 0.0)[0], SendGoahead)
    s.abort(flood[0], 1.0)
    assert isinstance(s.begin(flood[2], b"again", b"k", 1.0)[0], SendNotNow)  # total reached
    s.abort(honest[0], 1.0)
    assert isinstance(s.begin(flood[2], b"again", b"k", 1.0)[0], SendGoahead)


def test_vmotion_slot_freed_on_expiry() -> None:
    s = sb(max_vmotions_per_source=1)
    a, b = _vm(s, 1, "10.0.0.1"), _vm(s, 2, "10.0.0.1")
    assert isinstance(s.begin(a, b"1", b"k", 0.0)[0], SendGoahead)
    assert isinstance(s.begin(b, b"2", b"k", 0.0)[0], SendNotNow)
    assert kinds(s.tick(31.0)) == [str(EventKind.VMOTION_EXPIRE)]
    assert isinstance(s.begin(b, b"2", b"k", 31.0)[0], SendGoahead)
