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
    def receive(self, event: Negotiate) -> tuple[bytes, list[OptionChange]]:  # noqa: C901
        """Handle the peer's WILL/WONT/DO/DONT; return (reply bytes, changes)."""
        verb, option = event.verb, event.option
        if verb in (WILL, WONT):
            side: Side = "remote"
            table = self._remote
            accept = option in self.accept_remote
            yes_verb, no_verb = DO, DONT
        elif verb in (DO, DONT):
            side = "local"
            table = self._local
            accept = option in self.accept_local
            yes_verb, no_verb = WILL, WONT
        else:
            raise ValueError(f"not a negotiation verb: {verb}")
        v = table.get(option)
        if v is None:
            if verb in (WONT, DONT):
                return b"", []  # NO and peer says no: nothing to do, nothing stored
            v = 0
        s, queue = v & 3, bool(v & _QUEUE_BIT)
        before = s == YES
        reply = b""
        if verb in (WILL, DO):  # peer wants it on
            if s == NO:
                if accept:
                    s = YES
                    reply = negotiate(yes_verb, option)
                else:
                    reply = negotiate(no_verb, option)
            elif s == WANTNO:
                # Error: our "no" answered by "yes".
                if queue == _EMPTY:
                    s = NO
                else:
                    s = YES
                    queue = _EMPTY
            elif s == WANTYES:
                if queue == _EMPTY:
                    s = YES
                else:
                    s = WANTNO
                    queue = _EMPTY
                    reply = negotiate(no_verb, option)
            # YES: already on, ignore (no re-acknowledging)
        else:  # peer says off
            if s == YES:
                s = NO
                reply = negotiate(no_verb, option)
            elif s == WANTNO:
                if queue == _EMPTY:
                    s = NO
                else:
                    s = WANTYES
                    queue = _EMPTY
                    reply = negotiate(yes_verb, option)
            elif s == WANTYES:
                s = NO
                queue = _EMPTY
            # NO: ignore
        after = s == YES
        if s == NO and queue == _EMPTY:
            table.pop(option, None)  # keep memory proportional to options in use
        else:
            table[option] = _pack(s, queue)
        changes = [OptionChange(side, option, after)] if before != after else []
        return reply, changes
