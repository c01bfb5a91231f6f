"""Telnet option negotiation per RFC 1143 (the "Q method"), sans-IO.

Each option has two independent sides:

* **local** ("us"): whether *we* perform the option. The peer asks with DO/DONT,
  we offer with WILL/WONT.
* **remote** ("him"): whether the *peer* performs it. The peer offers with
  WILL/WONT, we ask with DO/DONT.

Each side of each option is in one of NO, YES, WANTNO, WANTYES, plus a one-slot
queue (EMPTY/OPPOSITE) for a request made while a negotiation is in flight. This
is what guarantees no negotiation loops and no re-acknowledging: we never answer
a request that does not change state, and never send a request twice.

Policy: ``accept_local`` / ``accept_remote`` are the options we agree to when
the peer proposes them (WILL for remote, DO for local). Anything else is refused
(DONT / WONT) -- by default AUTHENTICATION (37) and COM-PORT (44) are refused
because they are in neither set. An option we ask for ourselves with
``request_*(opt, True)`` is enabled when the peer agrees, whatever the policy.

API::

    n = OptionNegotiator(accept_local={BINARY, SGA}, accept_remote={BINARY, SGA})
    wire = n.request_local(BINARY, True)      # -> IAC WILL BINARY (or b"")
    wire = n.request_remote(BINARY, True)     # -> IAC DO BINARY   (or b"")
    reply, changes = n.receive(Negotiate(DO, BINARY))
    n.is_enabled_local(BINARY); n.is_enabled_remote(BINARY)

``changes`` lists :class:`OptionChange` for every side whose enabled-ness
changed. An option counts as enabled only in state YES: a side we start to
disable (WANTNO) stops counting as enabled at once -- request_* with
``enable=False`` returns the change right away via :meth:`pop_changes`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from .codec import DO, DONT, WILL, WONT, Negotiate, negotiate

Side = Literal["local", "remote"]

NO: Final = 0
YES: Final = 1
WANTNO: Final = 2
WANTYES: Final = 3

_EMPTY: Final = False
_OPPOSITE: Final = True


@dataclass(frozen=True, slots=True)
class OptionChange:
    """One side of one option became enabled or disabled."""

    side: Side
    option: int
    enabled: bool


# One side of one option is stored as a small int: RFC 1143 state + 4 * queue bit
# (thousands of sessions are open at once: no object per option side).
_QUEUE_BIT: Final = 4


def _pack(state: int, queue: bool) -> int:
    return state | (_QUEUE_BIT if queue else 0)


class OptionNegotiator:
    """Both sides of Telnet option negotiation; see the module docstring."""

    __slots__ = ("_changes", "_local", "_remote", "accept_local", "accept_remote")

    def __init__(self, accept_local: Iterable[int] = (), accept_remote: Iterable[int] = ()) -> None:
        self.accept_local: frozenset[int] = frozenset(accept_local)
        self.accept_remote: frozenset[int] = frozenset(accept_remote)
        self._local: dict[int, int] = {}  # option -> _pack(state, queue); absent: NO, EMPTY
        self._remote: dict[int, int] = {}
        self._changes: list[OptionChange] = []

    # --- queries ---------------------------------------------------------------
    def is_enabled_local(self, option: int) -> bool:
        return self.state_local(option) == YES

    def is_enabled_remote(self, option: int) -> bool:
        return self.state_remote(option) == YES

    def state_local(self, option: int) -> int:
        return self._local.get(option, NO) & 3

    def state_remote(self, option: int) -> int:
        return self._remote.get(option, NO) & 3

    def pending(self) -> bool:
        """True while any negotiation we started is waiting for an answer."""
        return any(
            (v & 3) in (WANTNO, WANTYES) for v in (*self._local.values(), *self._remote.values())
        )

    def pop_changes(self) -> list[OptionChange]:
        """Changes caused by request_* calls (receive() returns its own)."""
        out, self._changes = self._changes, []
        return out

    # --- our requests ----------------------------------------------------------
    def request_local(self, option: int, enable: bool) -> bytes:
        """Ask to start (WILL) or stop (WONT) performing ``option`` ourselves."""
        return self._request("local", option, enable)

    def request_remote(self, option: int, enable: bool) -> bytes:
        """Ask the peer to start (DO) or stop (DONT) performing ``option``."""
        return self._request("remote", option, enable)

    def _request(self, side: Side, option: int, enable: bool) -> bytes:
        table = self._local if side == "local" else self._remote
        yes_verb, no_verb = (WILL, WONT) if side == "local" else (DO, DONT)
        v = table.get(option, 0)
        s, queue = v & 3, bool(v & _QUEUE_BIT)
        out = b""
        if enable:
            if s == NO:
                s = WANTYES
                out = negotiate(yes_verb, option)
            elif s == WANTNO and queue == _EMPTY:
                queue = _OPPOSITE
            elif s == WANTYES and queue == _OPPOSITE:
                queue = _EMPTY
        elif s == YES:
            s = WANTNO
            self._changes.append(OptionChange(side, option, False))
            out = negotiate(no_verb, option)
        elif s == WANTNO and queue == _OPPOSITE:
            queue = _EMPTY
        elif s == WANTYES and queue == _EMPTY:
            queue = _OPPOSITE
        table[option] = _pack(s, queue)
        return out

    # --- the peer's messages ---------------------------------------------------
    def receive(self, event: Negotiate) -> tuple[bytes, list[OptionChange]]:
        """Handle the peer's WILL/WONT/DO/DONT; return (reply bytes, changes)."""
        verb, option = event.verb, event.option
        meaning = _PEER_SAYS.get(verb)
        if meaning is None:
            raise ValueError(f"not a negotiation verb: {verb}")
        side, peer_yes = meaning
        table = self._local if side == "local" else self._remote
        v = table.get(option)
        if v is None:
            if not peer_yes:
                return b"", []  # NO and peer says no: nothing to do, nothing stored
            v = 0
        send: int | None
        if peer_yes and v & 3 == NO:  # the peer proposes: the policy decides
            accept = self.accept_local if side == "local" else self.accept_remote
            after, send = (v | YES, _SEND_YES) if option in accept else (v, _SEND_NO)
        else:
            after, send = (_ON_PEER_YES if peer_yes else _ON_PEER_NO)[v]
        if after == NO:  # NO and EMPTY: keep memory proportional to options in use
            table.pop(option, None)
        else:
            table[option] = after
        reply = b"" if send is None else negotiate(_VERBS_OF[side][send], option)
        enabled = after & 3 == YES
        if (v & 3 == YES) == enabled:
            return reply, []
        return reply, [OptionChange(side, option, enabled)]


