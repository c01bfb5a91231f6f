"""Vetting a stream accepted from a peer link: its origin header must parse, keep
to the identity grammar and speak only for the host the peer proved it is.

Shared by the relay that ends sessions and the appliance's link endpoint.
"""

from __future__ import annotations

import logging

from common.link.events import NO_EVENTS, LinkEvents
from common.link.resumable import ResumableStream
from common.link.sessions import Accepted
from common.ops.wiretext import wire
from common.proto.link.header import (
    HeaderDecoder,
    HeaderError,
    OriginHeader,
    check_identity,
    continued,
)

log = logging.getLogger("relay.mesh")

HOST_PREFIX = "vic://host/"


def header_matches_identity(header: OriginHeader, identity: str) -> bool:
    """A relay may only speak for its own host: a stream from ``vic://host/X``
    must carry ``host = X`` in its origin header. Plaintext (trusted transport,
    no identity) and non-host identities are not restricted."""
    if not identity.startswith(HOST_PREFIX):
        return True
    return header.host == identity[len(HOST_PREFIX) :]


def decode_header(raw: bytes) -> OriginHeader:
    header, rest = HeaderDecoder().feed(raw)
    if header is None or rest:
        raise HeaderError("the OPEN frame does not carry exactly one origin header")
    return header


def vet_accepted(acc: Accepted, events: LinkEvents = NO_EVENTS) -> OriginHeader | None:
    """The origin header of a stream accepted from a peer link, or None once the
    stream is refused (log line, abort, ``events.header_refused``): a bad header or
    a name outside the identity grammar (``malformed``, see ``common.proto.identity``),
    or one that speaks for another host than the identity the peer proved
    (``foreign_host``)."""
    peer = acc.peer_identity or "plaintext peer"
    try:
        header = check_identity(decode_header(acc.header))
    except HeaderError as e:
        log.warning("stream from %s refused: bad origin header: %s", wire(peer), wire(str(e)))
        events.header_refused("malformed")
        acc.stream.abort("bad origin header")
        return None
    if not header_matches_identity(header, acc.peer_identity):
        log.warning(
            "stream=%s peer=%s refused: its header speaks for host '%s'",
            wire(header.stream_id or "-"),
            wire(peer),
            wire(header.host),
        )
        events.header_refused("foreign_host")
        acc.stream.abort("origin host does not match the peer's identity")
        return None
    return with_continuation(header, acc.stream)


def with_continuation(header: OriginHeader, stream: ResumableStream) -> OriginHeader:
    """The header to pass on: a session that continues a lost one says where it
    starts in the stream (offsets add up when the header already continued)."""
    if stream.continues is None:
        return header
    start, recv_start = stream.continues
    log.info(
        "stream=%s host=%s continues at offset %d (its VM end has %d)",
        wire(header.stream_id or "-"),
        wire(header.host),
        header.offset + start,
        header.received + recv_start,
    )
    return continued(header, header.offset + start, header.received + recv_start)
