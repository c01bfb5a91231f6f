"""Sans-IO Telnet codec (RFC 854/855): a parser that turns bytes into events and
an encoder that turns intents into bytes.

No I/O, no clock, no trio. The channel is 8-bit clean: no byte is dropped or
rewritten (no CR-NUL handling: we always run in BINARY mode); data 0xFF is sent
and received doubled, inside subnegotiations too.

Parser
------
``TelnetParser(max_subnegotiation=65536).feed(data) -> list[Event]``

* State carries across calls: an IAC may end one chunk and its command begin the
  next; a subnegotiation may span any number of chunks.
* Fast paths, with no Python loop over the bytes: a chunk without 0xFF (console
  text) comes back as one ``Data`` holding the very same bytes object (no copy);
  a chunk whose every 0xFF is half of a doubled pair (binary data, no commands)
  is un-doubled in one step (``common.proto.telnet.undouble``: a C pass when
  built, else one ``split`` and one ``join``). Otherwise plain data is
  located with ``bytes.find(b"\\xff")`` and emitted as slices. Consecutive data
  pieces within one ``feed`` (including un-doubled 0xFF) are merged into one
  ``Data``.
* Events, in stream order: ``Data(bytes)``, ``Command(code)`` (NOP, AYT, BRK,
  GA, a stray SE, ... any ``IAC x`` that is not IAC/SB/WILL/WONT/DO/DONT),
  ``Negotiate(verb, option)``, ``Subnegotiation(option, payload)`` with the
  payload un-doubled, and ``ProtocolError(reason)``.
* ``ProtocolError`` is the only way bad input shows up (the parser never
  raises on input). It is emitted when a subnegotiation payload exceeds
  ``max_subnegotiation`` bytes (the rest of that subnegotiation, up to
  ``IAC SE``, is then discarded without being stored) and when ``IAC x`` (x not
  IAC/SE) appears inside a subnegotiation (the subnegotiation is dropped and
  ``IAC x`` is then processed as an ordinary command). Parsing continues after
  a ``ProtocolError``; whether to close the connection is the caller's choice.
* Memory: the only buffer kept between calls is the current subnegotiation
  payload, at most ``max_subnegotiation`` bytes.

Encoder
-------
``escape(data)``, ``command(code)``, ``negotiate(verb, option)``,
``subnegotiation(option, payload)`` and ``encode(event)`` (the inverse of the
parser for Data/Command/Negotiate/Subnegotiation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from common.proto.telnet.undouble import undouble

# --- Telnet commands (RFC 854) ---------------------------------------------
IAC: Final = 255
DONT: Final = 254
DO: Final = 253
WONT: Final = 252
WILL: Final = 251
SB: Final = 250
GA: Final = 249
EL: Final = 248
EC: Final = 247
AYT: Final = 246
AO: Final = 245
IP: Final = 244
BRK: Final = 243
DM: Final = 242
NOP: Final = 241
SE: Final = 240
EOR: Final = 239

# --- Options ----------------------------------------------------------------
BINARY: Final = 0
ECHO: Final = 1
SGA: Final = 3
TIMING_MARK: Final = 6  # RFC 860
TTYPE: Final = 24
NAWS: Final = 31
LINEMODE: Final = 34
AUTHENTICATION: Final = 37
NEW_ENVIRON: Final = 39
CHARSET: Final = 42
COM_PORT: Final = 44
VMWARE_EXT: Final = 232

VERBS: Final = frozenset({WILL, WONT, DO, DONT})

DEFAULT_MAX_SUBNEGOTIATION: Final = 64 * 1024

_IAC_B: Final = b"\xff"
_IAC_IAC: Final = b"\xff\xff"


# --- Events -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Data:
    """Plain data (0xFF already un-doubled)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Command:
    """``IAC <code>`` for any code other than IAC, SB, WILL, WONT, DO, DONT."""

    code: int


@dataclass(frozen=True, slots=True)
class Negotiate:
    """``IAC <verb> <option>`` with verb one of WILL, WONT, DO, DONT."""

    verb: int
    option: int


@dataclass(frozen=True, slots=True)
class Subnegotiation:
    """``IAC SB <option> <payload> IAC SE``; ``payload`` is un-doubled."""

    option: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """The peer sent something a well-behaved Telnet peer never sends."""

    reason: str


Event = Data | Command | Negotiate | Subnegotiation | ProtocolError

