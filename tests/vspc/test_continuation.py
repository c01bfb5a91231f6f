"""The appliance's stream ledger: a continued connection fits on exactly."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vspc.core.continuation import StreamLedger, recovered_have

KEY = ("esx-a", "b1-7")


@given(st.binary(min_size=1, max_size=400), st.data())
@settings(max_examples=300)
def test_vm_bytes_arrive_once_whatever_the_overlap(data: bytes, draw: st.DataObject) -> None:
    """Each connection carries the stream on from some offset at or before what the
    appliance has (the relay sends again what it never saw acknowledged)."""
    ledger = StreamLedger()
    cur, plan = ledger.begin(KEY)
    got = bytearray()
    pos = 0
    while pos < len(data):
        n = draw.draw(st.integers(1, len(data) - pos))
        got += cur.take(data[pos : pos + n])
        pos += n
        have = cur.received
        back = draw.draw(st.integers(0, have))  # the next connection starts here
        cur, plan = ledger.begin(KEY, have - back, 0, continues=True)
        assert plan.known and plan.skip == back and plan.missing_in is None
        pos = have - back
    assert bytes(got) == data


def test_a_gap_is_named_not_hidden() -> None:
    ledger = StreamLedger()
    cur, _ = ledger.begin(KEY)
    cur.take(b"0123")
    cur, plan = ledger.begin(KEY, 10, 0, continues=True)
    assert plan.missing_in == (4, 6) and plan.skip == 0
    assert cur.take(b"abc") == b"abc" and cur.received == 13


@given(st.binary(min_size=1, max_size=300), st.integers(0, 300), st.integers(0, 64))
def test_what_the_vm_never_got_is_sent_again(out: bytes, vm_has: int, keep: int) -> None:
    vm_has = min(vm_has, len(out))
    ledger = StreamLedger(keep=keep)
    cur, _ = ledger.begin(KEY)
    for i in range(0, len(out), 7):
        cur.sent_out(out[i : i + 7])
    cur, plan = ledger.begin(KEY, 0, vm_has, continues=True)
    behind = len(out) - vm_has
    kept = min(behind, keep)
    assert plan.resend == out[len(out) - kept :]
    assert plan.missing_out == ((vm_has, behind - kept) if kept < behind else None)
    cur.sent_out(plan.resend)  # sent again: counted in the VM's numbering
    assert cur.sent == vm_has + kept


def test_unknown_streams_and_the_bound() -> None:
    ledger = StreamLedger(max_streams=2)
    _, plan = ledger.begin(KEY, 50, 3, continues=True)
    assert not plan.known and plan.skip == 0
    ledger.begin(("h", "2"))
    ledger.begin(("h", "3"))
    assert len(ledger) == 2 and KEY not in ledger
    cur, plan = ledger.begin(KEY, 5, 0, continues=True, have=9)  # recovered from the log
    assert plan.known and plan.skip == 4 and cur.take(b"0123456") == b"456"
    with pytest.raises(ValueError):
        StreamLedger(max_streams=0)


def _event(kind: str, **fields: object) -> bytes:
    return json.dumps({"event": kind, **fields}).encode()


def test_recovered_have_from_the_event_log() -> None:
    mine = _event("connect", host="esx-a", stream="b1-7", offset=100, log_size=40)
    lines = [
        _event("connect", host="esx-a", stream="old", offset=0, log_size=0),
        mine,
        _event("client_attach", client=1),
        b"{torn line",
    ]
    assert recovered_have(lines, KEY, 70) == 130  # 30 bytes of it logged since
    assert recovered_have(lines, KEY, 39) is None  # the log was rotated
    assert recovered_have(lines, ("esx-a", "other"), 70) is None
    other = [mine, _event("connect", host="esx-a", stream="x", offset=0, log_size=50)]
    assert recovered_have(other, KEY, 70) is None  # another stream wrote since
    assert recovered_have([_event("connect", host="esx-a", stream="b1-7")], KEY, 9) is None
    assert recovered_have([], KEY, 0) is None
