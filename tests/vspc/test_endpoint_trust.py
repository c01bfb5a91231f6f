"""Who may speak for a VM at the appliance endpoint (issue 11 items 4, 5, 6, 9).

Real sockets and real TLS with certificates from our CA code: a relay with a
valid certificate that sends a traversal name or speaks for another host is
refused (its stream only, one escaped log line, a count) and nothing is created
outside the log directory, while an honest stream alongside is byte-exact.
"""

from __future__ import annotations

import logging
import os
import ssl
import struct
from pathlib import Path

import pytest
import trio

from common.link.route import Route, Router
from common.link.tls import TlsFiles, client_context
from common.ops.config import ConfigError, loads
from common.proto.link.header import MAGIC, OriginHeader, encode_header
from relay.config import loads_config
from relay.daemon import RelayDaemon
from tests.relay.pki_helpers import Pki
from tests.relay.relayfix import pattern, start_relay
from tests.support.waiting import wait_until
from vspc.config import VspcConfig
from vspc.endpoint import Endpoint
from vspc.service import VspcService

from .conftest import metric

TRAVERSAL = "../../../outside/x"


def tls_table(f: TlsFiles, ca_key: str = "client-ca") -> str:
    return f'{{ cert = "{f.cert}", key = "{f.key}", {ca_key} = "{f.ca}" }}'


def vspc_toml(tmp_path: Path, endpoint: str) -> str:
    return f"""
[listen]
host = "127.0.0.1"
port = 0
[endpoint]
{endpoint}
[console]
socket = "{tmp_path}/c.sock"
log-dir = "{tmp_path}/d1/d2/logs"
[metrics]
host = "127.0.0.1"
port = 0
"""


async def start_appliance(
    n: trio.Nursery, tmp_path: Path, endpoint: str
) -> tuple[VspcService, Endpoint]:
    cfg = loads(VspcConfig, vspc_toml(tmp_path, endpoint))
    svc: VspcService = await n.start(VspcService(cfg).run)
    ep: Endpoint = await n.start(Endpoint(svc).run)
    return svc, ep


async def tls_stream(
    ep: Endpoint, files: TlsFiles | None, ca: Path
) -> trio.SSLStream[trio.SocketStream]:
    ctx = client_context(files) if files is not None else ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False  # the appliance is named by its vic:// identity
    tcp = await trio.open_tcp_stream("127.0.0.1", ep.tcp_port or 0)
    return trio.SSLStream(tcp, ctx)


async def send_and_wait_closed(stream: trio.abc.Stream, data: bytes) -> None:
    """Send, then read until the endpoint closes the stream (a refusal)."""
    try:
        await stream.send_all(data)
        while await stream.receive_some(4096):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError):
        pass


def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "d1" / "d2" / "logs"


def assert_nothing_outside(tmp_path: Path, expected: set[str]) -> None:
    """Only the honest console's files (log, events, meta) and the run marker."""
    assert not (tmp_path / "outside").exists()
    assert not (tmp_path / "d1" / "outside").exists()
    stems = {name.rsplit(".", 1)[0] for name in expected if name.endswith(".log")}
    expected = expected | {f"{stem}.meta.json" for stem in stems} | {".vspc-running"}
    assert set(os.listdir(log_dir(tmp_path))) == expected
    assert sorted(os.listdir(tmp_path / "d1")) == ["d2"]


