"""The relay daemon: live metrics, reload and drain under live traffic, limits,
1,000 connections at once, and the real process with SIGHUP/SIGTERM/sd_notify."""

from __future__ import annotations

import functools
import os
import signal
import sys
from pathlib import Path

import pytest
import trio

from relay.config import LimitsConfig, MetricsConfig, TcpListener, TimeoutsConfig
from relay.metrics import TO_APPLIANCE, TO_VM
from tests.relay.relayfix import (
    Appliance,
    pattern,
    relay_config,
    roundtrip,
    start_relay,
    tcp_egress,
    wait_closed,
)
from tests.support.daemons import free_port

ROOT = Path(__file__).parents[2]


async def _http_get(port: int, path: str) -> str:
    s = await trio.open_tcp_stream("127.0.0.1", port)
    await s.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return (await wait_closed(s)).decode()


async def test_tcp_roundtrip_header_and_live_metrics() -> None:
    app = Appliance()
    async with trio.open_nursery() as n:
        port = await app.serve_tcp(n)
        cfg = relay_config(
            tcp_egress(port),
            tcp=(TcpListener(name="vm1-com1", vm="vm1", port=0),),
            metrics=MetricsConfig(enabled=True, port=0),
        )
        d = await start_relay(n, cfg)
        rport = d.bound["vm1-com1"][1]
        s = await trio.open_tcp_stream("127.0.0.1", rport)
        data = pattern(300_000)
        assert await roundtrip(s, data) == data
        (rec,) = await app.wait_streams(1)
        assert rec.header.host == "esx-test"
        assert (rec.header.vm, rec.header.kind, rec.header.label) == ("vm1", "tcp", "serial0")
        assert rec.header.stream_id
        # Live: counted while the stream is still open, in the scrape too.
        assert d.metrics.bytes_total("vm1-com1", TO_APPLIANCE) == len(data)
        assert d.metrics.bytes_total("vm1-com1", TO_VM) == len(data)
        assert d.metrics.active("vm1-com1") == 1
        assert d.metrics_port
        text = await _http_get(d.metrics_port, "/metrics")
        assert (
            f'relay_bytes_total{{direction="to_appliance",listener="vm1-com1"}} {float(len(data))}'
            in text
        )
        assert 'relay_streams_active{listener="vm1-com1"} 1.0' in text
        assert 'relay_streams_opened_total{listener="vm1-com1"} 1.0' in text
        # splice or copy is the pump's call (per burst); the stream is counted once.
        modes = [
            line for line in text.splitlines() if line.startswith("relay_streams_active_by_mode{")
        ]
        assert sorted(float(m.split()[-1]) for m in modes) == [0.0, 1.0]
        await s.aclose()
        await rec.closed.wait()
        await d.terminate()
        await d.stopped.wait()
        assert d.metrics.active() == 0
        assert d.metrics.bytes_total("vm1-com1", TO_APPLIANCE) == len(data)
        closed = d.metrics.closed_by_mode
        assert closed.labels("splice")._value.get() + closed.labels("copy")._value.get() == 1
        n.cancel_scope.cancel()


async def test_reload_under_live_traffic(tmp_path: Path) -> None:
    app = Appliance()
    async with trio.open_nursery() as n:
        port = await app.serve_tcp(n)
        a = TcpListener(name="a", vm="vm-a", port=0)
        b = TcpListener(name="b", vm="vm-b", port=0)
        cfg = relay_config(tcp_egress(port), tcp=(a, b))
        cfg_file = tmp_path / "relay.toml"
        cfg_file.write_text("this is not toml =")
        d = await start_relay(n, cfg, config_path=cfg_file)
        pa, pb = d.bound["a"][1], d.bound["b"][1]
        sa = await trio.open_tcp_stream("127.0.0.1", pa)
        sb = await trio.open_tcp_stream("127.0.0.1", pb)
        full_a, full_b = pattern(400_000, 1), pattern(400_000, 2)
        assert await roundtrip(sa, full_a[:200_000]) == full_a[:200_000]
        assert await roundtrip(sb, full_b[:200_000]) == full_b[:200_000]

        # A bad file on SIGHUP keeps everything as it was.
        assert not await d.reload()
        assert d.metrics.reloads.labels("error")._value.get() == 1
        assert d.bound["a"][1] == pa and d.bound["b"][1] == pb

        # Keep a, drop b, add c; the live streams on a and b carry on.
        c = TcpListener(name="c", vm="vm-c", port=0)
        assert await d.reload(
            relay_config(tcp_egress(port), tcp=(a, c), limits=LimitsConfig(max_streams=50))
        )
        assert set(d.bound) == {"a", "c"} and d.bound["a"][1] == pa
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", pb)
        sc = await trio.open_tcp_stream("127.0.0.1", d.bound["c"][1])
        assert await roundtrip(sc, b"new listener") == b"new listener"
        sa2 = await trio.open_tcp_stream("127.0.0.1", pa)
        assert await roundtrip(sa2, b"unchanged listener") == b"unchanged listener"
        assert await roundtrip(sa, full_a[200_000:]) == full_a[200_000:]
        assert await roundtrip(sb, full_b[200_000:]) == full_b[200_000:]
        for s in (sa, sb, sc, sa2):
            await s.aclose()
        recs = {
            r.header.vm: r for r in await app.wait_streams(4) if r.header.vm in ("vm-a", "vm-b")
        }
        for r in app.streams:
            await r.closed.wait()
        assert bytes(app.streams[0].data) == full_a and bytes(app.streams[1].data) == full_b
        assert recs["vm-b"].header.label == "serial0"
        n.cancel_scope.cancel()


