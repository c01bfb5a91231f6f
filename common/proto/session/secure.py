"""``SecureChannel``: one sealed connection, sans-IO (bytes in, events out, bytes out).

The initiator (the appliance's side) calls ``start`` and sends what ``data_to_send``
returns; both ends feed what they read to ``receive_data`` and act on the events:
``Established`` once the handshake authenticated both ends (then ``send_record``),
``Record`` for each payload in order, ``Refused`` when the connection must close (the
state is then CLOSED; the adapter writes what ``data_to_send`` still holds, an ALERT
telling the peer why, closes the stream and logs the reason through ``wire()``).
``receive_eof`` says the stream ended. The wire format is in the package docstring.

States and their transitions (``TRANSITIONS``)::

    SYNCING      --sync marker------------------> HANDSHAKING
    HANDSHAKING  --RESP (initiator) / FINISH----> ESTABLISHED
    any          --Refused, end of stream-------> CLOSED

The ephemeral key comes from ``random_bytes(32)`` when given (tests make it
deterministic), else from ``X25519PrivateKey.generate()``; no clock is read: the
adapter bounds the handshake's time and starts a new channel (a new connection) when
it runs out, e.g. when the guest was still booting and dropped the initiator's bytes.
On a serial line a refusal during the handshake may also be line damage (a partly
dropped INIT reads as AUTH): both adapters start a fresh channel on the same line
and try again, with a back-off. Junk costs no memory, so a serial adapter may raise
``max_junk`` well past a kernel's boot log.

The initiator speaks with ``secrets[0]``; the responder tries each of ``secrets``
(at most ``MAX_SECRETS``: current, previous) and reports the index that matched.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from common.proto.session import handshake as hs
from common.proto.session.errors import Refusal, SecureError, SecureUsageError
from common.proto.session.records import (
    FrameReader,
    FrameType,
    RecordOpener,
    RecordSealer,
    encode_frame,
)
from common.proto.session.sync import DEFAULT_MAX_JUNK, MAGIC, SyncScanner

__all__ = [
    "MAX_SECRETS",
    "TRANSITIONS",
    "VERSION",
    "Established",
    "Event",
    "Record",
    "Refused",
    "Role",
    "SecureChannel",
    "State",
]

VERSION = 1  # the newest version this code speaks
MAX_SECRETS = 4  # bounds the responder's trial decryptions per INIT


class Role(enum.Enum):
    INITIATOR = "initiator"  # the appliance's side
    RESPONDER = "responder"  # the tether's side


class State(enum.Enum):
    SYNCING = "syncing"
    HANDSHAKING = "handshaking"
    ESTABLISHED = "established"
    CLOSED = "closed"


TRANSITIONS: Mapping[State, frozenset[State]] = {
    State.SYNCING: frozenset({State.HANDSHAKING, State.CLOSED}),
    State.HANDSHAKING: frozenset({State.ESTABLISHED, State.CLOSED}),
    State.ESTABLISHED: frozenset({State.CLOSED}),
    State.CLOSED: frozenset(),
}


@dataclass(frozen=True, slots=True)
class Established:
    """Both ends proved the secret; records may flow. The initiator's index is always 0."""

    peer_capabilities: dict[str, str]
    version: int
    secret_index: int


@dataclass(frozen=True, slots=True)
class Record:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Refused:
    """The connection is closed; ``reason`` is for the log (escape it through ``wire()``)."""

    code: SecureError
    reason: str


Event = Established | Record | Refused


