"""The per-stream resume state machine (sans-IO), after h11's state tables.

A resumable stream (``common.link.resumable.ResumableStream``) is, at any
moment, in one ``PathState``: attached to a path on some peer link, waiting
for one, or ended. Inputs (``PathInput``) move it along ``TRANSITIONS``;
anything else raises ``StreamStateError``, which carries the ``ErrorCode`` the
stream is reset with. The adapter only carries the decisions out::

    opener:   IDLE --open--> OPENING --answered--> ATTACHED --lost--> DETACHED
              DETACHED --open--> RESUMING --answered--> ATTACHED
              RESUMING/ATTACHED --session lost--> ORPHANED --open--> CONTINUING
              CONTINUING --answered--> ATTACHED (a new session carrying the old on)
    acceptor: IDLE --attach--> ATTACHED --lost--> DETACHED --attach--> ATTACHED
    both:     ATTACHED (or waiting for the answer) --complete--> CLOSED
              any state that has not ended --fail--> FAILED

A path lost while waiting for the answer returns to the state the OPEN was
sent from. CLOSED and FAILED absorb every later input (late events for a stream
that ended are ignored; the first end wins).

The application's side has its own small table (``AppState``): it may close
for sending (half-close) and then close altogether; a closed stream lingers
until what it wrote is delivered.

``reset_input`` decides what a RESET from the peer on the current path means,
``completion`` how a complete path ends; ``Backoff`` is the reconnect schedule
(the adapter sleeps).
"""

from __future__ import annotations

import enum

from common.proto.link.frames import ErrorCode


class PathState(enum.Enum):
    IDLE = "idle"  # no path yet (opener before its first OPEN, acceptor before attaching)
    OPENING = "opening"  # opener: first OPEN sent, waiting for the acceptor's answer
    ATTACHED = "attached"  # bytes flow on a path
    DETACHED = "detached"  # path lost: the acceptor waits for a resume, the opener reconnects
    RESUMING = "resuming"  # opener: resume OPEN sent, waiting for the resume point
    ORPHANED = "orphaned"  # opener: the acceptor lost the session; the next OPEN continues it
    CONTINUING = "continuing"  # opener: CONTINUE OPEN sent, waiting for the new session's answer
    CLOSED = "closed"  # complete at both ends
    FAILED = "failed"  # ended abnormally (``StreamMachine.code``)


class PathInput(enum.Enum):
    SEND_OPEN = "send open"  # opener: an OPEN went out on a link
    ANSWERED = "answered"  # opener: the acceptor's first ACK (its resume point) arrived
    ATTACH = "attach"  # acceptor: an OPEN (re)attached the session (superseding any old path)
    PATH_LOST = "path lost"  # the path went away (retryable RESET, route change)
    SESSION_LOST = "session lost"  # opener: the acceptor no longer has the session
    COMPLETE = "complete"  # the session is complete at both ends
    FAIL = "fail"  # the stream ends abnormally


class AppState(enum.Enum):
    OPEN = "open"
    SEND_CLOSED = "send closed"  # send_eof: the application writes no more
    CLOSED = "closed"  # aclose: the application is gone; the stream lingers to deliver


class AppInput(enum.Enum):
    SEND_EOF = "send eof"
    CLOSE = "close"


_S, _I = PathState, PathInput
_WAITING = (_S.OPENING, _S.RESUMING, _S.CONTINUING)
_LIVE = (_S.IDLE, *_WAITING, _S.ATTACHED, _S.DETACHED, _S.ORPHANED)
TERMINAL = frozenset({_S.CLOSED, _S.FAILED})

TRANSITIONS: dict[tuple[PathState, PathInput], PathState] = {
    (_S.IDLE, _I.SEND_OPEN): _S.OPENING,
    (_S.IDLE, _I.ATTACH): _S.ATTACHED,
    (_S.DETACHED, _I.SEND_OPEN): _S.RESUMING,
    (_S.DETACHED, _I.ATTACH): _S.ATTACHED,
    (_S.ORPHANED, _I.SEND_OPEN): _S.CONTINUING,
    (_S.ATTACHED, _I.ATTACH): _S.ATTACHED,
    (_S.ATTACHED, _I.PATH_LOST): _S.DETACHED,
    (_S.ATTACHED, _I.SESSION_LOST): _S.ORPHANED,
    (_S.OPENING, _I.PATH_LOST): _S.IDLE,
    (_S.RESUMING, _I.PATH_LOST): _S.DETACHED,
    (_S.RESUMING, _I.SESSION_LOST): _S.ORPHANED,
    (_S.CONTINUING, _I.PATH_LOST): _S.ORPHANED,
    (_S.CONTINUING, _I.SESSION_LOST): _S.ORPHANED,
    **{(s, _I.ANSWERED): _S.ATTACHED for s in _WAITING},
    **{(s, _I.COMPLETE): _S.CLOSED for s in (*_WAITING, _S.ATTACHED)},
    **{(s, _I.FAIL): _S.FAILED for s in _LIVE},
}

