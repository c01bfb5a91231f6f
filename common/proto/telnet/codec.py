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
  is un-doubled with one ``split`` and one ``join``. Otherwise plain data is
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

from dataclasses import dataclass
from typing import Final

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
_DATA: Final = 0  # plain data
_IAC: Final = 1  # seen IAC
_NEG: Final = 2  # seen IAC WILL/WONT/DO/DONT, waiting for the option
_SB_OPT: Final = 3  # seen IAC SB, waiting for the option
_SB: Final = 4  # inside a subnegotiation payload
_SB_IAC: Final = 5  # seen IAC inside a subnegotiation
_SKIP: Final = 6  # discarding an over-long subnegotiation
_SKIP_IAC: Final = 7  # seen IAC while discarding


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
        return self._state in (_SB_OPT, _SB, _SB_IAC, _SKIP, _SKIP_IAC)

    def feed(self, data: bytes) -> list[Event]:  # noqa: C901
        """Parse one chunk; return the events it completes, in stream order."""
        if type(data) is not bytes:
            data = bytes(data)
        state = self._state
        if state == _DATA:
            # Fast paths, all in C: no IAC at all (console text: the chunk itself,
            # no copy), or every IAC is one half of a doubled 0xFF (split + join).
            if _IAC_B not in data:
                return [Data(data)] if data else []
            # Split at every 0xFF: every IAC is doubled iff each odd-numbered piece
            # is empty and there is an even number of them.
            parts = data.split(_IAC_B)
            if len(parts) & 1 and not any(parts[1::2]):
                return [Data(_IAC_B.join(parts[::2]))]

        events: list[Event] = []
        pieces: list[bytes] = []
        n = len(data)
        pos = 0
        find = data.find

        while pos < n:
            if state == _DATA:
                i = find(_IAC_B, pos)
                if i < 0:
                    pieces.append(data[pos:])
                    break
                if i + 1 < n and data[i + 1] == IAC:  # doubled 0xFF: one data byte
                    pieces.append(data[pos : i + 1])
                    pos = i + 2
                    continue
                if i > pos:
                    pieces.append(data[pos:i])
                pos = i + 1
                state = _IAC
            elif state == _IAC:
                b = data[pos]
                pos += 1
                if b == IAC:
                    pieces.append(_IAC_B)
                    state = _DATA
                elif b in VERBS:
                    self._verb = b
                    state = _NEG
                elif b == SB:
                    state = _SB_OPT
                else:
                    if pieces:
                        events.append(Data(b"".join(pieces)))
                        pieces = []
                    events.append(Command(b))
                    state = _DATA
            elif state == _NEG:
                if pieces:
                    events.append(Data(b"".join(pieces)))
                    pieces = []
                events.append(Negotiate(self._verb, data[pos]))
                pos += 1
                state = _DATA
            elif state == _SB_OPT:
                self._sb_opt = data[pos]
                pos += 1
                state = _SB
            elif state == _SB:
                i = find(_IAC_B, pos)
                end = n if i < 0 else i
                buf = self._sb_buf
                if len(buf) + (end - pos) > self._max_sb:
                    if pieces:
                        events.append(Data(b"".join(pieces)))
                        pieces = []
                    events.append(
                        ProtocolError(
                            f"subnegotiation of option {self._sb_opt} longer than "
                            f"{self._max_sb} bytes"
                        )
                    )
                    self._sb_buf = bytearray()
                    state = _SKIP
                    continue
                buf += data[pos:end]
                if i < 0:
                    break
                pos = i + 1
                state = _SB_IAC
            elif state == _SB_IAC:
                b = data[pos]
                if b == IAC:
                    pos += 1
                    if len(self._sb_buf) + 1 > self._max_sb:
                        if pieces:
                            events.append(Data(b"".join(pieces)))
                            pieces = []
                        events.append(
                            ProtocolError(
                                f"subnegotiation of option {self._sb_opt} longer than "
                                f"{self._max_sb} bytes"
                            )
                        )
                        self._sb_buf = bytearray()
                        state = _SKIP
                    else:
                        self._sb_buf.append(IAC)
                        state = _SB
                elif b == SE:
                    pos += 1
                    if pieces:
                        events.append(Data(b"".join(pieces)))
                        pieces = []
                    events.append(Subnegotiation(self._sb_opt, bytes(self._sb_buf)))
                    self._sb_buf = bytearray()
                    state = _DATA
                else:
                    # IAC x inside SB: drop the SB, then treat IAC x as a command.
                    if pieces:
                        events.append(Data(b"".join(pieces)))
                        pieces = []
                    events.append(
                        ProtocolError(f"IAC {b} inside subnegotiation of option {self._sb_opt}")
                    )
                    self._sb_buf = bytearray()
                    state = _IAC  # b is handled there, pos not advanced
            elif state == _SKIP:
                i = find(_IAC_B, pos)
                if i < 0:
                    break
                pos = i + 1
                state = _SKIP_IAC
            else:  # _SKIP_IAC
                b = data[pos]
                pos += 1
                state = _DATA if b == SE else _SKIP

        self._state = state
        if pieces:
            events.append(Data(b"".join(pieces)))
        return events


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
