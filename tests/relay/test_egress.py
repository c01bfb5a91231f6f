"""Egress to the appliance: TCP, TLS (trustme CA), Unix, hybrid vsock through a
Firecracker-compatible muxer stand-in (hostile variants too), socat as an
independent appliance; every stream starts with the origin header."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
import trio
import trustme

from common.io.tlsconfig import ClientTls
from common.proto.link.header import HeaderDecoder, OriginHeader
from relay.config import EgressConfig, TcpListener, TimeoutsConfig
from relay.egress import open_egress
from tests.relay.relayfix import (
    Appliance,
    Muxer,
    pattern,
    relay_config,
    roundtrip,
    start_relay,
    tcp_egress,
    wait_closed,
)
from tests.support.daemons import free_port
from tests.support.waiting import wait_until_async

HEADER = OriginHeader("esx-1", "vm-1", "tcp", "serial0", "s-1")


async def _through_relay(
    egress: EgressConfig, app: Appliance, nursery: trio.Nursery, payload: bytes, **kw: object
) -> trio.abc.Stream:
    cfg = relay_config(egress, tcp=(TcpListener(name="t", vm="vm-1", port=0),), **kw)
    d = await start_relay(nursery, cfg)
    s = await trio.open_tcp_stream("127.0.0.1", d.bound["t"][1])
    assert await roundtrip(s, payload) == payload
    return s


async def test_unix_egress(tmp_path: Path) -> None:
    app = Appliance()
    async with trio.open_nursery() as n:
        await app.serve_unix(n, tmp_path / "app.sock")
        data = pattern(500_000)
        s = await _through_relay(
            EgressConfig(kind="unix", path=tmp_path / "app.sock"), app, n, data
        )
        (rec,) = app.streams
        assert rec.header.vm == "vm-1" and bytes(rec.data) == data
        await s.aclose()
        n.cancel_scope.cancel()


async def test_tls_egress(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_cert = ca.issue_cert("appliance.test")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server_ctx = __import__("ssl").create_default_context(__import__("ssl").Purpose.CLIENT_AUTH)
    server_cert.configure_cert(server_ctx)
    app = Appliance()
    async with trio.open_nursery() as n:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        tls_listeners = [trio.SSLListener(lst, server_ctx) for lst in listeners]
        n.start_soon(trio.serve_listeners, app.handle, tls_listeners)
        egress = EgressConfig(
            kind="tcp",
            host="127.0.0.1",
            port=port,
            tls=ClientTls(ca=ca_file, server_name="appliance.test"),
        )
        data = pattern(300_000, seed=1)
        s = await _through_relay(egress, app, n, data)
        (rec,) = app.streams
        assert bytes(rec.data) == data
        assert app.streams[0].header.kind == "tcp"
        await s.aclose()
        n.cancel_scope.cancel()


async def test_tls_egress_untrusted_server_fails_that_stream(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other_ca = trustme.CA()
    ca_file = tmp_path / "wrong-ca.pem"
    other_ca.cert_pem.write_to_path(str(ca_file))
    server_ctx = __import__("ssl").create_default_context(__import__("ssl").Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("appliance.test").configure_cert(server_ctx)
    app = Appliance()
    async with trio.open_nursery() as n:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        n.start_soon(
            trio.serve_listeners,
            app.handle,
            [trio.SSLListener(lst, server_ctx) for lst in listeners],
        )
        cfg = relay_config(
            EgressConfig(
                kind="tcp",
                host="127.0.0.1",
                port=port,
                tls=ClientTls(ca=ca_file, server_name="appliance.test"),
            ),
            tcp=(TcpListener(name="t", vm="vm-1", port=0),),
        )
        d = await start_relay(n, cfg)
        s = await trio.open_tcp_stream("127.0.0.1", d.bound["t"][1])
        assert await wait_closed(s) == b""  # closed by the relay
        assert d.metrics.failed.labels("t", "egress")._value.get() == 1
        assert any(
            "egress tcp failed" in r.getMessage() and "vm=vm-1" in r.getMessage()
            for r in caplog.records
        )
        n.cancel_scope.cancel()


async def test_hybrid_vsock_egress_with_data_after_ok(tmp_path: Path) -> None:
    """The muxer's OK line and the guest's first bytes arrive in one write: the
    bytes after the line reach the VM side first, none lost or duplicated."""
    app = Appliance()
    async with trio.open_nursery() as n:
        backend = await app.serve_tcp(n)
        mux = Muxer(backend, greeting=b"GUEST-HELLO\xff\x00\n")
        await mux.serve(n, tmp_path / "appliance.vsock")
        cfg = relay_config(
            EgressConfig(kind="hvsock", path=tmp_path / "appliance.vsock", port=7000),
            tcp=(TcpListener(name="t", vm="vm-1", port=0),),
        )
        d = await start_relay(n, cfg)
        s = await trio.open_tcp_stream("127.0.0.1", d.bound["t"][1])
        data = pattern(200_000, seed=2)
        expected = b"GUEST-HELLO\xff\x00\n" + data
        got = bytearray()

        async def reader() -> None:
            while len(got) < len(expected):
                chunk = await s.receive_some(65536)
                assert chunk
                got.extend(chunk)

        with trio.fail_after(20):
            async with trio.open_nursery() as rn:
                rn.start_soon(reader)
                await s.send_all(data)
        assert bytes(got) == expected
        assert mux.requests == [7000]
        (rec,) = app.streams
        assert rec.header.vm == "vm-1" and bytes(rec.data) == data
        await s.aclose()
        n.cancel_scope.cancel()


@pytest.mark.parametrize("mode", ["silent", "long", "garbage", "refuse"])
async def test_hostile_muxer_closes_only_that_stream(
    tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A muxer that never answers (connect timeout), answers with an over-long or
    malformed line, or hangs up: the ingress stream gets closed with a log line;
    a stream on another route, through a good egress, carries on byte-exact."""
    app = Appliance()
    async with trio.open_nursery() as n:
        backend = await app.serve_tcp(n)
        bad_mux = Muxer(backend, mode=mode)
        await bad_mux.serve(n, tmp_path / "bad.vsock")
        cfg = relay_config(
            tcp_egress(backend),
            timeouts=TimeoutsConfig(connect=0.5, drain=1.0),
            tcp=(
                TcpListener(name="good", vm="vm-g", port=0),
                TcpListener(name="bad", vm="vm-b", port=0, egress="mux"),
            ),
        )
        cfg = type(cfg)(
            **{
                **cfg.__dict__,
                "egress": {
                    "default": tcp_egress(backend),
                    "mux": EgressConfig(kind="hvsock", path=tmp_path / "bad.vsock", port=1),
                },
            }
        )
        d = await start_relay(n, cfg)
        good = await trio.open_tcp_stream("127.0.0.1", d.bound["good"][1])
        assert await roundtrip(good, b"first") == b"first"
        bad = await trio.open_tcp_stream("127.0.0.1", d.bound["bad"][1])
        await bad.send_all(b"this must not leak anywhere")
        assert await wait_closed(bad) == b""
        assert d.metrics.failed.labels("bad", "egress")._value.get() == 1
        msgs = [r.getMessage() for r in caplog.records if "egress hvsock failed" in r.getMessage()]
        assert len(msgs) == 1 and "route=bad" in msgs[0] and "vm=vm-b" in msgs[0]
        data = pattern(100_000, seed=4)
        assert await roundtrip(good, data) == data
        assert [r.header.vm for r in app.streams] == ["vm-g"]
        await good.aclose()
        n.cancel_scope.cancel()


