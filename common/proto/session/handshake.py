"""The handshake: Noise ``NNpsk0`` over X25519, ChaCha20-Poly1305 and SHA-256, plus a
key confirmation from the initiator, and the hello payload (versions, capabilities).

Messages (tokens as in the Noise specification, revision 34)::

    -> psk, e            INIT:   e.pub | seal(hello)          (the initiator proves the PSK)
    <- e, ee             RESP:   e.pub | seal(hello)          (the responder proves the PSK
                                                               and its fresh ephemeral)
    -> (confirmation)    FINISH: seal(b"")                    (the initiator proves its
                                                               ephemeral: no replayed INIT)

``seal`` is the symmetric state's EncryptAndHash: each message is bound to the whole
transcript, the prologue (protocol label and sync marker) included. ``split`` then
gives one key per direction; forward secrecy comes from the ``ee`` term.

The PSK is ``HMAC-SHA256(PSK_LABEL, secret)`` of the per-VM secret (any length from
``MIN_SECRET`` bytes). The responder tries each secret it holds (current, previous)
against INIT and reports the index that opened it; no match is ``AUTH``.

Hello payload (plaintext inside the seal)::

    min_version u8 | max_version u8 | count u8 |
    count x (key_len u8 | key utf-8 | value_len u16 | value utf-8)

The responder answers with ``min_version == max_version ==`` the version chosen (the
highest both speak); keys are unique, at most ``MAX_CAPABILITIES`` of them.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from common.proto.session.errors import Refusal, SecureError
from common.proto.session.sync import MAGIC

__all__ = [
    "DH_LEN",
    "MAX_CAPABILITIES",
    "MAX_HELLO",
    "MIN_SECRET",
    "TAG_LEN",
    "Hello",
    "ResponderStart",
    "SymmetricState",
    "decode_hello",
    "derive_psk",
    "encode_hello",
    "initiator_finish",
    "initiator_init",
    "initiator_read_resp",
    "nonce",
    "responder_read_finish",
    "responder_read_init",
    "responder_resp",
]

PROTOCOL_NAME = b"Noise_NNpsk0_25519_ChaChaPoly_SHA256"
PROLOGUE = b"vic-channel sealed transport\x00" + MAGIC
PSK_LABEL = b"vic-channel session psk v1"
HASH_LEN = 32
DH_LEN = 32
TAG_LEN = 16
MIN_SECRET = 16
MAX_CAPABILITIES = 32
MAX_KEY = 64
MAX_VALUE = 1024
MAX_HELLO = 4096  # encoded hello payload, before the tag
_RANGE = struct.Struct("!BBB")
_U16 = struct.Struct("!H")


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, "sha256")


def _hkdf(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes, bytes]:
    """Noise's HKDF with three outputs (HMAC-SHA256, RFC 5869 without the info)."""
    temp = _hmac(chaining_key, ikm)
    out1 = _hmac(temp, b"\x01")
    out2 = _hmac(temp, out1 + b"\x02")
    out3 = _hmac(temp, out2 + b"\x03")
    return out1, out2, out3


def nonce(counter: int) -> bytes:
    """ChaChaPoly's 96-bit nonce from a 64-bit counter (Noise: 4 zero bytes, little-endian)."""
    return b"\x00\x00\x00\x00" + counter.to_bytes(8, "little")


def derive_psk(secret: bytes) -> bytes:
    if len(secret) < MIN_SECRET:
        raise ValueError(f"a session secret needs at least {MIN_SECRET} bytes")
    return _hmac(PSK_LABEL, secret)


class SymmetricState:
    """Noise's SymmetricState (chaining key, handshake hash, cipher key and counter)."""

    def __init__(self, prologue: bytes = PROLOGUE) -> None:
        self.h = hashlib.sha256(PROTOCOL_NAME).digest()
        self.ck = self.h
        self.k: bytes | None = None
        self.n = 0
        self.mix_hash(prologue)

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, k, _ = _hkdf(self.ck, ikm)
        self.k, self.n = k, 0

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self.ck, temp_h, k = _hkdf(self.ck, ikm)
        self.mix_hash(temp_h)
        self.k, self.n = k, 0

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        assert self.k is not None  # every message here comes after a MixKey
        ciphertext = ChaCha20Poly1305(self.k).encrypt(nonce(self.n), plaintext, self.h)
        self.n += 1
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        """The plaintext, or ``Refusal(AUTH)``: the same answer for every kind of failure."""
        assert self.k is not None
        try:
            plaintext = ChaCha20Poly1305(self.k).decrypt(nonce(self.n), ciphertext, self.h)
        except InvalidTag:
            raise Refusal(SecureError.AUTH, "handshake did not authenticate") from None
        self.n += 1
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[bytes, bytes]:
        """(initiator-to-responder key, responder-to-initiator key)."""
        k1, k2, _ = _hkdf(self.ck, b"")
        return k1, k2


def _public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _dh(key: X25519PrivateKey, peer: bytes) -> bytes:
    try:
        return key.exchange(X25519PublicKey.from_public_bytes(peer))
    except ValueError:  # a low-order point: the shared secret would be all zeros
        raise Refusal(SecureError.AUTH, "handshake did not authenticate") from None


def _mix_ephemeral(state: SymmetricState, public: bytes) -> None:
    state.mix_hash(public)
    state.mix_key(public)  # the psk modifier: "e" also mixes into the key


def _split_body(body: bytes) -> tuple[bytes, bytes]:
    if len(body) < DH_LEN + TAG_LEN:
        raise Refusal(SecureError.MALFORMED, f"handshake message of {len(body)} bytes")
    return body[:DH_LEN], body[DH_LEN:]


