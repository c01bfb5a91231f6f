"""An ESX host simulator: ESX's side of the vSPC protocol (Telnet + option 232).

Independent of ``common.proto.telnet`` (it has its own codec in
:mod:`vic.lab.telnet_wire`) so that it can catch the vSPC's bugs. One
:class:`EsxConnection` is one VM serial port's network connection, as ESX makes
it when the port points at a vSPC URI::

    vm = SimVM.random(rng)
    async with EsxConnection.connect("127.0.0.1", 13370, vm=vm, label="serial0") as c:
        await c.send_console(b"login: ")
        data = await c.receive_console()          # appliance -> VM bytes
        secret = await c.vmotion_begin(seq)       # source role
        ...

``EsxConnection.open(nursery, ...)`` does the same without a context manager
(the connection's reader task runs in the given nursery), and :func:`migrate`
runs a whole vMotion: BEGIN on the source, a new destination connection,
PEER, PEER-OK, COMPLETE, then the source closes.

Behaviour modelled on ESX: it offers WILL BINARY/SGA/232 and DO BINARY/SGA,
and also WILL AUTHENTICATION and WILL COM-PORT, which the vSPC may refuse
(option negotiation follows RFC 1143, so no loops; DO TIMING-MARK is answered
WILL TIMING-MARK each time, per RFC 860, unless ``answer_timing_mark`` is off);
once 232 is enabled it sends KNOWN-SUBOPTIONS-1 and (unless told not to) DO-PROXY; it answers
GET-VM-VC-UUID, GET-VM-NAME, GET-VM-BIOS-UUID and GET-VM-LOCATION-UUID, and
UNKNOWN-SUBOPTION-RCVD-1 to anything it does not know. All output is
0xFF-escaped; with ``one_byte_segments`` every wire byte is its own send
(TCP_NODELAY is on), which also splits every frame at every byte.

Anything the vSPC does that a real ESX would find wrong is recorded in
:attr:`EsxConnection.violations` (tests assert it stays empty).

The simulator's parts: :mod:`vic.lab.esx_vm` (the VM's identity),
:mod:`vic.lab.esx_behaviour` (its knobs and counters), :mod:`vic.lab.esx_options`
(RFC 1143), :mod:`vic.lab.esx_stream` (bytes in and out),
:mod:`vic.lab.esx_connection` (what they mean), :mod:`vic.lab.esx_replies`
(vMotion answers) and :mod:`vic.lab.esx_errors`. This module gathers them and
runs a whole vMotion.
"""

from __future__ import annotations

import random
import ssl
from collections.abc import Iterable
from dataclasses import dataclass

import trio

from vic.lab.esx_behaviour import (
    DEFAULT_KNOWN,
    ESX_BEGIN_TIMEOUT,
    EsxBehaviour,
    EsxStats,
    known_without,
)
from vic.lab.esx_connection import EsxConnection
from vic.lab.esx_errors import (
    ConnectionClosed,
    HandshakeTimeout,
    ProtocolViolation,
    SimError,
    VMotionNotNow,
    VMotionRefused,
    VMotionTimeout,
)
from vic.lab.esx_vm import SimVM, esx_uuid_format, random_seq, service_uri_with_label

__all__ = [
    "DEFAULT_KNOWN",
    "ESX_BEGIN_TIMEOUT",
    "ConnectionClosed",
    "EsxBehaviour",
    "EsxConnection",
    "EsxStats",
    "HandshakeTimeout",
    "Migration",
    "ProtocolViolation",
    "SimError",
    "SimVM",
    "VMotionNotNow",
    "VMotionRefused",
    "VMotionTimeout",
    "chunks",
    "esx_uuid_format",
    "known_without",
    "migrate",
    "random_seq",
    "service_uri_with_label",
]


@dataclass
class Migration:
    dest: EsxConnection
    seq: bytes
    secret: bytes


async def migrate(
    source: EsxConnection,
    host: str,
    port: int,
    *,
    nursery: trio.Nursery,
    seq: bytes | None = None,
    rng: random.Random | None = None,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    dest_do_proxy: bool = False,
    one_byte_segments: bool | None = None,
    complete: bool = True,
    close_source: bool = True,
    peer_timeout: float = ESX_BEGIN_TIMEOUT,
    dest_behaviour: EsxBehaviour | None = None,
    dest_local_address: str | None = None,
) -> Migration:
    """Run a whole vMotion of ``source.vm`` to a new connection at ``host:port``.

    BEGIN on the source (VM paused from here), a new destination connection
    (negotiated; DO-PROXY only if ``dest_do_proxy``), PEER(seq+secret),
    PEER-OK, then COMPLETE and the source closes. If the destination does not
    get PEER-OK the source sends ABORT, the destination closes and the error is
    re-raised (the VM runs on at the source). ``complete=False`` stops after
    PEER-OK (a destination that never completes).
    """
    rng = rng or random.Random()
    seq = seq if seq is not None else random_seq(rng)
    secret = await source.vmotion_begin(seq)
    if dest_behaviour is None:
        dest_behaviour = _dest_behaviour(source.b, dest_do_proxy, one_byte_segments)
    try:
        dest = await EsxConnection.open(
            nursery,
            host,
            port,
            vm=source.vm,
            ssl_context=ssl_context,
            server_hostname=server_hostname,
            behaviour=dest_behaviour,
            local_address=dest_local_address,  # the destination host's address
        )
    except BaseException:
        with trio.CancelScope(shield=True):
            await _abort_at(source)
        raise
    try:
        await dest.vmotion_peer(seq, secret, timeout=peer_timeout)
    except BaseException:
        with trio.CancelScope(shield=True):
            await _abort_at(source)
            await dest.aclose()
        raise
    if complete:
        await dest.vmotion_complete(seq)
        if close_source:
            await source.aclose()
    return Migration(dest, seq, secret)


def _dest_behaviour(
    source: EsxBehaviour, do_proxy: bool, one_byte_segments: bool | None
) -> EsxBehaviour:
    """The destination host's knobs: the source's port, its own DO-PROXY choice."""
    return EsxBehaviour(
        label=source.label,
        service_uri=source.service_uri,
        direction=source.direction,
        do_proxy=do_proxy,
        one_byte_segments=(
            source.one_byte_segments if one_byte_segments is None else one_byte_segments
        ),
        kernel_timestamps=source.kernel_timestamps,
    )


async def _abort_at(source: EsxConnection) -> None:
    """The vMotion failed: the VM runs on at the source (if it is still connected)."""
    if not source.closed.is_set():
        await source.vmotion_abort()


def chunks(data: bytes, size: int) -> Iterable[bytes]:
    for k in range(0, len(data), size):
        yield data[k : k + size]
