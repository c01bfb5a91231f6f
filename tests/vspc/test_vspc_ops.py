"""`vic vspc --config` as a real process: config errors, --check, metrics over
HTTP, SIGHUP reload under traffic, SIGTERM drain, sd_notify, ESX over TLS.

The daemon's ports come from its sd_notify STATUS line on a NOTIFY_SOCKET the
test binds (no guessing, no log scraping)."""

from __future__ import annotations

import random
import signal
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trustme

from common.proto.console import protocol as proto
from tests.support.daemons import Daemon, Samples, free_port, scrape_metrics
from tests.support.vic_cli import assert_one_line, run_vic
from tests.support.waiting import wait_until_async
from vic.lab import telnet_wire as tw
from vic.lab.esx_sim import EsxConnection, SimVM, VMotionNotNow, migrate, random_seq
from vspc.console import client as cc
from vspc.prefixed import PrefixedStream

from .conftest import read_exactly

HOST = "127.0.0.1"


def toml_config(tmp: Path, *, esx_port: int = 0, extra: str = "", vmotion: str = "") -> str:
    return f"""
log-level = "info"
[listen]
host = "{HOST}"
port = {esx_port}
{extra}
[console]
socket = "{tmp / "console.sock"}"
log-dir = "{tmp / "logs"}"
[metrics]
host = "{HOST}"
port = 0
[vmotion]
{vmotion}
"""


# ---- a daemon under test


class VspcDaemon(Daemon):
    """`vic vspc` in ``tmp``; its ports come from the STATUS of its READY message."""

    def __init__(self, tmp: Path, config: str) -> None:
        super().__init__("vspc", "vspc", config, tmp)
        self.tmp = tmp
        self.esx_port = 0
        self.metrics_port = 0

    async def ready(self) -> dict[str, str]:
        msg = await self.message()
        assert msg.get("READY") == "1", msg
        status = dict(part.split("=", 1) for part in msg["STATUS"].split())
        self.esx_port = int(status["esx"].rsplit(":", 1)[1])
        self.metrics_port = int(status["metrics"])
        return msg

    def console_endpoint(self) -> cc.Endpoint:
        return cc.Endpoint(socket=self.tmp / "console.sock")


@asynccontextmanager
async def daemon(tmp: Path, config: str, *extra_args: str) -> AsyncIterator[VspcDaemon]:
    """`vic vspc` started (not yet ready: see ``ready``); killed at the end if still running."""
    d = VspcDaemon(tmp, config)
    try:
        await d.launch(*extra_args)
        yield d
    finally:
        await d.finish()


async def attach(d: VspcDaemon, vm: SimVM, mode: str = "ro") -> trio.abc.Stream:
    req = proto.AttachRequest(vm=vm.canonical_uuid, mode=mode, replay=1 << 16)  # type: ignore[arg-type]
    stream, status, rest = await cc.attach(d.console_endpoint(), req)
    assert status["ok"]
    return PrefixedStream(stream, rest)


async def wait_console(d: VspcDaemon, vm: SimVM) -> None:
    async def listed() -> bool:
        return any(
            c["uuid"] == vm.canonical_uuid for c in await cc.list_consoles(d.console_endpoint())
        )

    await wait_until_async(listed, 5, "the console is listed", interval=0.01)


async def scrape(d: VspcDaemon) -> Samples:
    return await scrape_metrics(HOST, d.metrics_port)


async def refused(port: int) -> bool:
    try:
        s = await trio.open_tcp_stream(HOST, port)
    except OSError:
        return True
    await s.aclose()
    return False


# ---- configuration errors


BAD_CONFIGS = [
    # (extra [listen] lines, [vmotion] lines, the key the one line must name)
    ("", "max-concurrent = 0", "vmotion.max-concurrent"),
    ("", "timeout = -1", "vmotion.timeout"),
    ("", "bogus = 1", "vmotion.bogus"),
    ("port = 70000", "", "listen.port"),
    ('allowed-sources = ["10.0.0.0/33"]', "", "listen.allowed-sources[0]"),
    ("idle-probe = 0", "", "listen.idle-probe"),
    ("", "max-per-source = 0", "vmotion.max-per-source"),
    (
        '[listen.tls]\ncert = "/nonexistent/c.pem"\nkey = "/nonexistent/k.pem"',
        "",
        "listen.tls.cert",
    ),
]


