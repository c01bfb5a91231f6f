"""The session metrics of a real `vic vspc` on its /metrics, after real execs through
`vic console exec` and a tether (real processes); a wrong secret's refusal by code."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from common.proto.link.header import OriginHeader, encode_header
from tests.support.daemons import Samples, metric_sum, scrape_metrics
from tests.vspc.sessions_tether import Tether
from tests.vspc.test_sessions_cli import VM, _follow_until, console, tethered
from tests.vspc.test_vspc_ops import HOST, VspcDaemon


async def _scrape(d: VspcDaemon) -> Samples:
    return await scrape_metrics(HOST, d.metrics_port)


def _value(s: Samples, name: str, **labels: str) -> float:
    return metric_sum(s, name, **labels)


@pytest.mark.trio
async def test_session_metrics_after_execs(tmp_path: Path) -> None:
    async with tethered(tmp_path) as (d, _):
        await _follow_until(tmp_path, b"three\n")  # the main process's 3 lines, 14 bytes
        r = await console(tmp_path, "exec", VM, "--", "sh", "-c", "echo out; echo err >&2; exit 5")
        assert r.returncode == 5, r
        r = await console(tmp_path, "exec", VM, "-i", "--", "cat", stdin=b"abc")
        assert (r.returncode, r.stdout) == (0, b"abc"), r
        r = await console(tmp_path, "exec", VM, "--", "/no/such/program")
        assert r.returncode == 126, r

        s = await _scrape(d)
        assert _value(s, "vspc_sessions_connected") == 1
        assert _value(s, "vspc_session_connections_total", event="established") == 1
        assert _value(s, "vspc_session_connections_total", event="eof") == 0
        assert _value(s, "vspc_session_execs_started_total") == 3
        assert _value(s, "vspc_session_execs_finished_total", outcome="exited") == 2
        assert _value(s, "vspc_session_execs_finished_total", outcome="refused") == 1
        inbound = _value(s, "vspc_session_bytes_total", direction="tether_to_appliance")
        assert inbound == 14 + len(b"out\nerr\n") + len(b"abc")
        assert _value(s, "vspc_session_bytes_total", direction="appliance_to_tether") == 3
        assert _value(s, "vspc_container_log_lines_total", stream="stdout") == 3
        assert _value(s, "vspc_container_log_lines_total", stream="stderr") == 0
        assert _value(s, "vspc_container_log_lost_lines_total") == 0

        # a tether with the wrong secret: refused by code, counted by how it ended
        wrong = Tether(lambda: (b"w" * 32,))
        stream = await trio.open_unix_socket(str(tmp_path / "endpoint.sock"))
        header = OriginHeader(host="esx1", vm=VM, kind="pipe", label="session")
        await stream.send_all(encode_header(header))
        with trio.fail_after(20):
            await wrong.ep.run_connection(stream, handshake_timeout=10)
            while _value(s, "vspc_session_refusals_total", code="auth") < 1:
                s = await _scrape(d)  # a real round trip each time: the daemon records it
        assert _value(s, "vspc_session_connections_total", event="refused") == 1
        # the refused connection never took the session from the good one
        assert _value(s, "vspc_session_connections_total", event="replaced") == 0
        assert _value(s, "vspc_sessions_connected") == 1