async def test_drain_finishes_live_streams_then_cuts_at_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = Appliance()
    async with trio.open_nursery() as n:
        port = await app.serve_tcp(n)
        cfg = relay_config(
            tcp_egress(port),
            tcp=(TcpListener(name="t", vm="vm", port=0),),
            timeouts=TimeoutsConfig(drain=1.0),
        )
        d = await start_relay(n, cfg)
        rport = d.bound["t"][1]
        finishing = await trio.open_tcp_stream("127.0.0.1", rport)
        lingering = await trio.open_tcp_stream("127.0.0.1", rport)
        assert await roundtrip(finishing, b"one") == b"one"
        assert await roundtrip(lingering, b"two") == b"two"
        await d.terminate()
        # No new streams...
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", rport)
        # ...but live ones keep moving bytes until they finish.
        data = pattern(500_000, 3)
        assert await roundtrip(finishing, data) == data
        await finishing.aclose()
        await app.streams[0].closed.wait()
        assert bytes(app.streams[0].data) == b"one" + data
        # The one that never finishes is cut at the deadline.
        assert await wait_closed(lingering, timeout=10) == b""
        await d.stopped.wait()
        assert any("cut at the drain deadline" in r.getMessage() for r in caplog.records)
        n.cancel_scope.cancel()


async def test_per_vm_limit_refusal_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    app = Appliance()
    async with trio.open_nursery() as n:
        port = await app.serve_tcp(n)
        cfg = relay_config(
            tcp_egress(port),
            tcp=(TcpListener(name="t", vm="vm", port=0),),
            limits=LimitsConfig(max_streams_per_vm=2),
        )
        d = await start_relay(n, cfg)
        rport = d.bound["t"][1]
        ok = [await trio.open_tcp_stream("127.0.0.1", rport) for _ in range(2)]
        for s in ok:
            assert await roundtrip(s, b"x") == b"x"
        extra = await trio.open_tcp_stream("127.0.0.1", rport)
        assert await wait_closed(extra) == b""
        assert d.metrics.refused.labels("t", "max-streams-per-vm")._value.get() == 1
        lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert len(lines) == 1 and "max-streams-per-vm" in lines[0] and "vm=vm" in lines[0]
        await ok[0].aclose()
        with trio.fail_after(10):
            await d.wait_active_at_most(1)
        again = await trio.open_tcp_stream("127.0.0.1", rport)  # room again
        assert await roundtrip(again, b"y") == b"y"
        n.cancel_scope.cancel()


@pytest.mark.slow
async def test_thousand_connections_at_once(caplog: pytest.LogCaptureFixture) -> None:
    """1,000 connections arrive together against max-streams = 40: each is served
    or gets a log line and a close; two live streams beside them stay byte-exact."""
    app = Appliance()
    async with trio.open_nursery() as n:
        port = await app.serve_tcp(n)
        cfg = relay_config(
            tcp_egress(port),
            tcp=(
                TcpListener(name="live", vm="vm-live", port=0),
                TcpListener(name="flood", vm="", port=0),
            ),
            limits=LimitsConfig(
                max_streams=40, max_streams_per_vm=40, accept_rate=1e6, accept_burst=100_000
            ),
        )
        d = await start_relay(n, cfg)
        live = [await trio.open_tcp_stream("127.0.0.1", d.bound["live"][1]) for _ in range(2)]
        served, closed = await _flood(d.bound["flood"][1], live)
        assert served + closed == 1000
        refused = sum(
            s.value
            for m in d.metrics.refused.collect()
            for s in m.samples
            if s.name.endswith("_total")
        )
        assert served <= 38 and closed == refused >= 1000 - 38
        lines = [r for r in caplog.records if "refused: max-streams" in r.getMessage()]
        assert len(lines) == refused
        for s in live:
            await s.aclose()
        for r in app.streams:
            with trio.fail_after(30):  # a bound for a loaded machine, not a wait
                await r.closed.wait()
        live_recs = [r for r in app.streams if r.header.vm == "vm-live"]
        assert sorted(bytes(r.data) for r in live_recs) == sorted(
            pattern(2_000_000, k) for k in range(2)
        )
        n.cancel_scope.cancel()


