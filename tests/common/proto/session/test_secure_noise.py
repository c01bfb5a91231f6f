"""common.proto.session.handshake against a published Noise test vector (cacophony's
``Noise_NNpsk0_25519_ChaChaPoly_SHA256``), and its hello codec."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given
from hypothesis import strategies as st

from common.proto.session import handshake as hs
from common.proto.session.errors import Refusal, SecureError

PROLOGUE = bytes.fromhex("4a6f686e2047616c74")
PSK = bytes.fromhex("54686973206973206d7920417573747269616e20706572737065637469766521")
INIT_E = bytes.fromhex("893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a")
RESP_E = bytes.fromhex("bbdb4cdbd309f1a1f2e1456967fe288cadd6f712d65dc7b7793d5e63da6b375b")
HANDSHAKE_HASH = "f4d03dc34495c95729ea6de9e1b59004b59733102488b3e24bc441e0be208eaf"
MSG1 = (
    "4c756477696720766f6e204d69736573",
    "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c7944"
    "79b962b8aff8485742ac32f905ba45369e2465fb59e138a93d67a0d1266b6a54",
)
MSG2 = (
    "4d757272617920526f746862617264",
    "95ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f144808843"
    "d6062704d5a9c422a8e834423f8c1feada7e8d0d910a1a2cd030fb584221e3",
)
TRANSPORT_I_TO_R = (
    "462e20412e20486179656b",
    "e632c3763d7669067383433197a3baddf146e9e70ad4b4e9e59e0f",
)
TRANSPORT_R_TO_I = (
    "4361726c204d656e676572",
    "64c6bee32ea91c8474bb4c21d7a700109ad45af77b29764ba5eb1e",
)


def test_both_handshake_messages_and_the_split_match_the_vector() -> None:
    init_e = X25519PrivateKey.from_private_bytes(INIT_E)
    resp_e = X25519PrivateKey.from_private_bytes(RESP_E)
    state_i, msg1 = hs.initiator_init(PSK, init_e, bytes.fromhex(MSG1[0]), PROLOGUE)
    assert msg1.hex() == MSG1[1]
    start = hs.responder_read_init([b"\x00" * 32, PSK], msg1, PROLOGUE)
    assert start.hello.hex() == MSG1[0] and start.secret_index == 1
    msg2 = hs.responder_resp(start, resp_e, bytes.fromhex(MSG2[0]))
    assert msg2.hex() == MSG2[1]
    assert hs.initiator_read_resp(state_i, init_e, msg2).hex() == MSG2[0]
    assert state_i.h.hex() == start.state.h.hex() == HANDSHAKE_HASH
    to_responder, to_initiator = state_i.split()
    assert (to_responder, to_initiator) == start.state.split()
    for key, (payload, sealed) in (
        (to_responder, TRANSPORT_I_TO_R),
        (to_initiator, TRANSPORT_R_TO_I),
    ):
        # Noise transport messages: nonce 0, no associated data
        assert (
            ChaCha20Poly1305(key).encrypt(hs.nonce(0), bytes.fromhex(payload), b"").hex() == sealed
        )


def test_a_psk_not_held_is_auth() -> None:
    _, msg1 = hs.initiator_init(PSK, X25519PrivateKey.from_private_bytes(INIT_E), b"", PROLOGUE)
    with pytest.raises(Refusal) as refused:
        hs.responder_read_init([b"\x01" * 32], msg1, PROLOGUE)
    assert refused.value.code is SecureError.AUTH
    with pytest.raises(Refusal):  # the same PSK under another prologue
        hs.responder_read_init([PSK], msg1)


def test_secrets_become_psks_of_32_bytes() -> None:
    assert len(hs.derive_psk(b"s" * 16)) == 32
    assert hs.derive_psk(b"s" * 16) != hs.derive_psk(b"s" * 17)
    with pytest.raises(ValueError):
        hs.derive_psk(b"s" * 15)


@given(
    low=st.integers(1, 255),
    span=st.integers(0, 10),
    caps=st.dictionaries(
        st.text(min_size=1, max_size=16), st.text(max_size=40), max_size=hs.MAX_CAPABILITIES
    ),
)
def test_hello_round_trips(low: int, span: int, caps: dict[str, str]) -> None:
    hello = hs.Hello(low, min(255, low + span), caps)
    assert hs.decode_hello(hs.encode_hello(hello)) == hello


@given(st.binary(max_size=300))
def test_any_hello_bytes_decode_or_are_malformed(data: bytes) -> None:
    try:
        hello = hs.decode_hello(data)
    except Refusal as refused:
        assert refused.code is SecureError.MALFORMED
    else:
        assert hs.decode_hello(hs.encode_hello(hello)) == hello


@pytest.mark.parametrize(
    "data",
    [
        bytes([1, 1, 1, 65]) + b"k" * 65 + b"\x00\x00",  # key over 64 bytes
        bytes([1, 1, 1, 1]) + b"k" + b"\x04\x01" + b"v" * 1025,  # value over 1 KiB
        bytes([1, 1, 2, 1]) + b"k\x00\x00" + bytes([1]) + b"k\x00\x00",  # key twice
        bytes([2, 1, 0]),  # versions backwards
        bytes([1, 1, 0, 0]),  # trailing byte
        bytes([1, 1, 1, 1]) + b"\xff\x00\x00",  # key not utf-8
    ],
)
def test_hellos_out_of_bounds_are_malformed(data: bytes) -> None:
    with pytest.raises(Refusal) as refused:
        hs.decode_hello(data)
    assert refused.value.code is SecureError.MALFORMED