APP_TRANSITIONS: dict[tuple[AppState, AppInput], AppState] = {
    (AppState.OPEN, AppInput.SEND_EOF): AppState.SEND_CLOSED,
    (AppState.OPEN, AppInput.CLOSE): AppState.CLOSED,
    (AppState.SEND_CLOSED, AppInput.CLOSE): AppState.CLOSED,
}

# a RESET with one of these codes loses the path, not the session: resume elsewhere
RETRYABLE = frozenset({ErrorCode.INTERNAL, ErrorCode.REFUSED, ErrorCode.SUPERSEDED})


class StreamStateError(Exception):
    """An input the current state does not allow; the stream is reset with ``code``."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.PROTOCOL) -> None:
        super().__init__(message)
        self.code = code


class StreamMachine:
    """One stream's resume state: where its path is, and how it ended.

    ``state`` and ``app`` change only through the inputs below; the flags beside
    them (``waiting_answer``, ``ended``, ``clean``, ``send_closed``,
    ``app_closed``) follow from them and are plain attributes because the
    adapter reads them on every chunk."""

    __slots__ = (
        "app",
        "app_closed",
        "clean",
        "code",
        "continue_from",
        "ended",
        "local",
        "opener",
        "send_closed",
        "state",
        "waiting_answer",
    )

    def __init__(self, *, opener: bool) -> None:
        self.opener = opener
        self.code: int | None = None  # FAILED: the ErrorCode it ended with
        self.local = False  # FAILED: we detected it (the peer may not know yet)
        self.continue_from: int | None = None  # ORPHANED/CONTINUING: the new session's start
        self.app = AppState.OPEN
        self.send_closed = False  # the application writes no more
        self.app_closed = False  # the application is gone
        self._enter(PathState.IDLE)

    def _enter(self, state: PathState) -> None:
        self.state = state
        self.waiting_answer = state in _WAITING  # an OPEN is out, unanswered: send nothing yet
        self.ended = state in TERMINAL
        self.clean = state is PathState.CLOSED

    # ------------------------------------------------------------ questions
    @property
    def ever_attached(self) -> bool:
        """The opener's session exists at the far end (a later OPEN resumes it)."""
        return self.state not in (PathState.IDLE, PathState.OPENING)

    def open_flags(self) -> tuple[bool, int | None]:
        """(resume, continues) for the OPEN the opener sends next."""
        if self.state is PathState.ORPHANED:
            return False, self.continue_from
        return self.state is PathState.DETACHED, None

    def completion(self, done: bool, eof_acked: bool) -> tuple[ErrorCode, str] | None:
        """How to end an attached path whose session is complete, or None if it is not.

        ``done``: both directions finished and our EOF acknowledged; ``eof_acked``:
        everything we wrote arrived (after ``aclose`` nobody reads the rest)."""
        if self.waiting_answer:
            return None
        if done:
            return ErrorCode.NO_ERROR, "done"
        if self.app_closed and eof_acked:
            return ErrorCode.CANCEL, "closed by the application"
        return None

    def reset_input(self, code: int) -> PathInput:
        """What a RESET with ``code`` from the peer on the current path means."""
        if code == ErrorCode.NO_ERROR:  # the peer has all we sent, we have its EOF
            return PathInput.COMPLETE
        if code in RETRYABLE:
            return PathInput.PATH_LOST
        if code == ErrorCode.UNKNOWN_SESSION and self.opener and self.ever_attached:
            return PathInput.SESSION_LOST  # the acceptor restarted: continue elsewhere
        return PathInput.FAIL

    # ------------------------------------------------------------ inputs
    def handle(self, event: PathInput) -> PathState:
        """Apply ``event``; raises StreamStateError if the state does not allow it."""
        if self.state in TERMINAL:
            return self.state  # a stream that ended ignores late inputs
        nxt = TRANSITIONS.get((self.state, event))
        if nxt is None:
            raise StreamStateError(f"{event.value} while {self.state.value}")
        self._enter(nxt)
        if event is PathInput.ANSWERED:
            self.continue_from = None
        return nxt

    def lose_session(self, continue_from: int) -> None:
        """SESSION_LOST: the next OPEN continues the session from ``continue_from``."""
        self.handle(PathInput.SESSION_LOST)
        self.continue_from = continue_from

    def fail(self, code: int, *, local: bool) -> bool:
        """End abnormally with ``code``; False if the stream had already ended."""
        if self.state in TERMINAL:
            return False
        self.handle(PathInput.FAIL)
        self.code = code
        self.local = local
        return True

    def app_input(self, event: AppInput) -> bool:
        """Apply an application close; False if it was closed that far already."""
        nxt = APP_TRANSITIONS.get((self.app, event))
        if nxt is None:
            return False
        self.app = nxt
        self.send_closed = True
        self.app_closed = nxt is AppState.CLOSED
        return True


class Backoff:
    """Reconnect delays: ``low``, doubling up to ``high``; ``reset`` after a success."""

    def __init__(self, low: float, high: float) -> None:
        self.low = low
        self.high = high
        self.delay = low

    def next(self) -> float:
        """The delay to wait now; the one after it doubles."""
        delay = self.delay
        self.delay = min(delay * 2, self.high)
        return delay

    def reset(self) -> None:
        self.delay = self.low
