"""The agent's own metrics (``[metrics]``, off by default): a real ``vic agent`` process
runs a session whose console drops once, and its /metrics count the console bytes and
the reconnect; an agent whose guestinfo cannot be written counts the failures; a port
that cannot be bound costs the metrics, not the agent."""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import IO

import trio
import trio.testing

from common.ops.config import build
from common.proto import guestinfo as gi
from common.proto.session.messages import ExecSpec, ExitStatus
from guestagent.agent import Agent
from guestagent.config import AgentConfig, GuestinfoConfig, MetricsConfig, SessionSection
from tests.support.daemons import Samples, free_port, scrape_metrics
from tests.support.waiting import wait_until_async
from vspc.guestinfo_watch import FileStoreWatcher, configure_session, go_ahead

from .agent_helpers import Sink, agent_config
from .tether_helpers import Appliance as TetherAppliance
from .tether_helpers import write_secrets

ROOT = Path(__file__).resolve().parents[2]
SECRET = b"s" * 32
CONNS = "agent_session_connections_total"
OUTPUT = b"hi from vm7, a line long enough to be cut\r\n"


def _start(conf: Path, log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "vic.cli", "agent", "--config", str(conf)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )


async def scraped(port: int) -> Samples | None:
    try:
        return await scrape_metrics("127.0.0.1", port)
    except OSError:
        return None


def test_metrics_table_is_off_by_default_and_on_loopback() -> None:
    assert AgentConfig().metrics.enabled is False
    on = build(AgentConfig, {"metrics": {"enabled": True}}).metrics
    assert (on.enabled, on.host, on.port) == (True, "127.0.0.1", 9472)


async def test_agent_process_counts_console_bytes_and_reconnects(tmp_path: Path) -> None:
    port = free_port()
    conf = tmp_path / "agent.toml"
    conf.write_text(
        f'[guestinfo]\nbackend = "file"\npath = "{tmp_path / "vm7.json"}"\n'
        f'[console]\ntransport = "hybrid"\npath = "{tmp_path / "vm7.vsock"}"\nport = 1024\n'
        f"backoff-min = 0.01\n[network]\npublish = false\n"
        f'[metrics]\nenabled = true\nhost = "127.0.0.1"\nport = {port}\n'
    )
    sink = Sink(str(tmp_path / "vm7.vsock_1024"), max_per_connection=8, max_drops=1)
    w = FileStoreWatcher(tmp_path)
    await configure_session(
        w, "vm7", gi.SessionConfig(id="c7", path="/bin/sh", args=("sh", "-c", "cat"), tty=True,
                                   runblock=True),
    )  # fmt: skip
    log = (tmp_path / "agent.log").open("wb")
    agent = _start(conf, log)
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as n:
                await n.start(sink.serve)
                await go_ahead(w, "vm7", "c7")
                await wait_until_async(lambda: scraped(port), 20)
                await wait_until_async(lambda: _connected(sink), 20)
                st = sink.streams[0]
                await st.send_all(OUTPUT)  # the tty echoes it back: > 8 bytes, one drop

                async def counted() -> bool:
                    m = await scraped(port)
                    return (
                        m is not None
                        and m[("agent_console_reconnects_total", ())] >= 1
                        and m[("agent_console_bytes_total", (("direction", "to_appliance"),))]
                        >= len(OUTPUT)
                    )

                await wait_until_async(counted, 20)
                m = await scraped(port)
                assert m is not None
                assert m[("agent_console_bytes_total", (("direction", "from_appliance"),))] >= len(
                    OUTPUT
                )
                assert m[("agent_guestinfo_write_failures_total", ())] == 0
                assert any(name == "vic_channel_build_info" for name, _ in m)
                assert ("process_open_fds", ()) in m
                n.cancel_scope.cancel()
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(10) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        log.close()


async def _connected(sink: Sink) -> bool:
    await trio.lowlevel.checkpoint()
    return bool(sink.streams)


async def test_guestinfo_write_failures_are_counted(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")  # a file where the guestinfo directory should be
    cfg = agent_config(tmp_path, console="none")
    cfg = replace(
        cfg,
        guestinfo=GuestinfoConfig(backend="file", path=str(tmp_path / "file" / "vm1.json")),
        metrics=MetricsConfig(enabled=True, port=0),
    )
    agent = Agent(cfg)
    async with trio.open_nursery() as n:
        await n.start(agent.run)
        assert agent.metrics_port is not None

        async def failed() -> bool:
            m = await scraped(agent.metrics_port or 0)
            return m is not None and m[("agent_guestinfo_write_failures_total", ())] >= 1

        await wait_until_async(failed, 20)
        n.cancel_scope.cancel()


async def test_a_port_in_use_costs_the_metrics_not_the_agent(tmp_path: Path) -> None:
    taken = trio.socket.socket()
    await taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    cfg = replace(agent_config(tmp_path, console="none"), metrics=MetricsConfig(True, port=port))
    agent = Agent(cfg)
    async with trio.open_nursery() as n:
        await n.start(agent.run)
        assert agent.metrics_port is None
        assert agent.ready.is_set()
        n.cancel_scope.cancel()
    taken.close()


async def test_session_connections_counted_by_how_they_ended(tmp_path: Path) -> None:
    store = tmp_path / "vm1.json"
    write_secrets(str(store), SECRET)
    appliance = TetherAppliance(str(tmp_path / "session.sock"), SECRET)
    cfg = replace(
        agent_config(tmp_path, console="none"),
        session=SessionSection(enabled=True, transport="unix", path=appliance.path),
        metrics=MetricsConfig(enabled=True, port=0),
    )
    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            await n.start(appliance.serve)
            agent = Agent(cfg)
            await n.start(agent.run)
            port = agent.metrics_port
            assert port is not None
            assert (await appliance.exec(ExecSpec(("true",)))).status == ExitStatus(code=0)
            await appliance.cut()
            await appliance.wait_ends(1)

            async def counted() -> bool:
                m = await scraped(port)
                return m is not None and m[(CONNS, (("event", "established"),))] >= 2

            await wait_until_async(counted, 20)  # the tether connected again
            m = await scraped(port)
            assert m is not None
            ended = {lb: v for (name, lb), v in m.items() if name == CONNS}
            assert sum(v for lb, v in ended.items() if lb != (("event", "established"),)) >= 1
            n.cancel_scope.cancel()