async def test_open_egress_direct_unix_and_vsock_unreachable(tmp_path: Path) -> None:
    app = Appliance(echo=False)
    async with trio.open_nursery() as n:
        await app.serve_unix(n, tmp_path / "a.sock")
        conn = await open_egress(EgressConfig(kind="unix", path=tmp_path / "a.sock"), HEADER)
        await conn.stream.send_all(b"x")
        await conn.stream.aclose()
        (rec,) = await app.wait_streams(1)
        assert rec.header == HEADER
        if hasattr(socket, "AF_VSOCK"):
            # No VM with CID 4242 here: the connect fails (or times out).
            with pytest.raises((OSError, trio.TooSlowError)), trio.fail_after(3):
                await open_egress(EgressConfig(kind="vsock", cid=4242, port=7000), HEADER)
        n.cancel_scope.cancel()


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat not installed")
async def test_socat_as_the_appliance() -> None:
    """socat echoes everything, header included: the client sees the exact header
    the relay wrote, then its own bytes."""
    port = free_port()
    async with trio.open_nursery() as n:
        proc = await n.start(
            trio.run_process, ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", "PIPE"]
        )
        try:
            cfg = relay_config(tcp_egress(port), tcp=(TcpListener(name="t", vm="vm-s", port=0),))

            async def listening() -> bool:  # socat may not be listening yet
                try:
                    (await trio.open_tcp_stream("127.0.0.1", port)).socket.close()
                except OSError:
                    return False
                return True

            await wait_until_async(listening, 10, "socat listening")
            d = await start_relay(n, cfg)
            s = await trio.open_tcp_stream("127.0.0.1", d.bound["t"][1])
            data = pattern(100_000, seed=7)
            await s.send_all(data)
            dec = HeaderDecoder()
            header = None
            got = b""
            with trio.fail_after(20):
                while header is None:
                    header, got = dec.feed(await s.receive_some(65536))
                while len(got) < len(data):
                    got += await s.receive_some(65536)
            assert (header.host, header.vm, header.kind) == ("esx-test", "vm-s", "tcp")
            assert got == data
            await s.aclose()
        finally:
            proc.terminate()
        n.cancel_scope.cancel()
