"""Relay metrics say what happened: real relays (TLS peer links from our own CA)
through a link cut and resume, TLS refusals (a certificate from another CA), a
stream that fails (no path to its peer), a refused origin header; the counters
are read from the relay's registry and over its Prometheus endpoint."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from common.io import certs
from common.link.config import LinkTuning
from common.link.tls import TlsFiles
from relay.config import MetricsConfig
from relay.daemon import RelayDaemon
from tests.relay.meshfix import (
    deliver_pair,
    echo_with_cuts,
    egress_cfg,
    ingress_cfg,
    pair_through_proxy,
    peer_address,
    stream_through,
)
from tests.relay.pki_helpers import Pki
from tests.relay.relayfix import Appliance, pattern, roundtrip, start_relay
from tests.support.daemons import scrape_metrics
from tests.support.waiting import wait_until

FAST = LinkTuning(ping_interval=1.0, dead_after=5.0, resume_timeout=20.0)


def value(d: RelayDaemon, name: str, **labels: str) -> float:
    v = d.metrics.registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


async def wait_value(d: RelayDaemon, name: str, at_least: float, **labels: str) -> None:
    """Until the sample reaches ``at_least`` (the caller's deadline)."""
    await wait_until(lambda: value(d, name, **labels) >= at_least, None)


async def test_link_cut_and_resume_are_counted_and_every_byte_delivered(tmp_path: Path) -> None:
    app = Appliance()
    async with trio.open_nursery() as n:
        a, b, proxy = await pair_through_proxy(
            n, tmp_path, app, metrics=MetricsConfig(host="127.0.0.1", port=0)
        )
        s = await stream_through(a, "vm1")
        data = pattern(3_000_000, 3)
        with trio.fail_after(60):
            assert await echo_with_cuts(s, proxy, data, [1_000_000], eof=True) == data
            await wait_value(a, "relay_streams_ended_total", 1, outcome="completed")
            await wait_value(b, "relay_streams_ended_total", 1, outcome="completed")
        for d in (a, b):
            assert value(d, "relay_link_cuts_total") >= 1
            assert value(d, "relay_resumes_total") >= 1
            for direction in ("to_appliance", "to_vm"):
                assert value(
                    d, "relay_bytes_delivered_total", outcome="completed", direction=direction
                ) == len(data)
            assert value(d, "relay_streams_ended_total", outcome="failed") == 0
        assert a.metrics_port is not None
        scraped = await scrape_metrics("127.0.0.1", a.metrics_port)
        assert scraped[("relay_link_cuts_total", ())] >= 1
        assert scraped[("relay_resumes_total", ())] >= 1
        assert scraped[
            (
                "relay_bytes_delivered_total",
                (("direction", "to_appliance"), ("outcome", "completed")),
            )
        ] == len(data)
        n.cancel_scope.cancel()


def _foreign(pki: Pki, other: Pki, name: str) -> TlsFiles:
    """A certificate from ``other``'s CA, trusting ``pki``'s CA."""
    f = other.issue("host", name)
    return TlsFiles(f.cert, f.key, pki.root / certs.CA_CERT)


@pytest.mark.parametrize(
    ("wrong", "reason"),
    [("client", "unknown_ca"), ("server", "unknown_ca"), ("expired", "expired")],
)
async def test_tls_refusal_is_counted_with_its_reason_and_address_and_the_stream_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, wrong: str, reason: str
) -> None:
    """One relay's certificate comes from another CA (or has expired): the relay that
    checks it counts the reason and logs the remote address, the other counts
    ``refused_by_peer``; the VM's stream, which never finds a path, fails after
    resume-timeout and is counted as failed."""
    caplog.set_level(logging.WARNING)
    pki, other = Pki(tmp_path / "ca"), Pki(tmp_path / "other")
    app = Appliance()
    quick = replace(FAST, resume_timeout=1.0)
    async with trio.open_nursery() as n:
        await app.serve_tcp(n)
        b_files = _foreign(pki, other, "esx-b") if wrong == "server" else pki.issue("host", "esx-b")
        b = await start_relay(n, egress_cfg("esx-b", b_files, app.port, ["vic://host/esx-a"]))
        a_files = (
            _foreign(pki, other, "esx-a")
            if wrong == "client"
            else pki.expired("host", "esx-a")
            if wrong == "expired"
            else pki.issue("host", "esx-a")
        )
        a_cfg = ingress_cfg("esx-a", a_files, peer_address(b), "vic://host/esx-b")
        assert a_cfg.peer is not None
        a = await start_relay(n, replace(a_cfg, peer=replace(a_cfg.peer, link=quick)))
        vm = await stream_through(a, "vm1")
        checker, refused = (a, b) if wrong == "server" else (b, a)
        with trio.fail_after(30):
            await vm.send_all(b"hello")
            await wait_value(checker, "relay_tls_refused_total", 1, reason=reason)
            # the refused side learns it from the checker's alert
            await wait_value(refused, "relay_tls_refused_total", 1, reason="refused_by_peer")
            while await vm.receive_some(100):  # the relay closes the VM side
                pass
            await wait_value(a, "relay_streams_ended_total", 1, outcome="failed")
        assert value(a, "relay_streams_failed_total", listener="vm1", reason="resume_timeout") == 1
        assert (
            value(a, "relay_bytes_delivered_total", outcome="failed", direction="to_appliance") == 0
        )
        assert value(a, "relay_link_cuts_total") == 0  # never a working link
        assert app.streams == []
        lines = [r.getMessage() for r in caplog.records if "refused peer link" in r.getMessage()]
        assert any("127.0.0.1:" in x and reason in x for x in lines), lines
        n.cancel_scope.cancel()


async def test_refused_header_is_counted_by_reason(tmp_path: Path) -> None:
    app = Appliance()
    async with trio.open_nursery() as n:
        liar, b = await deliver_pair(n, tmp_path, app, host="esx-z")
        vm = await stream_through(liar, "vm1")
        with trio.fail_after(20):
            await vm.send_all(b"forged")
            await wait_value(b, "relay_headers_refused_total", 1, reason="foreign_host")
        assert value(b, "relay_headers_refused_total", reason="malformed") == 0
        assert app.streams == []
        n.cancel_scope.cancel()


async def test_a_reset_stream_is_counted_as_reset(tmp_path: Path) -> None:
    """The VM resets its connection mid-stream: outcome reset, not failed."""
    import socket
    import struct

    app = Appliance()
    async with trio.open_nursery() as n:
        a, _ = await deliver_pair(n, tmp_path, app)
        vm = await stream_through(a, "vm1")
        with trio.fail_after(20):
            assert await roundtrip(vm, b"x" * 1000) == b"x" * 1000
            vm.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await vm.aclose()  # RST
            await wait_value(a, "relay_streams_ended_total", 1, outcome="reset")
        assert value(a, "relay_streams_ended_total", outcome="failed") == 0
        assert (
            value(a, "relay_bytes_delivered_total", outcome="reset", direction="to_appliance")
            == 1000
        )
        n.cancel_scope.cancel()
