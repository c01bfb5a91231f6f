"""A CA replaced in its file (new CA in, old CA out) stops being trusted at the next
refresh, for new handshakes on servers and clients alike, while connections made
before carry on; a half-written CA file changes nothing (real TLS, our own CAs)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from common.io import certs, tlsctx, tlsrefresh
from common.link.tls import peer_serial

HOST = "vch.local"


class TwoCas:
    """CA ``old`` (in use) and CA ``new`` (its replacement), each with a server and a
    client certificate; ``ca`` is the CA file the contexts under test read."""

    def __init__(self, root: Path) -> None:
        self.old, self.new = root / "old", root / "new"
        for d in (self.old, self.new):
            certs.init_ca(d)
            certs.issue(d, "appliance", "vch", dns_names=(HOST,))
            certs.issue(d, "operator", "alice")
        self.ca = root / "trusted-ca.crt"
        shutil.copy(self.old / certs.CA_CERT, self.ca)

    def server(self, d: Path, *, client_ca: Path | None = None) -> ssl.SSLContext:
        return tlsctx.server_context(d / "appliance-vch.crt", d / "appliance-vch.key",
                                     client_ca=client_ca)  # fmt: skip

    def client(self, d: Path, *, ca: Path) -> ssl.SSLContext:
        return tlsctx.client_context(
            ca=ca, cert=d / "operator-alice.crt", key=d / "operator-alice.key"
        )

    def replace(self) -> None:
        """The operator's CA rotation: the new CA's file written over the old one."""
        tmp = self.ca.with_suffix(".tmp")
        shutil.copy(self.new / certs.CA_CERT, tmp)
        tmp.replace(self.ca)


async def handshake(
    server: ssl.SSLContext, client: ssl.SSLContext
) -> tuple[trio.SSLStream[trio.abc.Stream], trio.SSLStream[trio.abc.Stream]] | None:
    """Both ends' streams after a handshake over memory streams; None if either refused."""
    a, b = trio.testing.memory_stream_pair()
    s: trio.SSLStream[trio.abc.Stream] = trio.SSLStream(a, server, server_side=True)
    c: trio.SSLStream[trio.abc.Stream] = trio.SSLStream(b, client, server_hostname=HOST)
    failed = False

    async def shake(end: trio.SSLStream[trio.abc.Stream]) -> None:
        nonlocal failed
        try:
            await end.do_handshake()
            await end.send_all(b"!")  # a TLS 1.3 client learns of refusal on its first read
            assert await end.receive_some(1) == b"!"
        except (trio.BrokenResourceError, trio.ClosedResourceError):  # refused, or closed
            failed = True
            await trio.aclose_forcefully(s)
            await trio.aclose_forcefully(c)

    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            n.start_soon(shake, s)
            n.start_soon(shake, c)
    return None if failed else (s, c)


async def test_server_refuses_clients_of_a_removed_ca(tmp_path: Path) -> None:
    p = TwoCas(tmp_path)
    server = p.server(p.old, client_ca=p.ca)
    old_client = p.client(p.old, ca=p.old / certs.CA_CERT)
    new_client = p.client(p.new, ca=p.old / certs.CA_CERT)
    live = await handshake(server, old_client)
    assert live is not None
    assert await handshake(server, new_client) is None
    p.replace()
    assert tlsrefresh.refresh() >= 1
    assert await handshake(server, old_client) is None  # the old CA is gone
    assert await handshake(server, new_client) is not None
    s, c = live  # the connection made before the reload carries on
    with trio.fail_after(5):
        await c.send_all(b"still here")
        assert await s.receive_some(100) == b"still here"


async def test_client_refuses_servers_of_a_removed_ca(tmp_path: Path) -> None:
    p = TwoCas(tmp_path)
    client = tlsctx.client_context(ca=p.ca)
    old_server, new_server = p.server(p.old), p.server(p.new)
    assert await handshake(old_server, client) is not None
    p.replace()
    assert tlsrefresh.refresh() >= 1
    assert await handshake(old_server, client) is None
    got = await handshake(new_server, client)
    assert got is not None
    expected = certs.load_cert(p.new / "appliance-vch.crt").serial_number
    assert peer_serial(got[1]) == expected


async def test_a_torn_ca_file_keeps_the_old_trust(tmp_path: Path) -> None:
    p = TwoCas(tmp_path)
    server = p.server(p.old, client_ca=p.ca)
    old_client = p.client(p.old, ca=p.old / certs.CA_CERT)
    p.ca.write_bytes((p.new / certs.CA_CERT).read_bytes()[:100])  # half written
    assert tlsrefresh.refresh() == 0
    assert await handshake(server, old_client) is not None
    p.replace()
    assert tlsrefresh.refresh() >= 1
    assert await handshake(server, old_client) is None


def test_wrap_socket_takes_the_new_trust_too(tmp_path: Path) -> None:
    p = TwoCas(tmp_path)
    client = tlsctx.client_context(ca=p.ca)
    p.replace()
    assert tlsrefresh.refresh() >= 1
    a, b = socket.socketpair()
    server = p.server(p.old)

    def serve() -> None:
        with contextlib.suppress(OSError), server.wrap_socket(b, server_side=True):
            pass

    t = threading.Thread(target=serve)
    t.start()
    with a, pytest.raises(ssl.SSLCertVerificationError):  # handshake on connect
        client.wrap_socket(a, server_hostname=HOST)
    t.join(10)
    assert not t.is_alive()


def shake_bio(
    server: ssl.SSLContext, client: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> ssl.SSLObject | None:
    """A handshake and one byte each way over memory BIOs (a session to resume)."""
    si, so, ci, co = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    s = server.wrap_bio(si, so, server_side=True)
    c = client.wrap_bio(ci, co, server_hostname=HOST, session=session)
    try:
        for _ in range(4):
            for end in (c, s):
                with contextlib.suppress(ssl.SSLWantReadError):
                    end.do_handshake()
                si.write(co.read())
                ci.write(so.read())
        s.write(b"!")
        ci.write(so.read())
        assert c.read(1) == b"!"  # the ticket comes with it
    except ssl.SSLError:
        return None
    return c


def test_a_session_from_before_cannot_resume_past_the_new_trust(tmp_path: Path) -> None:
    p = TwoCas(tmp_path)
    server = p.server(p.old, client_ca=p.ca)
    client = p.client(p.old, ca=p.old / certs.CA_CERT)
    first = shake_bio(server, client)
    assert first is not None and first.session is not None
    again = shake_bio(server, client, first.session)
    assert again is not None and again.session_reused  # resumption works at all
    p.replace()
    assert tlsrefresh.refresh() >= 1
    assert shake_bio(server, client, first.session) is None