class SecureChannel:
    """One connection's sealed transport; see the module docstring."""

    def __init__(
        self,
        role: Role,
        secrets: Sequence[bytes],
        *,
        capabilities: Mapping[str, str] | None = None,
        random_bytes: Callable[[int], bytes] | None = None,
        min_version: int = 1,
        max_version: int = VERSION,
        max_junk: int = DEFAULT_MAX_JUNK,
    ) -> None:
        if not 0 < len(secrets) <= MAX_SECRETS:
            raise ValueError(f"between 1 and {MAX_SECRETS} secrets")
        if role is Role.INITIATOR:
            secrets = secrets[:1]  # the initiator speaks with its current secret only
        self.role = role
        self._psks = [hs.derive_psk(secret) for secret in secrets]
        self._capabilities = dict(capabilities or {})
        self._hello = hs.encode_hello(hs.Hello(min_version, max_version, self._capabilities))
        self.min_version, self.max_version = min_version, max_version
        self._random_bytes = random_bytes
        self._state = State.SYNCING
        self._scanner = SyncScanner(max_junk)
        self._reader = FrameReader()
        self._out: list[bytes] = []
        self._started = False
        self._sent_magic = False
        self._expect = FrameType.RESP if role is Role.INITIATOR else FrameType.INIT
        self._ephemeral: X25519PrivateKey | None = None
        self._handshake: hs.SymmetricState | None = None
        self._pending: Established | None = None  # the responder's, until FINISH
        self._sealer: RecordSealer | None = None
        self._opener: RecordOpener | None = None

    # ------------------------------------------------------------ state
    @property
    def state(self) -> State:
        return self._state

    def _set_state(self, new: State) -> None:
        if new not in TRANSITIONS[self._state]:
            raise SecureUsageError(f"no transition {self._state.name} -> {new.name}")
        self._state = new

    # ------------------------------------------------------------ the caller's side
    def start(self) -> None:
        """Initiator: queue the sync marker and INIT. Responder: nothing to do (it answers)."""
        if self._started:
            raise SecureUsageError("start() called twice")
        self._started = True
        if self.role is Role.INITIATOR:
            self._handshake, body = hs.initiator_init(self._psks[0], self._new_key(), self._hello)
            self._send(FrameType.INIT, body)

    def send_record(self, payload: bytes) -> None:
        """Seal one record (up to ``MAX_RECORD`` bytes); only once ESTABLISHED."""
        if self._state is not State.ESTABLISHED or self._sealer is None:
            raise SecureUsageError(f"send_record in state {self._state.name}")
        self._out.extend(self._sealer.seal(payload))

    def data_to_send(self) -> bytes:
        """Everything queued for the wire since the last call (empty if nothing)."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Bytes read off the stream, in any chunking; the events they complete, in order.

        Records before a fault are delivered; the fault ends the list with ``Refused``
        and nothing after it is read (CLOSED ignores all input).
        """
        if self._state is State.CLOSED:
            return []
        if self.role is Role.INITIATOR and not self._started:
            raise SecureUsageError("receive_data before start()")
        events: list[Event] = []
        try:
            self._receive(data, events)
        except Refusal as refusal:
            events.append(self._close(refusal.code, refusal.reason, alert=True))
        return events

    def receive_eof(self) -> list[Event]:
        """The stream ended: refused (TRUNCATED) unless it ended between records."""
        if self._state is State.CLOSED:
            return []
        was, held = self._state, self._reader.partial
        self._set_state(State.CLOSED)
        if was is State.ESTABLISHED and held == 0:
            return []
        reason = f"the stream ended in {was.name} with {held} bytes of a frame held"
        return [Refused(SecureError.TRUNCATED, reason)]

    # ------------------------------------------------------------ inside
    def _new_key(self) -> X25519PrivateKey:
        if self._random_bytes is None:
            self._ephemeral = X25519PrivateKey.generate()
        else:
            self._ephemeral = X25519PrivateKey.from_private_bytes(self._random_bytes(32))
        return self._ephemeral

    def _send(self, ftype: FrameType, body: bytes) -> None:
        if not self._sent_magic:
            self._out.append(MAGIC)
            self._sent_magic = True
        self._out.append(encode_frame(ftype, body))

    def _close(self, code: SecureError, reason: str, *, alert: bool) -> Refused:
        if alert:
            self._send(FrameType.ALERT, bytes([code]))
        self._set_state(State.CLOSED)
        return Refused(code, reason)

    def _receive(self, data: bytes | bytearray | memoryview, events: list[Event]) -> None:
        if self._state is State.SYNCING:
            rest = self._scanner.feed(data)
            if rest is None:
                return
            self._set_state(State.HANDSHAKING)
            data = rest
        self._reader.feed(data)
        while self._state is not State.CLOSED:
            frame = self._reader.next_frame()
            if frame is None:
                return
            event = self._on_frame(*frame)
            if event is not None:
                events.append(event)

    def _on_frame(self, ftype: FrameType, view: memoryview) -> Event | None:
        if self._state is State.ESTABLISHED and ftype is FrameType.RECORD:
            assert self._opener is not None
            return Record(self._opener.open(view))  # opened from the reader's buffer
        body = bytes(view)
        if ftype is FrameType.ALERT:
            return self._on_alert(body[0])
        if self._state is not State.HANDSHAKING or ftype is not self._expect:
            raise Refusal(SecureError.MALFORMED, f"{ftype.name} in {self._state.name}")
        if ftype is FrameType.RESP:
            return self._on_resp(body)
        if ftype is FrameType.INIT:
            self._on_init(body)
            return None
        return self._on_finish(body)

    def _on_alert(self, code: int) -> Refused:
        try:
            known = SecureError(code)
        except ValueError:
            return self._close(SecureError.MALFORMED, f"ALERT with code {code}", alert=False)
        return self._close(known, f"the peer refused the connection ({known.name})", alert=False)

    def _on_resp(self, body: bytes) -> Event:
        assert self._handshake is not None and self._ephemeral is not None
        hello = hs.decode_hello(hs.initiator_read_resp(self._handshake, self._ephemeral, body))
        version = hello.min_version
        if hello.max_version != version or not self.min_version <= version <= self.max_version:
            raise Refusal(SecureError.VERSION, f"responder chose {version}..{hello.max_version}")
        self._send(FrameType.FINISH, hs.initiator_finish(self._handshake))
        to_responder, to_initiator = self._handshake.split()
        return self._establish(
            to_responder, to_initiator, Established(hello.capabilities, version, 0)
        )

    def _on_init(self, body: bytes) -> None:
        start = hs.responder_read_init(self._psks, body)
        hello = hs.decode_hello(start.hello)
        version = min(self.max_version, hello.max_version)
        if version < max(self.min_version, hello.min_version):
            raise Refusal(
                SecureError.VERSION,
                f"initiator speaks {hello.min_version}..{hello.max_version}, "
                f"this end {self.min_version}..{self.max_version}",
            )
        answer = hs.Hello(version, version, self._capabilities)
        self._send(
            FrameType.RESP, hs.responder_resp(start, self._new_key(), hs.encode_hello(answer))
        )
        self._handshake = start.state
        self._pending = Established(hello.capabilities, version, start.secret_index)
        self._expect = FrameType.FINISH

    def _on_finish(self, body: bytes) -> Event:
        assert self._handshake is not None and self._pending is not None
        hs.responder_read_finish(self._handshake, body)
        to_responder, to_initiator = self._handshake.split()
        return self._establish(to_initiator, to_responder, self._pending)

    def _establish(self, send_key: bytes, receive_key: bytes, event: Established) -> Established:
        self._sealer = RecordSealer(send_key)
        self._opener = RecordOpener(receive_key)
        self._handshake = self._ephemeral = None  # nothing of the handshake outlives it
        self._set_state(State.ESTABLISHED)
        return event
