"""The tether's sealed session service with real processes, a real reaper and a unix
socket to an appliance-side ``SessionEndpoint``: exec with stdin, stderr apart, exit
codes and signals, tty size and resize, 10 execs at once, timeout, a cut mid-exec."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import pty
import signal
import subprocess
import sys
import tty
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing

from common.io.guestinfo.filestore import FileStore
from common.ops import config as config_mod
from common.proto import guestinfo as gi
from common.proto.guestinfo import keys as gik
from common.proto.session.messages import ErrorCode, ExecSpec, ExitStatus, Stream
from guestagent.agent import Agent
from guestagent.backends.file import FileGuestBackend
from guestagent.channels import unix_connector
from guestagent.config import AgentConfig, SessionSection
from guestagent.reaper import Reaper
from guestagent.tether import Tether
from tests.guestagent.agent_helpers import agent_config, start_agent
from tests.guestagent.tether_helpers import Appliance, ExecResult, write_secrets
from vspc.guestinfo_watch import FileStoreWatcher, configure_session, go_ahead

T = 30  # safety net only
SECRET = b"s" * 32


@dataclass
class Rig:
    appliance: Appliance
    tether: Tether
    store: str


@pytest.fixture
async def rig(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Rig]:
    store = str(tmp_path / "guestinfo.json")
    write_secrets(store, SECRET)
    appliance = Appliance(str(tmp_path / "session.sock"), SECRET)
    await nursery.start(appliance.serve)
    reaper = Reaper()
    await nursery.start(reaper.run)
    cfg = SessionSection(enabled=True, transport="unix", path=appliance.path, drain_grace=0.5)
    tether = Tether(
        cfg,
        unix_connector(appliance.path),
        backend=FileGuestBackend(FileStore(store)),
        reaper=reaper,
    )
    await nursery.start(tether.run)
    yield Rig(appliance, tether, store)


async def test_cat_with_stdin_stderr_apart_and_exit_code(rig: Rig) -> None:
    data = os.urandom(300_000)
    spec = ExecSpec(("sh", "-c", "cat; echo oops >&2; exit 3"))
    with trio.fail_after(T):
        r = await rig.appliance.exec(spec, data)
    assert r.text(Stream.STDOUT) == data
    assert r.text(Stream.STDERR) == b"oops\n"
    assert r.status == ExitStatus(code=3)
    assert rig.tether.execs == {}


async def test_signal_reaches_the_process(rig: Rig) -> None:
    ch, r = rig.appliance.open_exec(ExecSpec(("sh", "-c", "echo up; exec sleep 60")))
    with trio.fail_after(T):
        await r.wait_for(Stream.STDOUT, b"up\n")
        assert rig.appliance.endpoint.signal(ch, signal.SIGTERM)
        await r.done.wait()
    assert r.status == ExitStatus(signal=signal.SIGTERM)


async def test_tty_sees_its_size_and_a_resize(rig: Rig) -> None:
    spec = ExecSpec(("sh", "-c", "stty size; read x; stty size"), tty=True, rows=24, cols=80)
    ch, r = rig.appliance.open_exec(spec)
    ep = rig.appliance.endpoint
    with trio.fail_after(T):
        await r.wait_for(Stream.TTY, b"24 80")
        assert ep.resize(ch, 50, 132)
        await ep.send_all(ch, Stream.STDIN, b"\n")
        await r.wait_for(Stream.TTY, b"50 132")
        await r.done.wait()
    assert r.status == ExitStatus(code=0)
    assert Stream.STDOUT not in r.out


async def test_ten_execs_at_once(rig: Rig) -> None:
    results: dict[int, ExitStatus | None] = {}
    outputs: dict[int, bytes] = {}

    async def one(i: int) -> None:
        script = f"head -c {10_000 * (i + 1)} /dev/zero; echo {i} >&2; exit {i}"
        r = await rig.appliance.exec(ExecSpec(("sh", "-c", script)))
        results[i] = r.status
        outputs[i] = r.text(Stream.STDOUT) + r.text(Stream.STDERR)

    with trio.fail_after(T):
        async with trio.open_nursery() as n:
            for i in range(10):
                n.start_soon(one, i)
    for i in range(10):
        assert results[i] == ExitStatus(code=i)
        assert outputs[i] == bytes(10_000 * (i + 1)) + f"{i}\n".encode()


async def test_timeout_kills_the_exec(rig: Rig) -> None:
    spec = ExecSpec(("sleep", "60"), timeout_ms=200)
    with trio.fail_after(T):
        r = await rig.appliance.exec(spec)
    assert r.status == ExitStatus(signal=signal.SIGKILL, timed_out=True)


async def test_a_program_that_cannot_run_is_refused(rig: Rig) -> None:
    with trio.fail_after(T):
        r = await rig.appliance.exec(ExecSpec(("/nonexistent/prog",)))
    assert r.refused is not None and "/nonexistent/prog" in r.refused
    assert r.status is None


async def test_cut_mid_exec_loses_and_repeats_nothing(rig: Rig) -> None:
    data = os.urandom(6 * 1024 * 1024)
    ch, r = rig.appliance.open_exec(ExecSpec(("cat",)))
    ep = rig.appliance.endpoint
    with trio.fail_after(T):
        async with trio.open_nursery() as n:

            async def feed() -> None:
                assert await ep.send_all(ch, Stream.STDIN, data)
                ep.close_stdin(ch)

            n.start_soon(feed)
            for mark in (1, 2, 4):  # cut while output flows, three times
                while len(r.text(Stream.STDOUT)) < mark * 1024 * 1024:
                    await r.changed.wait()
                    r.changed = trio.Event()
                await rig.appliance.cut()
        await r.done.wait()
    out = r.text(Stream.STDOUT)
    assert len(out) == len(data) and out == data
    assert r.status == ExitStatus(code=0)
    assert rig.appliance.endpoint.stats.established >= 4


async def test_rotated_secret_takes_effect_on_the_next_connection(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with trio.fail_after(T):
        await rig.appliance.exec(ExecSpec(("true",)))
        new = b"n" * 32
        write_secrets(rig.store, new, SECRET)
        while rig.tether.secrets() != (new, SECRET):
            await rig.tether.secrets.wait_update()
        rig.appliance.secret = new
        await rig.appliance.cut()
        r = await rig.appliance.exec(ExecSpec(("sh", "-c", "echo again")))
    assert r.text(Stream.STDOUT) == b"again\n"
    assert rig.tether.endpoint.last_established is not None
    assert rig.tether.endpoint.last_established.secret_index == 0


async def test_stdin_the_process_does_not_read_stays_within_the_appliances_bound(
    rig: Rig,
) -> None:
    """STDIN is acknowledged as it reaches the process: the appliance's replay bound
    (1 MiB) stalls its writer, and the tether holds no more than that."""
    ch, r = rig.appliance.open_exec(ExecSpec(("sleep", "60")))
    ep = rig.appliance.endpoint
    chunk = bytes(128 * 1024)
    sent = 0

    async def feed() -> None:
        nonlocal sent
        for _ in range(64):  # 8 MiB offered
            if not await ep.send_all(ch, Stream.STDIN, chunk):
                return
            sent += len(chunk)

    with trio.fail_after(T):
        async with trio.open_nursery() as n:
            n.start_soon(feed)
            await r.opened.wait()
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            held = rig.tether.execs[ch].stdin_held
            assert held <= 1024 * 1024
            assert sent <= 2 * 1024 * 1024  # 1 MiB replay + the pipe + one chunk
            assert ep.signal(ch, signal.SIGKILL)
            await r.done.wait()
            n.cancel_scope.cancel()
    assert r.status == ExitStatus(signal=signal.SIGKILL)


async def test_the_agent_serves_exec_over_a_serial_line_after_boot_noise(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """``[session] enabled`` with the console's serial transport: the agent's tether takes
    the line (the raw console link is off); a pty pair stands in for the UART."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    noise = b"[    0.000000] Linux version 6.1.0-28-amd64\r\n\x1b[0m\xff" * 64
    os.write(slave, noise)  # the guest's boot chatter, already on the line
    cfg = agent_config(tmp_path, console="serial", console_path=os.ttyname(slave))
    cfg = dataclasses.replace(cfg, session=SessionSection(enabled=True))
    write_secrets(cfg.guestinfo.path, SECRET)
    agent = await start_agent(nursery, cfg)
    assert agent.tether is not None and agent.console is agent.tether.main
    appliance = Appliance(str(tmp_path / "unused.sock"), SECRET)
    line = trio.lowlevel.FdStream(os.dup(master))
    await nursery.start(functools.partial(appliance.serve_line, line, handshake_timeout=1.0))
    with trio.fail_after(T):
        r = await appliance.exec(ExecSpec(("sh", "-c", "cat; exit 5")), b"over the UART\n")
    assert r.text(Stream.STDOUT) == b"over the UART\n"
    assert r.status == ExitStatus(code=5)
    os.close(slave)
    os.close(master)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[session]\nenabled = true\ntransport = "vsock"\n', "session.port"),
        ("[session]\nenabled = true\n", "session.transport"),
        ('[session]\nenabled = "yes"\n', "session.enabled"),
        ('[session]\ntransport = "carrier-pigeon"\n', "session.transport"),
        ("[session]\nmax-execs = 0\n", "session.max-execs"),
        ("[session]\nkeepalive = 10\nidle-timeout = 15\n", "session.idle-timeout"),
    ],
)
def test_a_bad_session_config_names_its_key(text: str, key: str) -> None:
    with pytest.raises(config_mod.ConfigError) as info:
        config_mod.loads(AgentConfig, text)
    assert info.value.key == key