async def test_tls_endpoint_refuses_traversal_and_other_hosts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pki = Pki(tmp_path / "pki")
    server = pki.issue("appliance", "vch")
    esx_a = pki.issue("host", "esx-a")
    caplog.set_level(logging.INFO, "vspc")
    async with trio.open_nursery() as n:
        svc, ep = await start_appliance(
            n, tmp_path, f'host = "127.0.0.1"\nport = 0\ntls = {tls_table(server)}'
        )
        honest = await tls_stream(ep, esx_a, server.ca)
        data = pattern(300_000, 7)
        with trio.fail_after(30):
            await honest.send_all(
                encode_header(OriginHeader("esx-a", "vm-good", "tcp", "com1")) + data[:1000]
            )
            for vm, host in ((TRAVERSAL, "esx-a"), ("vm-good", "esx-b"), ("vm\u2028x", "esx-a")):
                liar = await tls_stream(ep, esx_a, server.ca)
                await send_and_wait_closed(
                    liar, encode_header(OriginHeader(host, vm, "tcp", "com1")) + b"forged"
                )
            # no client certificate at all: the TLS handshake fails
            await send_and_wait_closed(await tls_stream(ep, None, server.ca), b"x")
            await wait_until(
                lambda: metric(svc, "vspc_relayed_streams_total", kind="?", result="rejected") >= 2
            )
            tls_refused = {"listener": "endpoint", "reason": "no_certificate"}
            assert metric(svc, "vspc_tls_refused_total", **tls_refused) == 1
            await honest.send_all(data[1000:])
            await wait_until(lambda: svc.consoles.find("vm-good").bytes_from_vm == len(data))
            await svc.consoles.writer.flush()
        assert (log_dir(tmp_path) / "vm-good_com1.log").read_bytes() == data
        assert_nothing_outside(tmp_path, {"vm-good_com1.log", "vm-good_com1.events.jsonl"})
        assert metric(svc, "vspc_relayed_streams_total", kind="tcp", result="rejected") == 1
        assert metric(svc, "vspc_relayed_streams_total", kind="tcp", result="accepted") == 1
        refusals = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
        assert any("may not speak for host 'esx-b'" in m for m in refusals)
        assert any("invalid VM name '../../../outside/x'" in m for m in refusals)
        # one record is one line, whatever the header carried
        assert all(len(m.splitlines()) == 1 for m in refusals), refusals
        n.cancel_scope.cancel()


def forwarder_toml(tmp_path: Path, files: TlsFiles, link: Path) -> str:
    return f"""
host = "esx-b"
[egress.default]
kind = "unix"
path = "{tmp_path}/unused.sock"
[metrics]
enabled = false
[peer]
tls = {tls_table(files, "ca")}
[[peer.listen]]
address = "tcp:127.0.0.1:0"
allowed-peers = ["vic://host/esx-a"]
forward = "unix:{link}"
"""


async def test_traversal_through_an_authenticated_relay_creates_nothing_outside(
    tmp_path: Path,
) -> None:
    """esx-a holds a valid certificate; its link goes through relay esx-b (from TOML)
    to the appliance's link endpoint. Its forged header is refused there (the stream
    is reset); its honest stream on the same link carries on, byte-exact."""
    pki = Pki(tmp_path / "pki")
    link = tmp_path / "link.sock"
    async with trio.open_nursery() as n:
        svc, ep = await start_appliance(
            n,
            tmp_path,
            f'[[endpoint.link]]\naddress = "unix:{link}"\ntls = false\nforwarded = true',
        )
        b: RelayDaemon = await start_relay(
            n, loads_config(forwarder_toml(tmp_path, pki.issue("host", "esx-b"), link))
        )
        host, port = b.mesh.bound()[0][:2]
        router = Router(
            Route(f"tcp:{host}:{port}", identity="vic://host/esx-b", name="liar"),
            n,
            tls_files=pki.issue("host", "esx-a"),
        )
        data = pattern(200_000, 3)
        with trio.fail_after(30):
            good = await router.open_stream(
                encode_header(OriginHeader("esx-a", "vm-link", "tcp", "com1", "s-1"))
            )
            await good.send_all(data[:10])
            bad = await router.open_stream(
                encode_header(OriginHeader("esx-a", TRAVERSAL, "tcp", "com1", "s-2"))
            )
            await send_and_wait_closed(bad, b"forged bytes")
            await good.send_all(data[10:])
            await wait_until(lambda: svc.consoles.find("vm-link").bytes_from_vm == len(data))
            await svc.consoles.writer.flush()
        assert ep.links is not None and ep.links.links_refused == 1
        assert metric(svc, "vspc_relayed_streams_total", kind="?", result="rejected") == 1
        assert (log_dir(tmp_path) / "vm-link_com1.log").read_bytes() == data
        assert_nothing_outside(tmp_path, {"vm-link_com1.log", "vm-link_com1.events.jsonl"})
        n.cancel_scope.cancel()