# --- Parser -----------------------------------------------------------------
# States. The transition table (IAC-x below means "IAC followed by x"):
#
#   DATA     --IAC IAC-------> DATA      (one 0xFF data byte)
#   DATA     --IAC-----------> IAC
#   IAC      --IAC-----------> DATA      (the doubled 0xFF split across chunks)
#   IAC      --WILL..DONT----> NEG       --option--> DATA      (Negotiate)
#   IAC      --SB------------> SB_OPT    --option--> SB
#   IAC      --any other-----> DATA      (Command)
#   SB       --IAC-----------> SB_IAC
#   SB       --too long------> SKIP      (ProtocolError)
#   SB_IAC   --IAC-----------> SB        (one 0xFF payload byte; SKIP if too long)
#   SB_IAC   --SE------------> DATA      (Subnegotiation)
#   SB_IAC   --any other x---> IAC       (ProtocolError; x is then read as IAC x)
#   SKIP     --IAC-----------> SKIP_IAC  --SE--> DATA, --other--> SKIP
#
# DATA is handled inline in the parse loop (it is the hot state: runs of plain
# bytes are found with ``bytes.find``, never looped over). Every other state has
# one handler in ``_HANDLERS``: it consumes at least one byte (SB_IAC on a stray
# command consumes none but moves to IAC, which does) and returns ``(next
# position, next state)``. When the next state's byte is already in the chunk, a
# handler calls the next handler itself, so a whole command costs one trip
# through the loop; the loop dispatches only where a chunk ended mid-command.
_DATA: Final = 0  # plain data
_IAC: Final = 1  # seen IAC
_NEG: Final = 2  # seen IAC WILL/WONT/DO/DONT, waiting for the option
_SB_OPT: Final = 3  # seen IAC SB, waiting for the option
_SB: Final = 4  # inside a subnegotiation payload
_SB_IAC: Final = 5  # seen IAC inside a subnegotiation
_SKIP: Final = 6  # discarding an over-long subnegotiation
_SKIP_IAC: Final = 7  # seen IAC while discarding

_IN_SUBNEGOTIATION: Final = frozenset({_SB_OPT, _SB, _SB_IAC, _SKIP, _SKIP_IAC})


def _flush(events: list[Event], pieces: list[bytes]) -> None:
    """Merge the data pieces collected so far into one ``Data`` event."""
    if pieces:
        events.append(Data(b"".join(pieces)))
        pieces.clear()


