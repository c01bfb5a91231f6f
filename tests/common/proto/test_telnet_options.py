"""RFC 1143 option negotiation: examples and two negotiators talking to each other."""

from __future__ import annotations

from collections import deque
from typing import ClassVar

from hypothesis import given, settings
from hypothesis import strategies as st

from common.proto.telnet.codec import (
    AUTHENTICATION,
    BINARY,
    COM_PORT,
    DO,
    DONT,
    SGA,
    VMWARE_EXT,
    WILL,
    WONT,
    Negotiate,
    TelnetParser,
    negotiate,
)
from common.proto.telnet.options import WANTNO, OptionChange, OptionNegotiator


def test_accept_and_refuse_by_policy() -> None:
    n = OptionNegotiator(accept_local={BINARY}, accept_remote={BINARY, SGA})
    assert n.receive(Negotiate(WILL, BINARY)) == (
        negotiate(DO, BINARY),
        [OptionChange("remote", BINARY, True)],
    )
    assert n.is_enabled_remote(BINARY)
    assert n.receive(Negotiate(WILL, AUTHENTICATION)) == (negotiate(DONT, AUTHENTICATION), [])
    assert n.receive(Negotiate(WILL, COM_PORT)) == (negotiate(DONT, COM_PORT), [])
    assert n.receive(Negotiate(DO, SGA)) == (negotiate(WONT, SGA), [])
    assert n.receive(Negotiate(DO, BINARY)) == (
        negotiate(WILL, BINARY),
        [OptionChange("local", BINARY, True)],
    )
    assert not n.is_enabled_remote(COM_PORT)


def test_no_reacknowledging() -> None:
    n = OptionNegotiator(accept_remote={BINARY})
    n.receive(Negotiate(WILL, BINARY))
    # a repeated WILL while enabled gets no answer
    assert n.receive(Negotiate(WILL, BINARY)) == (b"", [])
    # WONT for a disabled option: no answer
    assert n.receive(Negotiate(WONT, SGA)) == (b"", [])
    # DONT for an option we do not perform: no answer
    assert n.receive(Negotiate(DONT, SGA)) == (b"", [])


def test_our_request_acknowledged() -> None:
    n = OptionNegotiator()
    assert n.request_remote(VMWARE_EXT, True) == negotiate(DO, VMWARE_EXT)
    assert n.request_remote(VMWARE_EXT, True) == b""  # no duplicate request
    assert n.pending()
    assert n.receive(Negotiate(WILL, VMWARE_EXT)) == (
        b"",
        [OptionChange("remote", VMWARE_EXT, True)],
    )
    assert not n.pending()
    assert n.request_remote(VMWARE_EXT, False) == negotiate(DONT, VMWARE_EXT)
    assert n.state_remote(VMWARE_EXT) == WANTNO
    assert n.pop_changes() == [OptionChange("remote", VMWARE_EXT, False)]
    assert n.receive(Negotiate(WONT, VMWARE_EXT)) == (b"", [])
    assert not n.is_enabled_remote(VMWARE_EXT)


def test_our_request_refused() -> None:
    n = OptionNegotiator()
    n.request_local(BINARY, True)
    assert n.receive(Negotiate(DONT, BINARY)) == (b"", [])
    assert not n.is_enabled_local(BINARY) and not n.pending()


def test_queued_opposite_request() -> None:
    n = OptionNegotiator()
    assert n.request_local(BINARY, True) == negotiate(WILL, BINARY)
    assert n.request_local(BINARY, False) == b""  # queued
    # peer agrees: we immediately ask to turn it off again
    assert n.receive(Negotiate(DO, BINARY)) == (negotiate(WONT, BINARY), [])
    assert n.receive(Negotiate(DONT, BINARY)) == (b"", [])
    assert not n.is_enabled_local(BINARY)


def test_peer_disables() -> None:
    n = OptionNegotiator(accept_local={SGA})
    n.receive(Negotiate(DO, SGA))
    assert n.receive(Negotiate(DONT, SGA)) == (
        negotiate(WONT, SGA),
        [OptionChange("local", SGA, False)],
    )


# --- two negotiators --------------------------------------------------------------

OPTS = [BINARY, SGA, VMWARE_EXT]

action = st.one_of(
    st.tuples(
        st.just("req"),
        st.sampled_from("AB"),
        st.sampled_from(["local", "remote"]),
        st.sampled_from(OPTS),
        st.booleans(),
    ),
    st.tuples(st.just("deliver"), st.sampled_from("AB")),
)