# ------------------------------------------------------------ the initiator's side
def initiator_init(
    psk: bytes, ephemeral: X25519PrivateKey, hello: bytes, prologue: bytes = PROLOGUE
) -> tuple[SymmetricState, bytes]:
    """The INIT body and the state to read RESP with."""
    state = SymmetricState(prologue)
    state.mix_key_and_hash(psk)
    public = _public(ephemeral)
    _mix_ephemeral(state, public)
    return state, public + state.encrypt_and_hash(hello)


def initiator_read_resp(state: SymmetricState, ephemeral: X25519PrivateKey, body: bytes) -> bytes:
    """RESP's hello payload (``Refusal(AUTH)`` if the responder does not hold the secret)."""
    peer, sealed = _split_body(body)
    _mix_ephemeral(state, peer)
    state.mix_key(_dh(ephemeral, peer))
    return state.decrypt_and_hash(sealed)


def initiator_finish(state: SymmetricState) -> bytes:
    return state.encrypt_and_hash(b"")


# ------------------------------------------------------------ the responder's side
@dataclass(slots=True)
class ResponderStart:
    state: SymmetricState
    secret_index: int
    peer_ephemeral: bytes
    hello: bytes


def responder_read_init(
    psks: Sequence[bytes], body: bytes, prologue: bytes = PROLOGUE
) -> ResponderStart:
    """Try each PSK against INIT; the first that opens it wins (``Refusal(AUTH)`` if none)."""
    peer, sealed = _split_body(body)
    for index, psk in enumerate(psks):
        state = SymmetricState(prologue)
        state.mix_key_and_hash(psk)
        _mix_ephemeral(state, peer)
        try:
            hello = state.decrypt_and_hash(sealed)
        except Refusal:
            continue
        return ResponderStart(state, index, peer, hello)
    raise Refusal(SecureError.AUTH, "handshake did not authenticate")


def responder_resp(start: ResponderStart, ephemeral: X25519PrivateKey, hello: bytes) -> bytes:
    state = start.state
    public = _public(ephemeral)
    _mix_ephemeral(state, public)
    state.mix_key(_dh(ephemeral, start.peer_ephemeral))
    return public + state.encrypt_and_hash(hello)


def responder_read_finish(state: SymmetricState, body: bytes) -> None:
    if len(body) != TAG_LEN:
        raise Refusal(SecureError.MALFORMED, f"FINISH of {len(body)} bytes")
    state.decrypt_and_hash(body)


# ------------------------------------------------------------ the hello payload
@dataclass(frozen=True, slots=True)
class Hello:
    min_version: int
    max_version: int
    capabilities: dict[str, str]


def _check_capabilities(capabilities: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    if len(capabilities) > MAX_CAPABILITIES:
        raise ValueError(f"at most {MAX_CAPABILITIES} capabilities")
    pairs = [(k.encode("utf-8"), v.encode("utf-8")) for k, v in capabilities.items()]
    for key, value in pairs:
        if not 0 < len(key) <= MAX_KEY or len(value) > MAX_VALUE:
            raise ValueError(f"capability {key!r}: key 1-{MAX_KEY}, value <= {MAX_VALUE} bytes")
    return pairs


def encode_hello(hello: Hello) -> bytes:
    if not 0 < hello.min_version <= hello.max_version <= 255:
        raise ValueError(f"bad version range {hello.min_version}..{hello.max_version}")
    pairs = _check_capabilities(hello.capabilities)
    out = [_RANGE.pack(hello.min_version, hello.max_version, len(pairs))]
    for key, value in pairs:
        out += [bytes([len(key)]), key, _U16.pack(len(value)), value]
    encoded = b"".join(out)
    if len(encoded) > MAX_HELLO:
        raise ValueError(f"capabilities take {len(encoded)} bytes (limit {MAX_HELLO})")
    return encoded


def decode_hello(data: bytes) -> Hello:
    """The hello, or ``Refusal(MALFORMED)`` (it came sealed, so from a holder of the secret)."""
    try:
        return _decode_hello(data)
    except (struct.error, UnicodeDecodeError, IndexError, ValueError) as exc:
        raise Refusal(SecureError.MALFORMED, f"bad hello payload: {exc}") from None


def _decode_hello(data: bytes) -> Hello:
    if len(data) > MAX_HELLO:
        raise ValueError(f"{len(data)} bytes")
    low, high, count = _RANGE.unpack_from(data, 0)
    if not 0 < low <= high or count > MAX_CAPABILITIES:
        raise ValueError(f"versions {low}..{high}, {count} capabilities")
    at = _RANGE.size
    capabilities: dict[str, str] = {}
    for _ in range(count):
        key_len = data[at]
        raw_key = data[at + 1 : at + 1 + key_len]
        at += 1 + key_len
        (value_len,) = _U16.unpack_from(data, at)
        value = data[at + 2 : at + 2 + value_len]
        key = raw_key.decode("utf-8")
        if not 0 < key_len == len(raw_key) <= MAX_KEY or key in capabilities:
            raise ValueError("bad or repeated capability")
        if len(value) != value_len or value_len > MAX_VALUE:
            raise ValueError(f"capability {key!r}: value of {value_len} bytes")
        capabilities[key] = value.decode("utf-8")
        at += 2 + value_len
    if at != len(data):
        raise ValueError(f"{len(data) - at} trailing bytes")
    return Hello(low, high, capabilities)