class TelnetParser:
    """Incremental Telnet parser; see the module docstring."""

    __slots__ = ("_max_sb", "_sb_buf", "_sb_opt", "_state", "_verb")

    def __init__(self, max_subnegotiation: int = DEFAULT_MAX_SUBNEGOTIATION) -> None:
        if max_subnegotiation < 0:
            raise ValueError("max_subnegotiation must be >= 0")
        self._max_sb = max_subnegotiation
        self._state = _DATA
        self._verb = 0
        self._sb_opt = 0
        self._sb_buf = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes held between calls (the pending subnegotiation payload)."""
        return len(self._sb_buf)

    @property
    def in_subnegotiation(self) -> bool:
        return self._state in _IN_SUBNEGOTIATION

    @property
    def idle(self) -> bool:
        """No command begun and unfinished: the next byte is read afresh."""
        return self._state == _DATA

    def feed(self, data: bytes) -> list[Event]:
        """Parse one chunk; return the events it completes, in stream order."""
        if type(data) is not bytes:
            data = bytes(data)
        if self._state == _DATA:
            # Fast paths, all in C: no IAC at all (console text: the chunk itself,
            # no copy), or every IAC is one half of a doubled 0xFF (``undouble``).
            if _IAC_B not in data:
                return [Data(data)] if data else []
            plain = undouble(data)
            if plain is not None:
                return [Data(plain)]
        return self._parse(data)

    def _parse(self, data: bytes) -> list[Event]:
        """The general case: plain runs found with ``bytes.find``, the rest by state."""
        events: list[Event] = []
        pieces: list[bytes] = []
        handlers = _HANDLERS
        on_iac = TelnetParser._on_iac
        state = self._state
        n = len(data)
        pos = 0
        find = data.find
        while pos < n:
            if state != _DATA:
                pos, state = handlers[state](self, data, pos, events, pieces)
                continue
            i = find(_IAC_B, pos)
            if i < 0:
                pieces.append(data[pos:])
                break
            if i + 1 == n:  # IAC ends the chunk: its command comes with the next one
                if i > pos:
                    pieces.append(data[pos:i])
                state = _IAC
                break
            if data[i + 1] == IAC:  # doubled 0xFF: one data byte
                pieces.append(data[pos : i + 1])
                pos = i + 2
                continue
            if i > pos:
                pieces.append(data[pos:i])
            pos, state = on_iac(self, data, i + 1, events, pieces)
        self._state = state
        _flush(events, pieces)
        return events

    # --- one handler per state but DATA: (data, pos) -> (next pos, next state) ---
    # (_on_iac and _on_neg flush the data pieces inline: they run once per command.)
    def _on_iac(self, data: bytes, pos: int, events: list[Event], pieces: list[bytes]) -> _Step:
        b = data[pos]
        pos += 1
        if b == IAC:
            pieces.append(_IAC_B)
            return pos, _DATA
        if b in VERBS:
            self._verb = b
            return self._on_neg(data, pos, events, pieces) if pos < len(data) else (pos, _NEG)
        if b == SB:
            return self._on_sb_opt(data, pos, events, pieces) if pos < len(data) else (pos, _SB_OPT)
        if pieces:
            events.append(Data(b"".join(pieces)))
            pieces.clear()
        events.append(Command(b))
        return pos, _DATA

    def _on_neg(self, data: bytes, pos: int, events: list[Event], pieces: list[bytes]) -> _Step:
        if pieces:
            events.append(Data(b"".join(pieces)))
            pieces.clear()
        events.append(Negotiate(self._verb, data[pos]))
        return pos + 1, _DATA

    def _on_sb_opt(self, data: bytes, pos: int, events: list[Event], pieces: list[bytes]) -> _Step:
        self._sb_opt = data[pos]
        return self._on_sb(data, pos + 1, events, pieces)

    def _on_sb(self, data: bytes, pos: int, events: list[Event], pieces: list[bytes]) -> _Step:
        """Payload up to the next IAC, repeatedly while it is a doubled 0xFF."""
        n = len(data)
        find = data.find
        while True:
            i = find(_IAC_B, pos)
            end = n if i < 0 else i
            if len(self._sb_buf) + (end - pos) > self._max_sb:
                self._too_long(events, pieces)
                return pos, _SKIP
            self._sb_buf += data[pos:end]
            if i < 0 or i + 1 == n:
                return n, (_SB if i < 0 else _SB_IAC)
            pos, state = self._on_sb_iac(data, i + 1, events, pieces)
            if state != _SB:
                return pos, state

    def _on_sb_iac(self, data: bytes, pos: int, events: list[Event], pieces: list[bytes]) -> _Step:
        b = data[pos]
        if b == IAC:
            if len(self._sb_buf) + 1 > self._max_sb:
                self._too_long(events, pieces)
                return pos + 1, _SKIP
            self._sb_buf.append(IAC)
            return pos + 1, _SB
        _flush(events, pieces)
        if b == SE:
            events.append(Subnegotiation(self._sb_opt, bytes(self._sb_buf)))
            self._sb_buf = bytearray()
            return pos + 1, _DATA
        # IAC x inside SB: drop the SB, then treat IAC x as a command.
        events.append(ProtocolError(f"IAC {b} inside subnegotiation of option {self._sb_opt}"))
        self._sb_buf = bytearray()
        return pos, _IAC  # b is handled there, pos not advanced

    def _on_skip(self, data: bytes, pos: int, events: list[Event], pieces: list[bytes]) -> _Step:
        i = data.find(_IAC_B, pos)
        if i < 0:
            return len(data), _SKIP
        return i + 1, _SKIP_IAC

    def _on_skip_iac(
        self, data: bytes, pos: int, events: list[Event], pieces: list[bytes]
    ) -> _Step:
        return pos + 1, (_DATA if data[pos] == SE else _SKIP)

    def _too_long(self, events: list[Event], pieces: list[bytes]) -> None:
        _flush(events, pieces)
        events.append(
            ProtocolError(
                f"subnegotiation of option {self._sb_opt} longer than {self._max_sb} bytes"
            )
        )
        self._sb_buf = bytearray()


_Step = tuple[int, int]
_Handler = Callable[[TelnetParser, bytes, int, list[Event], list[bytes]], _Step]

#: The handler of every state but DATA (which is inline in ``_parse``).
_HANDLERS: Final[dict[int, _Handler]] = {
    _IAC: TelnetParser._on_iac,
    _NEG: TelnetParser._on_neg,
    _SB_OPT: TelnetParser._on_sb_opt,
    _SB: TelnetParser._on_sb,
    _SB_IAC: TelnetParser._on_sb_iac,
    _SKIP: TelnetParser._on_skip,
    _SKIP_IAC: TelnetParser._on_skip_iac,
}


# --- Encoder ----------------------------------------------------------------
def escape(data: bytes) -> bytes:
    """Data as it goes on the wire: every 0xFF doubled."""
    return data.replace(_IAC_B, _IAC_IAC)


def command(code: int) -> bytes:
    """``IAC <code>`` (NOP, AYT, BRK, ...)."""
    if code in VERBS or code in (IAC, SB):
        raise ValueError(f"{code} is not a stand-alone Telnet command")
    return bytes((IAC, code))


def negotiate(verb: int, option: int) -> bytes:
    """``IAC <verb> <option>``."""
    if verb not in VERBS:
        raise ValueError(f"{verb} is not WILL/WONT/DO/DONT")
    return bytes((IAC, verb, option))


def subnegotiation(option: int, payload: bytes) -> bytes:
    """``IAC SB <option> <payload with 0xFF doubled> IAC SE``."""
    return bytes((IAC, SB, option)) + payload.replace(_IAC_B, _IAC_IAC) + bytes((IAC, SE))


def encode(event: Data | Command | Negotiate | Subnegotiation) -> bytes:
    """Wire form of a parser event (the parser's inverse)."""
    if isinstance(event, Data):
        return escape(event.data)
    if isinstance(event, Command):
        return command(event.code)
    if isinstance(event, Negotiate):
        return negotiate(event.verb, event.option)
    return subnegotiation(event.option, event.payload)
