"""Every daemon's metrics server as an operator scrapes it: real ``vic relay`` and
``vic vspc`` processes answer /healthz, /readyz and /metrics with the process and
platform collectors, ``vic_channel_build_info`` and no ``_created`` series; /readyz
turns 503 while a relay or a vSPC drains (in-process, a connection held open) or the
relay's last egress connect failed, and /healthz does not."""

from __future__ import annotations

import platform
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client import CollectorRegistry

from common.ops.metrics_http import respond
from common.ops.version import version
from relay.config import MetricsConfig, TimeoutsConfig
from relay.ingress_config import TcpListener
from tests.hostile.appliance import vspc_config
from tests.relay.relayfix import Appliance, relay_config, roundtrip, start_relay, tcp_egress
from tests.support.daemons import free_port, run_daemon
from tests.support.waiting import wait_until
from tests.vspc.conftest import make_config
from vspc.service import VspcService


async def http_get(port: int, path: str) -> tuple[int, str]:
    s = await trio.open_tcp_stream("127.0.0.1", port)
    async with s:
        await s.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        raw = bytearray()
        with trio.fail_after(10):
            while chunk := await s.receive_some(65536):
                raw += chunk
    head, _, body = bytes(raw).partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def relay_process_config(workdir: Path) -> dict[str, Any]:
    return {
        "host": "esx-m",
        "egress": {"default": {"kind": "tcp", "host": "127.0.0.1", "port": free_port()}},
        "tcp": [{"name": "vm1-com1", "vm": "vm-1", "port": free_port()}],
        "metrics": {"host": "127.0.0.1", "port": free_port()},
    }


@pytest.mark.parametrize("program", ["relay", "vspc"])
async def test_daemon_serves_health_readiness_and_standard_metrics(
    tmp_path: Path, program: str
) -> None:
    config = relay_process_config(tmp_path) if program == "relay" else vspc_config(tmp_path)
    port = int(config["metrics"]["port"])
    async with run_daemon(program, tmp_path, config):
        assert await http_get(port, "/healthz") == (200, "ok\n")
        assert await http_get(port, "/readyz") == (200, "ready\n")
        assert (await http_get(port, "/nope"))[0] == 404
        status, text = await http_get(port, "/metrics")
    assert status == 200
    build = f'vic_channel_build_info{{python="{platform.python_version()}",version="{version()}"}}'
    assert f"{build} 1.0" in text.splitlines()
    for family in ("process_resident_memory_bytes", "process_open_fds", "python_info"):
        assert any(line.startswith(family) for line in text.splitlines()), family
    assert "_created" not in text
    counters = [line for line in text.splitlines() if line.startswith("# TYPE ")]
    assert any(line.endswith(" counter") for line in counters)  # there were counters to double


async def test_relay_not_ready_while_draining_but_healthy() -> None:
    app = Appliance()
    async with trio.open_nursery() as n:
        cfg = relay_config(
            tcp_egress(await app.serve_tcp(n)),
            tcp=(TcpListener(name="t", vm="vm", port=0),),
            metrics=MetricsConfig(enabled=True, port=0),
            timeouts=TimeoutsConfig(drain=30.0),
        )
        d = await start_relay(n, cfg)
        assert d.metrics_port is not None
        assert await http_get(d.metrics_port, "/readyz") == (200, "ready\n")
        held = await trio.open_tcp_stream("127.0.0.1", d.bound["t"][1])
        assert await roundtrip(held, b"x") == b"x"
        await d.terminate()  # drains: the held stream keeps the relay (and its metrics) up
        assert await http_get(d.metrics_port, "/readyz") == (503, "not ready: draining\n")
        assert await http_get(d.metrics_port, "/healthz") == (200, "ok\n")
        await held.aclose()
        await d.stopped.wait()
        n.cancel_scope.cancel()


def test_readyz_names_the_reason_and_defaults_to_ready() -> None:
    r = CollectorRegistry()
    assert respond(r, b"/readyz", None).startswith(b"HTTP/1.1 200 OK\r\n")
    out = respond(r, b"/readyz?verbose", lambda: "starting")
    assert out.startswith(b"HTTP/1.1 503 ")
    assert out.endswith(b"\r\n\r\nnot ready: starting\n")


async def test_relay_not_ready_while_its_egress_is_unreachable() -> None:
    app = Appliance()
    quick = TimeoutsConfig(connect=0.5, drain=5.0, retry_min=0.01, retry_max=0.05)
    async with trio.open_nursery() as n:
        cfg = relay_config(
            tcp_egress(free_port()),  # nothing listens there
            tcp=(TcpListener(name="t", vm="vm", port=0),),
            metrics=MetricsConfig(enabled=True, port=0),
            timeouts=quick,
        )
        d = await start_relay(n, cfg)
        assert d.metrics_port is not None
        assert await http_get(d.metrics_port, "/readyz") == (200, "ready\n")  # not tried yet
        lost = await trio.open_tcp_stream("127.0.0.1", d.bound["t"][1])
        with trio.fail_after(10):
            assert await lost.receive_some(1) == b""  # the relay gave up on its egress
        status, text = await http_get(d.metrics_port, "/readyz")
        assert (status, text) == (503, "not ready: egress unreachable from 1 listener(s)\n")
        metrics = (await http_get(d.metrics_port, "/metrics"))[1]
        assert 'relay_egress_reachable{listener="t"} 0.0' in metrics.splitlines()
        # The appliance comes up: the next stream gets through and the relay is ready.
        assert await d.reload(replace(cfg, egress={"default": tcp_egress(await app.serve_tcp(n))}))
        s = await trio.open_tcp_stream("127.0.0.1", d.bound["t"][1])
        assert await roundtrip(s, b"y") == b"y"
        assert await http_get(d.metrics_port, "/readyz") == (200, "ready\n")
        metrics = (await http_get(d.metrics_port, "/metrics"))[1]
        assert 'relay_egress_reachable{listener="t"} 1.0' in metrics.splitlines()
        n.cancel_scope.cancel()


async def test_vspc_not_ready_while_draining_but_healthy(tmp_path: Path) -> None:
    async with trio.open_nursery() as n:
        service: VspcService = await n.start(VspcService(make_config(tmp_path)).run)
        port = service.metrics_port
        assert port is not None and service.esx_port is not None
        assert await http_get(port, "/readyz") == (200, "ready\n")
        held = await trio.open_tcp_stream("127.0.0.1", service.esx_port)  # an ESX connection
        await wait_until(lambda: service._conns, 10)
        n.start_soon(service.drain, trio.current_time() + 30)  # waits for the held one
        await wait_until(lambda: service._draining, 10)
        assert await http_get(port, "/readyz") == (503, "not ready: draining\n")
        assert await http_get(port, "/healthz") == (200, "ok\n")
        await held.aclose()
        await wait_until(lambda: not service._conns, 10)
        n.cancel_scope.cancel()