async def test_names_that_differ_are_different_consoles(tmp_path: Path) -> None:
    """ab-cd and abcd, Web Server and web server: four VMs, four consoles and logs;
    one UUID in two forms is one VM."""
    sock = tmp_path / "ep.sock"
    uuid_forms = (
        "42 3f 5a 1b 2c 3d 4e 5f-60 71 82 93 a4 b5 c6 d7",
        "423F5A1B-2C3D-4E5F-6071-8293A4B5C6D7",
    )
    async with trio.open_nursery() as n:
        svc, _ep = await start_appliance(n, tmp_path, f'unix = "{sock}"')
        names = ("ab-cd", "abcd", "Web Server", "web server", *uuid_forms)
        streams = []
        with trio.fail_after(20):
            for i, vm in enumerate(names):
                s = await trio.open_unix_socket(str(sock))
                await s.send_all(
                    encode_header(OriginHeader("esx-a", vm, "tcp", "com1")) + bytes([65 + i])
                )
                streams.append(s)
            await wait_until(lambda: sum(c.bytes for c in svc.consoles.list()) == len(names))
            await svc.consoles.writer.flush()
        assert sorted(c.key.uuid for c in svc.consoles.list()) == sorted(
            ["ab-cd", "abcd", "Web Server", "web server", "423f5a1b2c3d4e5f60718293a4b5c6d7"]
        )
        logs = log_dir(tmp_path)
        assert (logs / "ab-cd_com1.log").read_bytes() == b"A"
        assert (logs / "abcd_com1.log").read_bytes() == b"B"
        assert (logs / "Web Server_com1.log").read_bytes() == b"C"
        assert (logs / "web server_com1.log").read_bytes() == b"D"
        assert (logs / "423f5a1b2c3d4e5f60718293a4b5c6d7_com1.log").read_bytes() == b"EF"
        n.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("endpoint", "key"),
    [
        ('host = "0.0.0.0"\nport = 1', "endpoint.tls"),
        ('host = "10.0.0.5"\nport = 1', "endpoint.tls"),
        ('host = "appliance.example"\nport = 1', "endpoint.tls"),
        ('host = "0.0.0.0"\nport = 1\ntls = TLS_NO_CA', "endpoint.tls"),
        ('[[endpoint.link]]\naddress = "tcp:0.0.0.0:7444"\ntls = false', "endpoint.link[0].tls"),
        (
            '[[endpoint.link]]\naddress = "unix:/x"\ntls = false\n[[endpoint.link]]\n'
            'address = "tcp:10.0.0.5:7444"\ntls = false\nforwarded = true',
            "endpoint.link[1].tls",
        ),
    ],
)
def test_an_unauthenticated_endpoint_off_loopback_is_a_config_error(
    tmp_path: Path, endpoint: str, key: str
) -> None:
    server = Pki(tmp_path / "pki").issue("appliance", "vch")
    endpoint = endpoint.replace("TLS_NO_CA", f'{{ cert = "{server.cert}", key = "{server.key}" }}')
    with pytest.raises(ConfigError) as e:
        loads(VspcConfig, vspc_toml(tmp_path, endpoint))
    assert e.value.key == key, e.value