def _write_bad(tmp_path: Path, k: int, extra: str, vmotion: str) -> Path:
    path = tmp_path / f"bad{k}.toml"
    text = toml_config(tmp_path, extra=extra, vmotion=vmotion)
    if extra.startswith("port"):
        text = text.replace("port = 0\n" + extra, extra)
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", range(len(BAD_CONFIGS)), ids=[c[2] for c in BAD_CONFIGS])
def test_bad_config_is_one_line_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: int
) -> None:
    """In process (fast): `vic vspc` and `vic vspc --check` exit 2 with one line."""
    from vic.cli import main

    extra, vmotion, key = BAD_CONFIGS[case]
    path = _write_bad(tmp_path, case, extra, vmotion)
    for args in ([], ["--check"]):
        assert main(["vspc", "--config", str(path), *args]) == 2
        out, err = capsys.readouterr()
        lines = err.splitlines()
        assert len(lines) == 1, err
        assert f"config error: {key}:" in lines[0], lines[0]
        assert out == ""


def test_bad_config_process_exits_2_with_one_line(tmp_path: Path) -> None:
    """The same as a real process: exit status 2, one stderr line, no traceback."""
    extra, vmotion, key = BAD_CONFIGS[-1]
    path = _write_bad(tmp_path, 0, extra, vmotion)
    r = run_vic("vspc", path)
    assert_one_line(r, key)
    assert r.stdout == ""