# What the peer's verb is about: (side, whether the peer says "yes").
_PEER_SAYS: Final[dict[int, tuple[Side, bool]]] = {
    WILL: ("remote", True),
    WONT: ("remote", False),
    DO: ("local", True),
    DONT: ("local", False),
}

# Our verbs for each side, indexed by _SEND_YES / _SEND_NO.
_VERBS_OF: Final[dict[Side, tuple[int, int]]] = {"local": (WILL, WONT), "remote": (DO, DONT)}
_SEND_YES: Final = 0
_SEND_NO: Final = 1

_Q: Final = _QUEUE_BIT
_Transition = tuple[int, int | None]  # (packed state after, what to send: _SEND_* or None)

# RFC 1143, the peer's "yes" (WILL/DO), by packed state (state | queue bit). NO is
# not here: the peer proposes and ``accept_*`` decides (see receive).
_ON_PEER_YES: Final[dict[int, _Transition]] = {
    YES: (YES, None),  # already on: ignore (no re-acknowledging)
    YES | _Q: (YES | _Q, None),
    WANTNO: (NO, None),  # error: our "no" answered by "yes"
    WANTNO | _Q: (YES, None),
    WANTYES: (YES, None),
    WANTYES | _Q: (WANTNO, _SEND_NO),
}

# RFC 1143, the peer's "no" (WONT/DONT), by packed state.
_ON_PEER_NO: Final[dict[int, _Transition]] = {
    NO: (NO, None),  # already off: ignore
    NO | _Q: (NO | _Q, None),
    YES: (NO, _SEND_NO),
    YES | _Q: (NO | _Q, _SEND_NO),
    WANTNO: (NO, None),
    WANTNO | _Q: (WANTYES, _SEND_YES),
    WANTYES: (NO, None),
    WANTYES | _Q: (NO, None),
}