@pytest.mark.parametrize(
    "endpoint",
    [
        'host = "127.0.0.1"\nport = 1',
        'host = "::1"\nport = 1',
        'host = "localhost"\nport = 1',
        'host = "0.0.0.0"\nport = 1\ninsecure = true',
        'host = "0.0.0.0"\nport = 1\ntls = TLS',
        '[[endpoint.link]]\naddress = "vsock:4294967295:7444"\ntls = false\nforwarded = true',
        '[[endpoint.link]]\naddress = "tcp:127.0.0.1:7444"\ntls = false',
    ],
)
def test_safe_endpoints_are_accepted(tmp_path: Path, endpoint: str) -> None:
    server = Pki(tmp_path / "pki").issue("appliance", "vch")
    loads(VspcConfig, vspc_toml(tmp_path, endpoint.replace("TLS", tls_table(server))))


def raw_header(host: str, vm: str, kind: str = "tcp", label: str = "com1") -> bytes:
    """An origin header built by hand, so it may carry what encode_header refuses."""
    body = b"".join(
        bytes([len(f)]) + f for f in (x.encode() for x in (host, vm, kind, label, "s-9"))
    )
    return MAGIC + struct.pack(">BH", 1, len(body)) + body


@pytest.mark.parametrize(
    "vm",
    [
        "x\nvspc.endpoint INFO forged line",
        "x\r\nforged",
        "x\u2028forged",
        "x\x85forged",
        "x\x1b[2Jforged",
    ],
)
async def test_a_forged_header_is_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, vm: str
) -> None:
    sock = tmp_path / "ep.sock"
    caplog.set_level(logging.INFO, "vspc")
    async with trio.open_nursery() as n:
        svc, _ep = await start_appliance(n, tmp_path, f'unix = "{sock}"')
        with trio.fail_after(10):
            s = await trio.open_unix_socket(str(sock))
            await send_and_wait_closed(s, raw_header("esx-a", vm) + b"data")
            await wait_until(
                lambda: metric(svc, "vspc_relayed_streams_total", kind="?", result="rejected") == 1
            )
        lines = [caplog.handler.format(r) for r in caplog.records if "rejected" in r.getMessage()]
        assert len(lines) == 1
        assert len(lines[0].splitlines()) == 1 and "\x1b" not in lines[0], lines
        assert svc.consoles.list() == []
        n.cancel_scope.cancel()


def relay_toml(host: str, files: TlsFiles, port: int) -> str:
    return f"""
host = "{host}"
[egress.default]
kind = "tcp"
host = "127.0.0.1"
port = {port}
tls = {{ ca = "{files.ca}", cert = "{files.cert}", key = "{files.key}", server-name = "localhost" }}
[metrics]
enabled = false
[[tcp]]
name = "vm"
vm = "vm-real"
port = 0
label = "com1"
"""


async def test_relays_from_toml_over_mtls_speak_only_for_their_host(tmp_path: Path) -> None:
    """Real relay daemons deliver over TLS with their certificates: esx-a's stream
    arrives; a relay holding esx-a's certificate but configured as esx-z is refused."""
    pki = Pki(tmp_path / "pki")
    server = pki.issue("appliance", "vch", dns_names=("localhost",))
    esx_a = pki.issue("host", "esx-a")
    async with trio.open_nursery() as n:
        svc, ep = await start_appliance(
            n, tmp_path, f'host = "127.0.0.1"\nport = 0\ntls = {tls_table(server)}'
        )
        honest = await start_relay(n, loads_config(relay_toml("esx-a", esx_a, ep.tcp_port or 0)))
        liar = await start_relay(n, loads_config(relay_toml("esx-z", esx_a, ep.tcp_port or 0)))
        data = pattern(100_000, 5)
        with trio.fail_after(30):
            bad = await trio.open_tcp_stream("127.0.0.1", liar.bound["vm"][1])
            await send_and_wait_closed(bad, b"forged")
            good = await trio.open_tcp_stream("127.0.0.1", honest.bound["vm"][1])
            await good.send_all(data)
            await wait_until(lambda: [c.bytes for c in svc.consoles.list()] == [len(data)])
        assert metric(svc, "vspc_relayed_streams_total", kind="tcp", result="rejected") == 1
        assert [c.key.uuid for c in svc.consoles.list()] == ["vm-real"]
        await good.aclose()
        n.cancel_scope.cancel()
