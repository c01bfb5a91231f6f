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


class _Q:
    """State of one side of one option: RFC 1143 state + queue bit."""

    __slots__ = ("queue", "state")

    def __init__(self) -> None:
        self.state = NO
        self.queue = _EMPTY


class OptionNegotiator:
    """Both sides of Telnet option negotiation; see the module docstring."""

    __slots__ = ("_changes", "_local", "_remote", "accept_local", "accept_remote")

    def __init__(self, accept_local: Iterable[int] = (), accept_remote: Iterable[int] = ()) -> None:
        self.accept_local: frozenset[int] = frozenset(accept_local)
        self.accept_remote: frozenset[int] = frozenset(accept_remote)
        self._local: dict[int, _Q] = {}
        self._remote: dict[int, _Q] = {}
        self._changes: list[OptionChange] = []

    # --- queries ---------------------------------------------------------------
    def is_enabled_local(self, option: int) -> bool:
        q = self._local.get(option)
        return q is not None and q.state == YES

    def is_enabled_remote(self, option: int) -> bool:
        q = self._remote.get(option)
        return q is not None and q.state == YES

    def state_local(self, option: int) -> int:
        q = self._local.get(option)
        return NO if q is None else q.state

    def state_remote(self, option: int) -> int:
        q = self._remote.get(option)
        return NO if q is None else q.state

    def pending(self) -> bool:
        """True while any negotiation we started is waiting for an answer."""
        return any(
            q.state in (WANTNO, WANTYES) for q in (*self._local.values(), *self._remote.values())
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
        q = table.get(option)
        if q is None:
            q = table[option] = _Q()
        s = q.state
        if enable:
            if s == NO:
                q.state = WANTYES
                return negotiate(yes_verb, option)
            if s == WANTNO and q.queue == _EMPTY:
                q.queue = _OPPOSITE
            elif s == WANTYES and q.queue == _OPPOSITE:
                q.queue = _EMPTY
            return b""
        if s == YES:
            q.state = WANTNO
            self._changes.append(OptionChange(side, option, False))
            return negotiate(no_verb, option)
        if s == WANTNO and q.queue == _OPPOSITE:
            q.queue = _EMPTY
        elif s == WANTYES and q.queue == _EMPTY:
            q.queue = _OPPOSITE
        return b""

    # --- the peer's messages ---------------------------------------------------
    def receive(self, event: Negotiate) -> tuple[bytes, list[OptionChange]]:
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
        q = table.get(option)
        if q is None:
            if verb in (WONT, DONT):
                return b"", []  # NO and peer says no: nothing to do, nothing stored
            q = table[option] = _Q()
        before = q.state == YES
        reply = b""
        s = q.state
        if verb in (WILL, DO):  # peer wants it on
            if s == NO:
                if accept:
                    q.state = YES
                    reply = negotiate(yes_verb, option)
                else:
                    reply = negotiate(no_verb, option)
            elif s == WANTNO:
                # Error: our "no" answered by "yes".
                if q.queue == _EMPTY:
                    q.state = NO
                else:
                    q.state = YES
                    q.queue = _EMPTY
            elif s == WANTYES:
                if q.queue == _EMPTY:
                    q.state = YES
                else:
                    q.state = WANTNO
                    q.queue = _EMPTY
                    reply = negotiate(no_verb, option)
            # YES: already on, ignore (no re-acknowledging)
        else:  # peer says off
            if s == YES:
                q.state = NO
                reply = negotiate(no_verb, option)
            elif s == WANTNO:
                if q.queue == _EMPTY:
                    q.state = NO
                else:
                    q.state = WANTYES
                    q.queue = _EMPTY
                    reply = negotiate(yes_verb, option)
            elif s == WANTYES:
                q.state = NO
                q.queue = _EMPTY
            # NO: ignore
        after = q.state == YES
        if q.state == NO and q.queue == _EMPTY:
            del table[option]  # keep memory proportional to options in use
        changes = [OptionChange(side, option, after)] if before != after else []
        return reply, changes