def test_the_agent_exits_2_on_a_bad_session_config(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("[session]\nenabled = true\n")
    proc = subprocess.run(
        [sys.executable, "-m", "guestagent.cli", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 2
    assert "session.transport" in proc.stderr


async def start_main_agent(
    nursery: trio.Nursery, tmp_path: Path, script: str, *, tty: bool = False
) -> tuple[Appliance, FileStoreWatcher, Agent]:
    """An agent with no raw console and a runblock main process; its appliance."""
    appliance = Appliance(str(tmp_path / "session.sock"), SECRET)
    await nursery.start(appliance.serve)
    watcher = FileStoreWatcher(tmp_path)
    main = gi.SessionConfig(
        id="c1", path="/bin/sh", args=("sh", "-c", script), openstdin=True, runblock=True, tty=tty
    )
    await configure_session(watcher, "vm1", main)
    cfg = agent_config(tmp_path, console="none")
    cfg = dataclasses.replace(
        cfg, session=SessionSection(enabled=True, transport="unix", path=appliance.path)
    )
    write_secrets(cfg.guestinfo.path, SECRET)
    agent = await start_agent(nursery, cfg)
    assert agent.tether is not None and agent.console is agent.tether.main
    return appliance, watcher, agent


async def test_attach_to_the_main_process_over_the_session(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """No raw console: the agent attaches the container's main process to the session;
    an attach opened before the go-ahead sees all its output, types into it, and gets
    its exit code."""
    script = "echo hello; read x; echo got $x; exit 3"
    appliance, watcher, agent = await start_main_agent(nursery, tmp_path, script)
    ep = appliance.endpoint
    ch = ep.open_attach(tty=False)
    r = appliance.results[ch] = ExecResult()
    with trio.fail_after(T):
        await r.opened.wait()
        await go_ahead(watcher, "vm1", "c1")
        await r.wait_for(Stream.STDOUT, b"hello\n")
        assert await ep.send_all(ch, Stream.STDIN, b"there\n")
        await r.wait_for(Stream.STDOUT, b"got there\n")
        await r.done.wait()
    assert r.text(Stream.STDOUT) == b"hello\ngot there\n"
    assert r.status == ExitStatus(code=3)
    assert agent.results["c1"] is not None and agent.results["c1"].code == 3


async def test_a_signal_on_the_attach_reaches_the_main_process(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    appliance, watcher, _ = await start_main_agent(nursery, tmp_path, "echo up; exec sleep 60")
    ep = appliance.endpoint
    ch = ep.open_attach(tty=False)
    r = appliance.results[ch] = ExecResult()
    with trio.fail_after(T):
        await r.opened.wait()
        await go_ahead(watcher, "vm1", "c1")
        await r.wait_for(Stream.STDOUT, b"up\n")
        assert ep.signal(ch, signal.SIGTERM)
        await r.done.wait()
    assert r.status == ExitStatus(signal=signal.SIGTERM)


async def test_an_appliance_that_lost_the_session_gets_a_new_one(rig: Rig) -> None:
    """SESSION_MISMATCH: the tether kills what ran for the old session and starts over."""
    ch, r = rig.appliance.open_exec(ExecSpec(("sh", "-c", "echo up; exec sleep 60")))
    with trio.fail_after(T):
        await r.wait_for(Stream.STDOUT, b"up\n")
        old = rig.tether.execs[ch]
        await rig.appliance.restart()
        await old.done.wait()
        r2 = await rig.appliance.exec(ExecSpec(("sh", "-c", "echo fresh")))
    assert old.status == ExitStatus(signal=signal.SIGKILL)
    assert r2.text(Stream.STDOUT) == b"fresh\n"
    assert rig.tether.endpoint.session.session_id == rig.appliance.endpoint.session.session_id


def test_the_secrets_value_round_trips_and_refuses_bad_ones() -> None:
    key = gik.session_secrets_key()
    assert key == "guestinfo.vice./tether/secrets" and not gik.is_guest_writable(key)
    value = gik.encode_session_secrets([b"a" * 32, b"b" * 16])
    assert value.startswith("v1:") and "=" not in value
    assert gik.decode_session_secrets(value) == (b"a" * 32, b"b" * 16)
    assert gik.decode_session_secrets(None) == () == gik.decode_session_secrets("<nil>")
    one = value.split(":")[1].split(",")[0]
    for bad in ("v2:" + one, "v1:", "v1:" + one + ",!!", "v1:" + ",".join([one] * 5), "v1:YWJj"):
        with pytest.raises(gi.GuestinfoError):
            gik.decode_session_secrets(bad)


async def test_a_bad_secrets_value_keeps_the_secrets_in_force(rig: Rig) -> None:
    FileStore(rig.store).update({gik.session_secrets_key(): "v1:not base64!"})
    with trio.fail_after(T):
        await rig.tether.secrets.wait_update()  # the watcher read the bad value
        await rig.appliance.cut()  # the next connection speaks with the secret held
        r = await rig.appliance.exec(ExecSpec(("true",)))
    assert rig.tether.secrets() == (SECRET,)
    assert r.status == ExitStatus(code=0)


async def test_a_restarted_tether_makes_the_appliance_start_anew_at_once(rig: Rig) -> None:
    """The tether lost its session under a live appliance: the very next connection ends
    on the appliance's side with SESSION_MISMATCH (no loop of unresumed connections)."""
    r = await rig.appliance.exec(ExecSpec(("sh", "-c", "echo before")))
    assert r.text(Stream.STDOUT) == b"before\n"
    seen = len(rig.appliance.ends)
    with trio.fail_after(T):
        rig.tether.endpoint.replace_session(rig.tether._new_session())  # as after a restart
        await rig.appliance.wait_ends(seen + 2)  # the dropped connection, the next one
    ends = rig.appliance.ends[seen : seen + 2]
    assert [getattr(e, "code", None) for e in ends] == [None, int(ErrorCode.SESSION_MISMATCH)]
    assert rig.tether.endpoint.session.session_id is None


async def test_the_main_process_stderr_arrives_apart_from_stdout(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    script = "echo out1; echo err1 >&2; echo out2; echo err2 >&2; exit 4"
    appliance, watcher, _ = await start_main_agent(nursery, tmp_path, script)
    ch = appliance.endpoint.open_attach(tty=False)
    r = appliance.results[ch] = ExecResult()
    with trio.fail_after(T):
        await r.opened.wait()
        await go_ahead(watcher, "vm1", "c1")
        await r.done.wait()
    assert r.text(Stream.STDOUT) == b"out1\nout2\n"
    assert r.text(Stream.STDERR) == b"err1\nerr2\n"
    assert r.status == ExitStatus(code=4)


async def test_a_resize_on_the_attach_reaches_the_main_process_pty(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    script = "stty -echo; stty size; read x; stty size; exit 0"
    appliance, watcher, _ = await start_main_agent(nursery, tmp_path, script, tty=True)
    ep = appliance.endpoint
    ch = ep.open_attach(tty=True)
    r = appliance.results[ch] = ExecResult()
    with trio.fail_after(T):
        await r.opened.wait()
        await go_ahead(watcher, "vm1", "c1")
        await r.wait_for(Stream.TTY, b"\n")  # the first size: whatever the pty began with
        assert ep.resize(ch, 33, 77)
        assert await ep.send_all(ch, Stream.STDIN, b"go\n")  # after the resize, in order
        await r.wait_for(Stream.TTY, b"33 77")
        await r.done.wait()
    assert r.status == ExitStatus(code=0)
