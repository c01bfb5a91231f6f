"""The agent's simulated hypervisor channel through govmomi's vCenter simulator, and the
appliance watcher riding out a vCenter restart."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from common.proto import guestinfo as gi
from guestagent.agent import Agent
from guestagent.config import (
    AgentConfig,
    AgentSection,
    ConsoleConfig,
    GuestinfoConfig,
    NetworkConfig,
)
from tests.support.waiting import wait_until_async
from vspc.guestinfo_vsphere import VSphereWatcher
from vspc.guestinfo_watch import (
    configure_session,
    send_signal,
    wait_for_exit,
    wait_for_started,
)

from .conftest import VCSIM

VM = "DC0_C0_RP0_VM0"


async def test_agent_over_vcsim(vcsim_url: str) -> None:
    watcher = VSphereWatcher(vcsim_url)
    cfg = AgentConfig(
        guestinfo=GuestinfoConfig(backend="vsphere", url=vcsim_url, vm=VM, poll_interval=0.05),
        console=ConsoleConfig(transport="none"),
        network=NetworkConfig(publish=False),
        agent=AgentSection(subreaper=False),
    )
    prog = "trap 'exit 21' TERM; while :; do sleep 0.05; done"
    try:
        await configure_session(
            watcher, VM, gi.SessionConfig(id="v1", path="/bin/sh", args=("sh", "-c", prog))
        )
        with trio.fail_after(60):
            async with trio.open_nursery() as n:
                agent = Agent(cfg)
                await n.start(agent.run)
                await wait_for_started(watcher, VM, "v1", 60)
                assert await send_signal(watcher, VM, "v1", "SIGTERM", timeout=60) == 1
                info = await wait_for_exit(watcher, VM, "v1", 60)
                n.cancel_scope.cancel()
        assert info.status == 21
    finally:
        await watcher.aclose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _vcsim(port: int) -> tuple[subprocess.Popen[str], str]:
    p = subprocess.Popen(
        [str(VCSIM), "-l", f"127.0.0.1:{port}", "-stdin-eof"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert p.stdout is not None
    m = re.match(r"VCSIM_URL=(\S+)", p.stdout.readline())
    assert m, "vcsim did not start"
    return p, m.group(1)


def _stop(p: subprocess.Popen[str]) -> None:
    if p.stdin:
        p.stdin.close()
    p.terminate()
    p.wait(10)


@pytest.fixture
def private_vcsim() -> Iterator[int]:
    if not os.access(VCSIM, os.X_OK):
        pytest.skip("vcsim not built: run scripts/build-vcsim")
    yield _free_port()


async def test_watcher_reconnects_after_vcenter_restart(private_vcsim: int, tmp_path: Path) -> None:
    port = private_vcsim
    p1, url = await trio.to_thread.run_sync(_vcsim, port)
    p2 = None
    watcher = VSphereWatcher(url, backoff=(0.05, 0.5))
    try:
        with trio.fail_after(60):
            async with watcher.watch(VM) as w:
                first = await w.next()
                assert first.power == "poweredOn"
                await trio.to_thread.run_sync(_stop, p1)
                p2, url2 = await trio.to_thread.run_sync(_vcsim, port)
                assert url2 == url

                async def written() -> bool:  # the appliance's writer reconnects too
                    try:
                        await watcher.write(VM, {gi.started_key("r"): "true"})
                    except Exception:
                        return False
                    return True

                await wait_until_async(written, None, "a write after vcsim's restart")
                while True:
                    st = await w.next()
                    if st.values.get(gi.started_key("r")) == "true":
                        break
                assert w.reconnects >= 1  # type: ignore[attr-defined]
    finally:
        await watcher.aclose()
        for p in (p1, p2):
            if p is not None and p.poll() is None:
                _stop(p)