async def _flood(flood_port: int, live: list[trio.SocketStream]) -> tuple[int, int]:
    """1,000 clients at once on ``flood_port`` while ``live`` carry 2 MB each;
    returns (served, closed) once every client has its answer."""
    served = 0
    closed = 0
    all_answered = trio.Event()

    async def client(i: int) -> None:
        nonlocal served, closed
        s = await trio.open_tcp_stream("127.0.0.1", flood_port)
        msg = b"hello %d" % i
        try:
            await s.send_all(msg)
            got = await wait_closed_or(s, len(msg))
        except trio.BrokenResourceError:
            got = b""
        if got == msg:
            served += 1
        else:
            assert got == b""
            closed += 1
        if served + closed == 1000:
            all_answered.set()
        await all_answered.wait()  # served ones hold their slot until the end
        await s.aclose()

    async def live_traffic(s: trio.abc.Stream, seed: int) -> None:
        data = pattern(2_000_000, seed)
        for i in range(0, len(data), 100_000):
            assert await roundtrip(s, data[i : i + 100_000]) == data[i : i + 100_000]

    with trio.fail_after(120):
        async with trio.open_nursery() as flood:
            for k, s in enumerate(live):
                flood.start_soon(live_traffic, s, k)
            for i in range(1000):
                flood.start_soon(client, i)
    return served, closed


async def wait_closed_or(s: trio.abc.Stream, n: int) -> bytes:
    """Read n bytes, or until the peer closes."""
    got = b""
    with trio.fail_after(60):
        while len(got) < n:
            chunk = await s.receive_some(n - len(got))
            if not chunk:
                break
            got += chunk
    return got


def _write_cfg(path: Path, app_port: int, listeners: list[tuple[str, int]]) -> None:
    text = (
        f'host = "esx-proc"\n[egress.default]\nkind = "tcp"\nhost = "127.0.0.1"\n'
        f"port = {app_port}\n[metrics]\nenabled = false\n[timeouts]\ndrain = 20.0\n"
    )
    for name, port in listeners:
        text += f'[[tcp]]\nname = "{name}"\nvm = "{name}"\nport = {port}\n'
    path.write_text(text)