class _TwoPeers:
    """A and B joined by a wire; ``queue[x]`` holds bytes sent BY x, not yet delivered."""

    OTHER: ClassVar[dict[str, str]] = {"A": "B", "B": "A"}

    def __init__(self, a_loc: set[int], a_rem: set[int], b_loc: set[int], b_rem: set[int]) -> None:
        self.peers = {
            "A": OptionNegotiator(accept_local=a_loc, accept_remote=a_rem),
            "B": OptionNegotiator(accept_local=b_loc, accept_remote=b_rem),
        }
        self.parsers = {"A": TelnetParser(), "B": TelnetParser()}
        self.queue: dict[str, deque[bytes]] = {"A": deque(), "B": deque()}
        self.sent = 0
        self.requests = 0
        # who requested what, per (performer, option); and each requester's last wish
        self.requesters: dict[tuple[str, int], set[str]] = {}
        self.last: dict[tuple[str, str, int], bool] = {}

    def request(self, who: str, side: str, opt: int, enable: bool) -> None:
        n = self.peers[who]
        out = n.request_local(opt, enable) if side == "local" else n.request_remote(opt, enable)
        self.requests += 1
        # the option "A local" is the same thing as "B remote"
        key = (who if side == "local" else self.OTHER[who], opt)
        self.requesters.setdefault(key, set()).add(who)
        self.last[(who, side, opt)] = enable
        if out:
            self.queue[who].append(out)
            self.sent += 1

    def deliver(self, frm: str) -> None:
        if not self.queue[frm]:
            return
        to = self.OTHER[frm]
        for ev in self.parsers[to].feed(self.queue[frm].popleft()):
            assert isinstance(ev, Negotiate)
            reply, _ = self.peers[to].receive(ev)
            if reply:
                self.queue[to].append(reply)
                self.sent += 1

    def drain(self) -> None:
        """Deliver until both directions are empty, bounded: no loops."""
        steps = 0
        while self.queue["A"] or self.queue["B"]:
            self.deliver("A")
            self.deliver("B")
            steps += 1
            assert steps < 1000, "negotiation loop"

    def enabled(self, who: str, side: str, opt: int) -> bool:
        n = self.peers[who]
        return n.is_enabled_local(opt) if side == "local" else n.is_enabled_remote(opt)


def _run(wire: _TwoPeers, actions: list[tuple[object, ...]]) -> None:
    for act in actions:
        if act[0] == "req":
            _, who, side, opt, enable = act
            assert isinstance(who, str) and isinstance(opt, int) and isinstance(enable, bool)
            wire.request(who, str(side), opt, enable)
        else:
            wire.deliver(str(act[1]))


def _assert_settled_and_agreed(wire: _TwoPeers) -> None:
    a, b = wire.peers["A"], wire.peers["B"]
    for opt in OPTS:
        assert a.is_enabled_local(opt) == b.is_enabled_remote(opt)
        assert a.is_enabled_remote(opt) == b.is_enabled_local(opt)
    assert not a.pending() and not b.pending()


def _assert_sole_requester_wins(wire: _TwoPeers) -> None:
    """When only one party asked about a side of an option, and the other accepts,
    the outcome is exactly its last request."""
    for (performer, opt), who_set in wire.requesters.items():
        if len(who_set) != 1:
            continue
        (who,) = who_set
        side = "local" if who == performer else "remote"
        want = wire.last[(who, side, opt)]
        acceptor = wire.peers[wire.OTHER[who]]
        accepts = opt in (acceptor.accept_remote if side == "local" else acceptor.accept_local)
        enabled = wire.enabled(who, side, opt)
        if accepts:
            assert enabled == want
        elif not want:
            assert not enabled


@settings(max_examples=300)
@given(
    st.lists(action, max_size=60),
    st.sets(st.sampled_from(OPTS)),
    st.sets(st.sampled_from(OPTS)),
    st.sets(st.sampled_from(OPTS)),
    st.sets(st.sampled_from(OPTS)),
)
def test_two_negotiators_converge_without_loops(
    actions: list[tuple[object, ...]],
    a_loc: set[int],
    a_rem: set[int],
    b_loc: set[int],
    b_rem: set[int],
) -> None:
    wire = _TwoPeers(a_loc, a_rem, b_loc, b_rem)
    _run(wire, actions)
    wire.drain()
    assert wire.sent <= 4 * wire.requests + 2 * len(OPTS) * 2
    _assert_settled_and_agreed(wire)
    _assert_sole_requester_wins(wire)