@pytest.mark.parametrize("which", ["listen", "metrics"])
def test_port_in_use_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], which: str
) -> None:
    """A listener that cannot be opened at start-up: one line naming the key, exit 2,
    and nothing logged before it (in process: the same code path as the daemon)."""
    from vic.cli import main

    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        text = toml_config(tmp_path, esx_port=port if which == "listen" else 0)
        if which == "metrics":
            text = text.replace(
                '[metrics]\nhost = "127.0.0.1"\nport = 0',
                f'[metrics]\nhost = "127.0.0.1"\nport = {port}',
            )
        path = tmp_path / "vspc.toml"
        path.write_text(text)
        assert main(["vspc", "--config", str(path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and f"config error: {which}.port:" in lines[0], lines


def test_check_accepts_a_good_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vic.cli import main

    path = tmp_path / "vspc.toml"
    path.write_text(toml_config(tmp_path, vmotion="max-concurrent = 8"))
    assert main(["vspc", "--config", str(path), "--check"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == f"{path}: ok" and err == ""
    assert not (tmp_path / "console.sock").exists()  # --check starts nothing


# ---- a running daemon


async def test_metrics_over_http(tmp_path: Path) -> None:
    rng = random.Random(30)
    vm = SimVM.random(rng)
    async with daemon(tmp_path, toml_config(tmp_path)) as d, trio.open_nursery() as nursery:
        await d.ready()
        with trio.fail_after(15):
            src = await EsxConnection.open(nursery, HOST, d.esx_port, vm=vm)
            await src.send_console(b"\xff" * 100)
            await wait_console(d, vm)
            typist = await attach(d, vm, "rw")
            await typist.send_all(b"abc")
            assert await src.receive_console_exactly(3) == b"abc"
            m = await migrate(src, HOST, d.esx_port, nursery=nursery, rng=rng)
            await m.dest.send_console(b"x" * 50)
            assert len(await read_exactly(typist, 150)) == 150
            with pytest.raises(VMotionNotNow):
                await m.dest.vmotion_begin(b"\x01")  # twice: the second is NOTNOW
                await m.dest.vmotion_begin(b"\x02")
            await m.dest.vmotion_abort()
            s = await scrape(d)
        await typist.aclose()
        await m.dest.aclose()
        nursery.cancel_scope.cancel()
    assert s[("vspc_connected_vms", ())] == 1
    assert s[("vspc_bytes_total", (("direction", "vm_to_appliance"),))] == 150
    assert s[("vspc_bytes_total", (("direction", "appliance_to_vm"),))] == 3
    assert s[("vspc_vmotions_total", (("outcome", "complete"),))] == 1
    assert s[("vspc_vmotions_total", (("outcome", "notnow"),))] == 1
    assert s[("vspc_vmotions_total", (("outcome", "abort"),))] == 1
    assert s[("vspc_vmotion_begin_to_goahead_seconds_count", ())] == 2
    assert s[("vspc_vmotion_begin_to_goahead_seconds_bucket", (("le", "+Inf"),))] == 2
    assert ("vspc_vmotion_begin_to_goahead_seconds_bucket", (("le", "0.001"),)) in s


async def test_sighup_reload_under_traffic(tmp_path: Path) -> None:
    """Reload moves the listener and raises vmotion.max_concurrent; a live ESX
    connection streams byte-exact through it; a bad config is refused."""
    rng = random.Random(31)
    vm_a, vm_c, vm_b = SimVM.random(rng), SimVM.random(rng), SimVM.random(rng)
    async with (
        daemon(tmp_path, toml_config(tmp_path, vmotion="max-concurrent = 1")) as d,
        trio.open_nursery() as nursery,
    ):
        await d.ready()
        old_port = d.esx_port
        with trio.fail_after(15):
            a = await EsxConnection.open(nursery, HOST, old_port, vm=vm_a)
            c = await EsxConnection.open(nursery, HOST, old_port, vm=vm_c)
            await a.send_console(b"<")
            await wait_console(d, vm_a)
            viewer = await attach(d, vm_a, "rw")
            assert await read_exactly(viewer, 1) == b"<"
            await a.vmotion_begin(random_seq(rng, with_ff=True))
            with pytest.raises(VMotionNotNow):
                await c.vmotion_begin(random_seq(rng))  # limit 1
            await a.vmotion_abort()

            chunks = [b"%05d:" % k + bytes([k % 256]) * 50 + b"\xff\r\n" for k in range(300)]
            reload_now, reloaded = trio.Event(), trio.Event()

            async def stream_a() -> None:
                for k, chunk in enumerate(chunks):
                    await a.send_console(chunk)
                    if k == 100:
                        reload_now.set()
                    if k == 200:
                        await reloaded.wait()

            nursery.start_soon(stream_a)
            await reload_now.wait()
            new_port = free_port()
            await reload(d, toml_config(tmp_path, esx_port=new_port, vmotion="max-concurrent = 2"))
            reloaded.set()
            assert d.esx_port == new_port
            want = b"".join(chunks)
            assert await read_exactly(viewer, len(want)) == want
            await viewer.send_all(b"typed\xff")
            assert await a.receive_console_exactly(6) == b"typed\xff"
            # the new limit: two vMotions at once
            await a.vmotion_begin(random_seq(rng))
            await c.vmotion_begin(random_seq(rng))
            await a.vmotion_abort()
            await c.vmotion_abort()
            # the new port serves, the old one is closed
            b = await EsxConnection.open(nursery, HOST, new_port, vm=vm_b)
            await b.send_console(b"b")
            await wait_console(d, vm_b)
            assert await refused(old_port)
            await _bad_reloads(d, tmp_path, a, viewer)
        assert not a.closed.is_set() and not a.violations
        await viewer.aclose()
        nursery.cancel_scope.cancel()
    assert "reload refused" in d.log() and "vmotion.max-concurrent:" in d.log()
    assert "keeping the old ESX listener" in d.log()


async def reload(d: VspcDaemon, config: str) -> None:
    """Write ``config``, SIGHUP: RELOADING=1, then READY=1 (with the ports)."""
    d.config_path.write_text(config)
    d.kill(signal.SIGHUP)
    assert (await d.message()).get("RELOADING") == "1"
    await d.ready()


async def _bad_reloads(
    d: VspcDaemon, tmp_path: Path, a: EsxConnection, viewer: trio.abc.Stream
) -> None:
    """A bad config, then a taken port: each refused, the running listener kept and
    ``a`` still streaming to ``viewer``."""
    port = d.esx_port
    # a bad config is refused, the running one kept
    await reload(d, toml_config(tmp_path, vmotion="max-concurrent = -5"))
    assert d.esx_port == port
    await a.send_console(b"still")
    assert await read_exactly(viewer, 5) == b"still"
    # a new port that is taken: logged, the old listener kept
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        await reload(d, toml_config(tmp_path, esx_port=busy.getsockname()[1]))
    assert d.esx_port == port
    assert not await refused(port)


async def test_sigterm_stops_listening_and_drains(tmp_path: Path) -> None:
    rng = random.Random(32)
    vm = SimVM.random(rng)
    async with (
        daemon(tmp_path, toml_config(tmp_path), "--drain-seconds", "30") as d,
        trio.open_nursery() as nursery,
    ):
        await d.ready()
        with trio.fail_after(15):
            a = await EsxConnection.open(nursery, HOST, d.esx_port, vm=vm)
            await a.send_console(b"before-")
            await wait_console(d, vm)
            viewer = await attach(d, vm, "rw")
            assert await read_exactly(viewer, 7) == b"before-"
            d.kill(signal.SIGTERM)
            assert (await d.message()).get("STOPPING") == "1"
            # the listener closes right away
            await wait_until_async(
                lambda: refused(d.esx_port), 15, "the listener closed", interval=0.01
            )
            # the live connection still works both ways while draining
            await a.send_console(b"during\xff")
            assert await read_exactly(viewer, 7) == b"during\xff"
            await viewer.send_all(b"k")
            assert await a.receive_console_exactly(1) == b"k"
            assert d.running
            await a.aclose()  # the last connection leaves: the daemon exits long before 30 s
            assert await d.wait_exit() == 0
        nursery.cancel_scope.cancel()
    log = (tmp_path / "logs").glob(f"{vm.canonical_uuid}_*.log")
    assert [p.read_bytes() for p in log] == [b"before-during\xff"]


async def test_sigterm_drain_deadline_closes_stragglers(tmp_path: Path) -> None:
    vm = SimVM.random(random.Random(33))
    async with (
        daemon(tmp_path, toml_config(tmp_path), "--drain-seconds", "0.5") as d,
        trio.open_nursery() as nursery,
    ):
        await d.ready()
        with trio.fail_after(15):
            a = await EsxConnection.open(nursery, HOST, d.esx_port, vm=vm)
            await a.send_console(b"bytes")
            await wait_console(d, vm)
            d.kill(signal.SIGTERM)
            assert (await d.message()).get("STOPPING") == "1"
            await a.wait_closed()  # closed by the vSPC at the deadline
            assert await d.wait_exit() == 0
        nursery.cancel_scope.cancel()
    assert (tmp_path / "logs" / f"{vm.canonical_uuid}_serial0.log").read_bytes() == b"bytes"


async def test_esx_over_tls(tmp_path: Path) -> None:
    """telnets://: the listener speaks TLS with the configured certificate; a VM
    streams and migrates over it byte-exact."""
    ca = trustme.CA()
    extra = listen_tls(tmp_path, ca.issue_cert(HOST, "localhost"), "")
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    rng = random.Random(34)
    vm = SimVM.random(rng)
    payload = bytes(range(256)) * 4
    async with (
        daemon(tmp_path, toml_config(tmp_path, extra=extra)) as d,
        trio.open_nursery() as nursery,
    ):
        await d.ready()
        with trio.fail_after(15):
            src = await EsxConnection.open(nursery, HOST, d.esx_port, vm=vm, ssl_context=client_ctx)
            await src.send_console(payload)
            await wait_console(d, vm)
            viewer = await attach(d, vm, "rw")
            assert await read_exactly(viewer, len(payload)) == payload
            await viewer.send_all(b"\xff\x00\r\n")
            assert await src.receive_console_exactly(4) == b"\xff\x00\r\n"
            m = await migrate(
                src,
                HOST,
                d.esx_port,
                nursery=nursery,
                rng=rng,
                ssl_context=client_ctx,
                seq=random_seq(rng, with_ff=True),
            )
            await m.dest.send_console(payload)
            assert await read_exactly(viewer, len(payload)) == payload
            assert src.ext_received(tw.VMOTION_GOAHEAD)
            # a client that does not trust the certificate gets nowhere
            with pytest.raises((ssl.SSLError, trio.BrokenResourceError)):
                await EsxConnection.open_stream(
                    HOST, d.esx_port, ssl_context=ssl.create_default_context()
                )
            # SIGHUP with a new certificate on the same port: the live TLS connection
            # stays, new connections get the new certificate
            ca2 = trustme.CA()
            extra2 = listen_tls(tmp_path, ca2.issue_cert(HOST), "2")
            port = d.esx_port
            await reload(d, toml_config(tmp_path, esx_port=port, extra=extra2))
            assert d.esx_port == port
            await m.dest.send_console(b"after-reload\xff")
            assert await read_exactly(viewer, 13) == b"after-reload\xff"
            with pytest.raises((ssl.SSLError, trio.BrokenResourceError)):
                await EsxConnection.open_stream(HOST, port, ssl_context=client_ctx)
            ctx2 = ssl.create_default_context()
            ca2.configure_trust(ctx2)
            other = await EsxConnection.open(
                nursery, HOST, port, vm=SimVM.random(rng), ssl_context=ctx2
            )
            await other.send_console(b"new-cert")
        assert not src.violations and not m.dest.violations and not other.violations
        await viewer.aclose()
        nursery.cancel_scope.cancel()


def listen_tls(tmp_path: Path, cert: trustme.LeafCert, suffix: str) -> str:
    """``[listen.tls]`` for ``cert``, written as cert<suffix>.pem / key<suffix>.pem."""
    cert.private_key_pem.write_to_path(str(tmp_path / f"key{suffix}.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / f"cert{suffix}.pem"))
    return (
        f'[listen.tls]\ncert = "{tmp_path / f"cert{suffix}.pem"}"\n'
        f'key = "{tmp_path / f"key{suffix}.pem"}"'
    )