class _Notify:
    """The sd_notify socket a daemon process reports to, and the states it sent."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_DGRAM)
        self.states: list[str] = []

    async def bind(self) -> _Notify:
        await self.sock.bind(str(self.path))
        return self

    async def expect(self, state: str) -> None:
        with trio.fail_after(30):
            while state not in self.states:
                self.states.extend((await self.sock.recv(4096)).decode().splitlines())
            self.states.remove(state)


async def test_process_sighup_sigterm_sd_notify(tmp_path: Path) -> None:
    """The real `vic relay` process: READY, SIGHUP -> RELOADING/READY with a new
    listener and the live stream intact, WATCHDOG pings, SIGTERM -> STOPPING and
    a drain that lets the live stream finish byte-exact, exit 0."""
    app = Appliance()
    notify = await _Notify(tmp_path / "notify.sock").bind()
    cfg_path = tmp_path / "relay.toml"
    data = pattern(600_000, 5)
    p1 = free_port()
    async with trio.open_nursery() as n:
        aport = await app.serve_tcp(n)
        _write_cfg(cfg_path, aport, [("one", p1)])
        env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "200000"}
        proc = await n.start(
            functools.partial(
                trio.run_process,
                [sys.executable, "-m", "vic.cli", "relay", "--config", str(cfg_path)],
                env=env,
                cwd=ROOT,
                check=False,
            )
        )
        try:
            await _reload_and_drain(proc, notify, cfg_path, (aport, p1), data)
        finally:
            if proc.returncode is None:
                proc.kill()
        rec = next(r for r in app.streams if r.header.vm == "one")
        await rec.closed.wait()
        assert rec.header.host == "esx-proc" and bytes(rec.data) == data
        n.cancel_scope.cancel()


async def _reload_and_drain(
    proc: trio.Process, notify: _Notify, cfg_path: Path, ports: tuple[int, int], data: bytes
) -> None:
    """Stream ``data`` through listener "one" (``ports``: the appliance's, its own)
    across a SIGHUP (adding "two") and a SIGTERM; the process exits 0 once the
    stream is closed."""
    aport, p1 = ports
    p2 = free_port()
    await notify.expect("READY=1")
    await notify.expect("WATCHDOG=1")
    s1 = await trio.open_tcp_stream("127.0.0.1", p1)
    assert await roundtrip(s1, data[:200_000]) == data[:200_000]

    _write_cfg(cfg_path, aport, [("one", p1), ("two", p2)])
    proc.send_signal(signal.SIGHUP)
    await notify.expect("RELOADING=1")
    await notify.expect("READY=1")
    s2 = await trio.open_tcp_stream("127.0.0.1", p2)
    assert await roundtrip(s2, b"after reload") == b"after reload"
    assert await roundtrip(s1, data[200_000:400_000]) == data[200_000:400_000]
    await s2.aclose()

    proc.send_signal(signal.SIGTERM)
    await notify.expect("STOPPING=1")
    assert await roundtrip(s1, data[400_000:]) == data[400_000:]  # drain: still flowing
    await s1.aclose()
    with trio.fail_after(30):
        rc = await proc.wait()
    assert rc == 0


async def test_silent_peer_closed_by_idle_timeout(caplog: pytest.LogCaptureFixture) -> None:
    """A peer that connects and never sends is closed after the idle timeout, with a
    log line and a count; a busy stream beside it is untouched."""
    caplog.set_level("INFO", logger="relay")
    app = Appliance()
    async with trio.open_nursery() as n:
        port = await app.serve_tcp(n)
        cfg = relay_config(
            tcp_egress(port),
            tcp=(TcpListener(name="t", vm="vm", port=0),),
            timeouts=TimeoutsConfig(idle=0.5, drain=1.0),
        )
        d = await start_relay(n, cfg)
        rport = d.bound["t"][1]
        silent = await trio.open_tcp_stream("127.0.0.1", rport)
        busy = await trio.open_tcp_stream("127.0.0.1", rport)

        async def keep_busy() -> None:
            for i in range(40):
                chunk = pattern(5_000, i)
                assert await roundtrip(busy, chunk) == chunk
                await trio.sleep(0.05)  # traffic pacing (not synchronisation)

        async with trio.open_nursery() as inner:
            inner.start_soon(keep_busy)
            assert await wait_closed(silent) == b""
        assert d.metrics.failed.labels("t", "idle")._value.get() == 1
        assert any("idle" in r.getMessage() and "vm=vm" in r.getMessage() for r in caplog.records)
        assert d.active_streams() == 1
        await busy.aclose()
        n.cancel_scope.cancel()


async def test_reload_moves_the_metrics_server() -> None:
    app = Appliance()
    async with trio.open_nursery() as n:
        port = await app.serve_tcp(n)
        cfg = relay_config(tcp_egress(port), metrics=MetricsConfig(enabled=True, port=0))
        d = await start_relay(n, cfg)
        first = d.metrics_port
        assert first and "relay_reloads" in await _http_get(first, "/metrics")
        new_port = free_port()
        assert await d.reload(
            relay_config(tcp_egress(port), metrics=MetricsConfig(enabled=True, port=new_port))
        )
        assert d.metrics_port == new_port
        assert 'relay_reloads_total{result="ok"} 1.0' in await _http_get(new_port, "/metrics")
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", first)
        n.cancel_scope.cancel()


async def test_accept_rate_refusal(caplog: pytest.LogCaptureFixture) -> None:
    app = Appliance()
    async with trio.open_nursery() as n:
        port = await app.serve_tcp(n)
        cfg = relay_config(
            tcp_egress(port),
            tcp=(TcpListener(name="t", vm="vm", port=0),),
            limits=LimitsConfig(accept_rate=0.001, accept_burst=2),
        )
        d = await start_relay(n, cfg)
        rport = d.bound["t"][1]
        ok = [await trio.open_tcp_stream("127.0.0.1", rport) for _ in range(2)]
        for s in ok:
            assert await roundtrip(s, b"in") == b"in"
        late = await trio.open_tcp_stream("127.0.0.1", rport)
        assert await wait_closed(late) == b""
        assert d.metrics.refused.labels("t", "accept-rate")._value.get() == 1
        assert any("refused: accept-rate" in r.getMessage() for r in caplog.records)
        n.cancel_scope.cancel()
