"""Sessions (issue 13): exec, attach and exit status between appliance and tether, sans-IO.

Two layers live here. The sealed transport (``secure``, ``handshake``, ``records``,
``sync``, ``errors``) turns one byte stream into an authenticated connection that
carries whole plaintext records. The session layer above it (``messages``: the codec;
``replay``: one channel-stream's replay buffer and receive offset; ``channels``: channel
states, transition table and events; ``session``: the ``Session`` that outlives
connections) carries channels exactly once across any number of those connections.

The sealed transport's wire format (the session layer's is in ``messages``).

Wire format (all integers big-endian unless said otherwise)
===========================================================

Each end writes, once, as its first bytes, the sync marker ``sync.MAGIC``::

    F1 56 49 43 73 65 63 8E          ("\\xf1VICsec\\x8e")

The reader discards anything before it (boot noise, a console's chatter), up to
``max_junk`` bytes (64 KiB by default), then refuses (NO_SYNC). Frames follow::

    type u8 | length u32 | body[length]

    type  name    body                                            length
    0x01  INIT    e_i (32, X25519) | AEAD(hello_i)                 48 .. 4144
    0x02  RESP    e_r (32, X25519) | AEAD(hello_r)                 48 .. 4144
    0x03  FINISH  AEAD(empty)                                      16
    0x15  ALERT   code u8 (``errors.SecureError``), in the clear    1
    0x17  RECORD  seq u64 | ChaCha20-Poly1305(payload)             24 .. 65560

A frame of unknown type or with a length outside its range closes the connection
as soon as its header is read; no body is waited for.

Handshake (``handshake``): Noise ``NNpsk0_25519_ChaChaPoly_SHA256`` keyed by
``HMAC-SHA256("vic-channel session psk v1", secret)``, prologue
``"vic-channel sealed transport\\0" | MAGIC``, then FINISH (the initiator's key
confirmation, sealed with the handshake's last key and the transcript hash)::

    initiator                                      responder
    MAGIC | INIT  (psk, e; hello_i sealed)  --->   tries each secret it holds
                                            <---   MAGIC | RESP  (e, ee; hello_r sealed)
    FINISH                                  --->
    Established                                    Established (with the secret's index)

The AEAD's 96-bit nonce in the handshake is ``00000000 | n (u64 little-endian)`` and
its associated data the transcript hash. Split gives ``k_i->r, k_r->i``. INIT and RESP
are byte for byte Noise's (tested against cacophony's vector). The initiator may
send records right behind FINISH; the responder is established once FINISH opens, so
a replayed INIT gets a RESP and nothing more. An INIT from someone without a secret
costs the responder one HMAC chain and AEAD trial per secret held (at most 4) and no
X25519 operation: the DH comes only after a secret opened it.

hello (inside the seal)::

    min_version u8 | max_version u8 | count u8 |
    count x (key_len u8 | key utf-8 | value_len u16 | value utf-8)

The responder chooses ``min(its max, initiator's max)`` and answers with that
version as both bounds; no common version is VERSION. At most 32 capabilities, keys
1-64 bytes, values up to 1 KiB, 4 KiB in all, checked both ways. INIT's hello is
sealed under a key from the secret alone (Noise's first message has no forward
secrecy): capabilities must hold nothing secret.

Records: ``seq`` counts from 0 per direction; the nonce is ``00000000 | seq (u64
little-endian)`` and the associated data the 13 bytes ``0x17 | length | seq``. A
record that does not open is TAMPERED; one that opens with an old ``seq`` REPLAYED,
with a later one REORDERED. Payloads are at most 64 KiB (``records.MAX_RECORD``).

ALERT tells the peer why this end closes (sent on every refusal but the peer's own
ALERT); it is not authenticated, which gives an attacker nothing it could not do by
cutting the stream. A wrong secret reads as AUTH on both ends and as nothing more.
"""
