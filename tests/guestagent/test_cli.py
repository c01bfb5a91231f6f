"""``vic agent``: config errors are one line naming the key (exit 2); a real agent
process runs a session with its console over hybrid vsock (how the lab starts a VM)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

from common.proto import guestinfo as gi
from vspc.guestinfo_watch import FileStoreWatcher, configure_session, go_ahead, wait_for_exit

from .agent_helpers import Sink

ROOT = Path(__file__).resolve().parents[2]


def _vic_agent(conf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vic.cli", "agent", "--config", str(conf)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "body,key",
    [
        ('[guestinfo]\nbackend = "file"\n', "guestinfo.path"),
        ('[guestinfo]\nbackend = "floppy"\n', "guestinfo.backend"),
        ('[console]\ntransport = "hybrid"\npath = "/x"\n', "console.port"),
        ("[agent]\nbogus = 1\n", "agent.bogus"),
        ('[guestinfo]\nbackend = "vsphere"\nurl = "ftp://x"\nvm = "a"\n', "guestinfo.url"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, body: str, key: str) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text(body)
    p = _vic_agent(conf)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0], p.stderr


def _start(conf: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "vic.cli", "agent", "--config", str(conf)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=open(conf.with_suffix(".log"), "wb"),
    )


async def test_agent_process_end_to_end(tmp_path: Path) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text(
        f"""
[guestinfo]
backend = "file"
path = "{tmp_path / "vm7.json"}"
[console]
transport = "hybrid"
path = "{tmp_path / "vm7.vsock"}"
port = 1024
[network]
publish = false
"""
    )
    sink = Sink(str(tmp_path / "vm7.vsock_1024"))
    w = FileStoreWatcher(tmp_path)
    await configure_session(
        w,
        "vm7",
        gi.SessionConfig(
            id="c7", path="/bin/sh", args=("sh", "-c", "echo hi from $HOSTNAME; exit 3"),
            env=("HOSTNAME=vm7",), runblock=True, tty=True,
        ),
    )  # fmt: skip
    agent = _start(conf)
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as n:
                await n.start(sink.serve)
                await go_ahead(w, "vm7", "c7")
                info = await wait_for_exit(w, "vm7", "c7", 30)
                await trio.testing.wait_all_tasks_blocked()  # the sink reads what is queued
                n.cancel_scope.cancel()
        assert info.status == 3
        assert bytes(sink.data) == b"hi from vm7\r\n"
        assert agent.poll() is None
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(10) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()


async def test_exit_when_done(tmp_path: Path) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text(
        f'[guestinfo]\nbackend = "file"\npath = "{tmp_path / "vm8.json"}"\n'
        '[console]\ntransport = "none"\n[network]\npublish = false\n'
        "[agent]\nexit-when-done = true\n"
    )
    w = FileStoreWatcher(tmp_path)
    await configure_session(w, "vm8", gi.SessionConfig(id="c8", path="/bin/true"))
    p = await trio.to_thread.run_sync(_vic_agent, conf)
    assert p.returncode == 0, p.stderr
    info = (await w.state("vm8")).session("c8").exit
    assert info is not None and info.status == 0
