"""guestinfo limits hit while running (clear error, agent keeps going) and PID-1 reaping."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio

from common.proto import guestinfo as gi
from guestagent.agent import Agent
from guestagent.reaper import Reaper
from vspc.guestinfo_watch import FileStoreWatcher, configure_session, wait_for_exit

from .agent_helpers import agent_config


async def test_limit_exceeded_is_reported_and_agent_keeps_running(tmp_path: Path) -> None:
    w = FileStoreWatcher(tmp_path)
    store = w.store("vm1")
    cfg = agent_config(tmp_path, console="none")
    cfg = dataclasses.replace(
        cfg, guestinfo=dataclasses.replace(cfg.guestinfo, max_total=5000, max_value=4096)
    )
    # the appliance's config leaves almost no room: the launch error cannot be published
    longpath = "/no/such/" + "x" * 2500
    await configure_session(w, "vm1", gi.SessionConfig(id="big", path=longpath))
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            agent = Agent(cfg)
            await n.start(agent.run)
            await agent.publisher.wait_failures(1)
            assert re.search(r"limit is 5000 bytes per VM", agent.publisher.last_failure)
            assert gi.started_key("big") not in store.read().values
            # the appliance frees the space and asks for something else: the agent is alive
            store.update({k: None for k in store.read().values})
            await configure_session(w, "vm1", gi.SessionConfig(id="small", path="/bin/true"))
            assert (await wait_for_exit(w, "vm1", "small", 20)).status == 0
            n.cancel_scope.cancel()


async def test_reaper_exit_codes_and_signals() -> None:
    r = Reaper()
    async with trio.open_nursery() as n:
        await n.start(r.run)
        a = r.spawn(["sh", "-c", "exit 42"])
        b = r.spawn(["sh", "-c", "kill -TERM $$"])
        sa, sb = await a.wait(), await b.wait()
        rc, out, err = await r.run_capture(["sh", "-c", "echo out; echo err >&2; exit 3"])
        n.cancel_scope.cancel()
    assert (sa.code, sa.signal) == (42, None)
    assert (sb.code, sb.signal_name) == (143, "SIGTERM")
    assert (rc, out, err) == (3, b"out\n", b"err\n")
    assert a.popen.returncode == 42


def test_orphans_are_reaped_as_subreaper(tmp_path: Path) -> None:
    """In a separate process (subreaper is process-wide): grandchildren whose parent
    exits are reparented to the agent and reaped, leaving no zombie."""
    fifos = [tmp_path / "f1", tmp_path / "f2"]
    for f in fifos:
        os.mkfifo(f)
    script = textwrap.dedent(
        f"""
        import os, trio
        from guestagent.reaper import Reaper, set_child_subreaper
        assert set_child_subreaper()
        def zombies():
            out = []
            for p in filter(str.isdigit, os.listdir("/proc")):
                try:
                    rest = open(f"/proc/{{p}}/stat").read().rsplit(") ", 1)[1].split()
                except OSError:
                    continue
                if rest[0] == "Z" and int(rest[1]) == os.getpid():
                    out.append(p)
            return out
        async def main():
            r = Reaper()
            async with trio.open_nursery() as n:
                await n.start(r.run)
                script = "cat {fifos[0]} >/dev/null & cat {fifos[1]} >/dev/null & exit 0"
                c = r.spawn(["sh", "-c", script])
                await c.wait()  # the parent is gone; its two children are now ours
                for f in {[str(f) for f in fifos]!r}:
                    os.close(os.open(f, os.O_WRONLY))  # EOF: the orphan exits
                with trio.fail_after(10):
                    await r.wait_orphans(2)
                print("orphans", r.orphans_reaped, "zombies", len(zombies()))
                n.cancel_scope.cancel()
        trio.run(main)
        """
    )
    p = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert p.returncode == 0, p.stderr
    m = re.search(r"orphans (\d+) zombies (\d+)", p.stdout)
    assert m is not None and int(m.group(1)) == 2 and m.group(2) == "0", p.stdout


import re  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")
