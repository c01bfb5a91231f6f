"""Peer-link TLS: TLS 1.3 only, mutual auth, identity by URI SAN, over real TCP."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trio
import trio.testing

from common.link.tls import PeerIdentityError, TlsFiles, client_context, handshake, server_context
from tests.relay.pki_helpers import Pki


@pytest.fixture(params=["ed25519", "p256"])
def pki(tmp_path: Path, request: pytest.FixtureRequest) -> Pki:
    return Pki(tmp_path / "ca", key_type=request.param)


async def run_pair(
    server_files: TlsFiles,
    client_files: TlsFiles,
    server_expects: set[str],
    client_expects: set[str],
) -> tuple[object, object]:
    """Handshake over loopback TCP; return (server outcome, client outcome)."""
    results: dict[str, object] = {}
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def server() -> None:
        stream = await listeners[0].accept()
        try:
            tls, ident = await handshake(
                stream, server_context(server_files), server_side=True, expected=server_expects
            )
            results["server"] = ident
            await tls.send_all(b"ok")
            await tls.aclose()
        except (trio.BrokenResourceError, PeerIdentityError) as e:
            results["server"] = e

    async def client() -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            tls, ident = await handshake(
                stream, client_context(client_files), server_side=False, expected=client_expects
            )
            data = await tls.receive_some(10)
            results["client"] = (ident, data)
            await tls.aclose()
        except (trio.BrokenResourceError, PeerIdentityError) as e:
            results["client"] = e

    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            n.start_soon(server)
            n.start_soon(client)
    for lst in listeners:
        await lst.aclose()
    return results["server"], results["client"]


async def test_mutual_auth_ok(pki: Pki) -> None:
    s = pki.issue("host", "b")
    c = pki.issue("host", "a")
    srv, cli = await run_pair(s, c, {"vic://host/a"}, {"vic://host/b"})
    assert srv == "vic://host/a"
    assert cli == ("vic://host/b", b"ok")


async def test_tls13_only(pki: Pki) -> None:
    ctx = server_context(pki.issue("host", "b"))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    # a TLS 1.2-only client cannot talk to us
    c = pki.issue("host", "a")
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    old.load_verify_locations(str(c.ca))
    old.load_cert_chain(str(c.cert), str(c.key))
    a, b = trio.testing.memory_stream_pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as n:

            async def srv() -> None:
                with pytest.raises(trio.BrokenResourceError):
                    await handshake(a, ctx, server_side=True, expected={"vic://host/a"})

            n.start_soon(srv)
            t = trio.SSLStream(b, old, server_side=False)
            with pytest.raises(trio.BrokenResourceError):
                await t.do_handshake()


async def test_wrong_identity_refused_both_ways(pki: Pki) -> None:
    s = pki.issue("host", "b")
    c = pki.issue("host", "mallory")
    srv, _ = await run_pair(s, c, {"vic://host/a"}, {"vic://host/b"})
    assert isinstance(srv, PeerIdentityError)
    # the client expects an appliance but gets a host
    srv, cli = await run_pair(s, pki.issue("host", "a"), {"vic://host/a"}, {"vic://appliance/vch"})
    assert isinstance(cli, PeerIdentityError)


async def test_untrusted_ca_refused(pki: Pki, tmp_path: Path) -> None:
    other = Pki(tmp_path / "other")
    s = pki.issue("host", "b")
    c = other.issue("host", "a")  # right name, wrong CA
    srv, cli = await run_pair(
        s, TlsFiles(c.cert, c.key, pki.root / "ca.crt"), {"vic://host/a"}, {"vic://host/b"}
    )
    assert isinstance(srv, trio.BrokenResourceError)
    # and a server with a foreign certificate is refused by the client
    s2 = other.issue("host", "b")
    srv, cli = await run_pair(
        TlsFiles(s2.cert, s2.key, pki.root / "ca.crt"),
        pki.issue("host", "a"),
        {"vic://host/a"},
        {"vic://host/b"},
    )
    assert isinstance(cli, trio.BrokenResourceError)


async def test_expired_refused(pki: Pki) -> None:
    s = pki.issue("host", "b")
    srv, cli = await run_pair(s, pki.expired("host", "a"), {"vic://host/a"}, {"vic://host/b"})
    assert isinstance(srv, trio.BrokenResourceError)
    srv, cli = await run_pair(
        pki.expired("host", "b"), pki.issue("host", "a"), {"vic://host/a"}, {"vic://host/b"}
    )
    assert isinstance(cli, trio.BrokenResourceError)
