"""The single-file artefacts (``scripts/build-artefacts``) run where no Python is.

Each runs in a chroot that holds only the artefacts, glibc, zlib and busybox
(``artefact_jail``): ``--version``/``--help``, ``--check`` on a config, and a real
run. The relay relays bytes from a Unix-socket ingress (an ESX named pipe) to an
appliance-side TCP listener and stops on SIGTERM; the agent reads a file guestinfo
backend, runs the session the appliance wrote, and stops cleanly. Size, start time
(``--help``, median of 5) and idle RSS are printed (``pytest -s``), never asserted.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import trio
import trustme

from common.proto import guestinfo as gi
from tests.deploy.artefact_jail import (
    ENV,
    Jail,
    artefacts_dir,
    bundled_packages,
    children,
    help_seconds,
    make_jail,
    nspid,
    pidns_refused,
    preconditions,
    report,
    rss_mib,
    zombies_of,
)
from tests.relay.relayfix import Appliance, pattern, roundtrip
from tests.support.waiting import wait_until
from vspc.guestinfo_watch import FileStoreWatcher, configure_session, wait_for_exit

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

T = TypeVar("T")
ROLES = {"vic-relay": "vic relay", "vic-agent": "vic agent"}


@pytest.fixture(scope="session")
def artefacts() -> Path:
    why = preconditions()
    if why is not None:
        pytest.skip(why)
    return artefacts_dir()


@pytest.fixture
def jail(tmp_path: Path, artefacts: Path) -> Iterator[Jail]:
    yield make_jail(tmp_path / "root", artefacts)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _relay_toml(appliance_port: int, metrics_port: int) -> str:
    return f"""
host = "esx-art"
[egress.appliance]
kind = "tcp"
host = "127.0.0.1"
port = {appliance_port}
[metrics]
enabled = true
host = "127.0.0.1"
port = {metrics_port}
[[pipe]]
name = "vm1-com1"
vm = "vm1"
path = "/run/vm1.com1"
"""


def _agent_toml(exit_when_done: bool) -> str:
    return f"""
[guestinfo]
backend = "file"
path = "/run/vm9.json"
[console]
transport = "none"
[network]
publish = false
[agent]
exit-when-done = {"true" if exit_when_done else "false"}
"""


@pytest.mark.parametrize("name", list(ROLES))
def test_version_help_and_figures(jail: Jail, name: str) -> None:
    for python in ("python3", "python", "python3.11"):
        assert not jail.path(f"/bin/{python}").exists()
    v = jail.run(name, "--version")
    assert v.returncode == 0, v.stderr
    assert v.stdout.startswith(f"{ROLES[name]} "), v.stdout
    h = jail.run(name, "--help")
    assert h.returncode == 0, h.stderr
    assert f"usage: {ROLES[name]}" in h.stdout and "--config" in h.stdout
    size = jail.path(name).stat().st_size
    report(f"{name}: {size / 2**20:.1f} MiB, --help median of 5 {help_seconds(jail, name):.2f} s")


@pytest.mark.parametrize(
    "name,own,never",
    [
        ("vic-relay", {"relay", "common", "pyVmomi", "pyVim"}, {"guestagent"}),
        ("vic-agent", {"guestagent", "common", "pyroute2"}, {"relay", "pyVmomi"}),
    ],
)
def test_each_artefact_bundles_its_program_only(
    artefacts: Path, name: str, own: set[str], never: set[str]
) -> None:
    """Lean: no lab, appliance, tests or benches, nor test tools that trio only tries."""
    found = bundled_packages(artefacts / name)
    assert own <= found
    dev = {"vic", "vspc", "tests", "bench", "pytest", "_pytest", "hypothesis", "numpy", "PIL"}
    assert not found & (never | dev)


def test_relay_check(jail: Jail) -> None:
    jail.path("/etc/relay.toml").write_text(_relay_toml(7000, _free_port()))
    ok = jail.run("vic-relay", "--config", "/etc/relay.toml", "--check")
    assert ok.returncode == 0, ok.stderr
    assert "ok (1 listeners, 1 egresses)" in ok.stdout
    jail.path("/etc/bad.toml").write_text('host = "esx-art"\n[egress.a]\nkind = "tcp"\n')
    bad = jail.run("vic-relay", "--config", "/etc/bad.toml", "--check")
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "egress.a.host" in lines[0], bad.stderr


def test_relay_check_reads_certificates(jail: Jail) -> None:
    """cryptography's compiled module works in the jail: ``--check`` parses the egress
    certificate and warns that it expires soon."""
    ca = trustme.CA()
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    leaf = ca.issue_cert("esx-art", not_after=soon)
    ca.cert_pem.write_to_path(str(jail.path("/etc/ca.pem")))
    leaf.cert_chain_pems[0].write_to_path(str(jail.path("/etc/relay.pem")))
    leaf.private_key_pem.write_to_path(str(jail.path("/etc/relay.key")))
    tls = 'tls = { ca = "/etc/ca.pem", cert = "/etc/relay.pem", key = "/etc/relay.key" }\n'
    toml = _relay_toml(7000, _free_port()).replace("port = 7000\n", "port = 7000\n" + tls)
    jail.path("/etc/relay.toml").write_text(toml)
    r = jail.run("vic-relay", "--config", "/etc/relay.toml", "--check")
    assert r.returncode == 0, r.stderr
    assert "egress.appliance.tls.cert" in r.stderr and "expires on" in r.stderr, r.stderr


def test_agent_check(jail: Jail) -> None:
    if "--check" not in jail.run("vic-agent", "--help").stdout:
        pytest.skip("vic agent has no --check yet (issue 15's CLI part adds it)")
    jail.path("/etc/agent.toml").write_text(_agent_toml(False))
    ok = jail.run("vic-agent", "--config", "/etc/agent.toml", "--check")
    assert ok.returncode == 0, ok.stderr
    jail.path("/etc/bad.toml").write_text('[guestinfo]\nbackend = "floppy"\n')
    bad = jail.run("vic-agent", "--config", "/etc/bad.toml", "--check")
    assert bad.returncode == 2 and "guestinfo.backend" in bad.stderr, bad.stderr


async def _until_ready(notify: trio.socket.SocketType) -> None:
    while b"READY=1" not in await notify.recv(4096):
        pass


async def _or_exit(proc: trio.Process, log: Path, fn: Callable[[], Awaitable[T]]) -> T:
    """``fn()``, unless the program exits first (then fail with its log)."""
    result: list[T] = []
    async with trio.open_nursery() as n:

        async def run_fn() -> None:
            result.append(await fn())
            n.cancel_scope.cancel()

        n.start_soon(run_fn)
        code = await proc.wait()
        raise AssertionError(
            f"exited ({code}) early:\n{(await trio.Path(log).read_text())[-3000:]}"
        )
    return result[0]


async def _stop(proc: trio.Process) -> int:
    proc.send_signal(signal.SIGTERM)  # the bootloader forwards it to the program
    with trio.fail_after(30):
        return await proc.wait()


async def test_relay_relays_from_a_pipe_to_the_appliance(jail: Jail) -> None:
    app = Appliance()
    notify = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await notify.bind(str(jail.path("/run/notify")))
    async with trio.open_nursery() as n:
        port = await app.serve_tcp(n)
        jail.path("/etc/relay.toml").write_text(_relay_toml(port, _free_port()))
        log = jail.path("/relay.log").open("wb")
        proc = await trio.lowlevel.open_process(
            jail.argv("vic-relay", "--config", "/etc/relay.toml"),
            env={**ENV, "NOTIFY_SOCKET": "/run/notify"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            with trio.fail_after(120):
                await _or_exit(proc, jail.path("/relay.log"), lambda: _until_ready(notify))
                stream = await trio.open_unix_socket(str(jail.path("/run/vm1.com1")))
                data = pattern(20_000)
                assert await roundtrip(stream, data) == data
                rec = (await app.wait_streams(1))[0]
                assert (rec.header.vm, rec.header.kind) == ("vm1", "pipe")
                loader, program = rss_mib(proc.pid)
                unpacked = jail.extracted_bytes() / 2**20
                await stream.aclose()
            report(
                f"vic-relay idle RSS {program:.1f} MiB (+ bootloader {loader:.1f} MiB), "
                f"{unpacked:.0f} MiB unpacked under /tmp"
            )
            assert await _stop(proc) == 0, jail.path("/relay.log").read_text()
        finally:
            if proc.returncode is None:
                proc.kill()
            log.close()
        n.cancel_scope.cancel()
    assert not jail.path("/run/vm1.com1").exists()  # the relay removed its socket


async def test_agent_runs_a_session_and_stops_on_sigterm(jail: Jail) -> None:
    watcher = FileStoreWatcher(jail.path("/run"))
    await configure_session(
        watcher, "vm9", gi.SessionConfig(id="c9", path="/bin/sh", args=("sh", "-c", "exit 7"))
    )
    jail.path("/etc/agent.toml").write_text(_agent_toml(exit_when_done=False))
    log = jail.path("/agent.log").open("wb")
    proc = await trio.lowlevel.open_process(
        jail.argv("vic-agent", "--config", "/etc/agent.toml"),
        env=ENV,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        info = await _or_exit(
            proc, jail.path("/agent.log"), lambda: wait_for_exit(watcher, "vm9", "c9", 120)
        )
        assert info.status == 7
        assert proc.returncode is None
        loader, program = rss_mib(proc.pid)
        unpacked = jail.extracted_bytes() / 2**20
        report(
            f"vic-agent idle RSS {program:.1f} MiB (+ bootloader {loader:.1f} MiB), "
            f"{unpacked:.0f} MiB unpacked under /tmp"
        )
        assert await _stop(proc) == 0, jail.path("/agent.log").read_text()
    finally:
        if proc.returncode is None:
            proc.kill()
        log.close()


async def test_agent_exits_when_done(jail: Jail) -> None:
    watcher = FileStoreWatcher(jail.path("/run"))
    await configure_session(watcher, "vm9", gi.SessionConfig(id="c1", path="/bin/true"))
    jail.path("/etc/agent.toml").write_text(_agent_toml(exit_when_done=True))
    r = await trio.to_thread.run_sync(jail.run, "vic-agent", "--config", "/etc/agent.toml")
    assert r.returncode == 0, r.stderr
    info = (await watcher.state("vm9")).session("c1").exit
    assert info is not None and info.status == 0


async def test_agent_as_pid1_of_a_pid_namespace_leaves_no_zombies(jail: Jail) -> None:
    """As in a containerVM, the one-file bootloader is PID 1 and the agent its child.
    The agent makes itself a child subreaper, so a session's orphans come to it (the
    bootloader waits only for its own child) and are reaped; SIGTERM to PID 1 is
    forwarded to the agent and both exit 0."""
    why = pidns_refused()
    if why:
        pytest.skip(f"no PID namespace here: {why}")
    fifos = [jail.path("/run/f1"), jail.path("/run/f2")]
    for f in fifos:
        os.mkfifo(f)
    watcher = FileStoreWatcher(jail.path("/run"))
    script = "cat /run/f1 >/dev/null & cat /run/f2 >/dev/null & exit 0"
    await configure_session(
        watcher, "vm9", gi.SessionConfig(id="c2", path="/bin/sh", args=("sh", "-c", script))
    )
    jail.path("/etc/agent.toml").write_text(_agent_toml(exit_when_done=False))
    log = jail.path("/agent.log").open("wb")
    argv = [shutil.which("unshare") or "unshare", "--pid", "--fork", "--kill-child"]
    argv += jail.argv("vic-agent", "--config", "/etc/agent.toml")
    proc = await trio.lowlevel.open_process(argv, env=ENV, stdout=log, stderr=subprocess.STDOUT)
    try:
        info = await _or_exit(
            proc, jail.path("/agent.log"), lambda: wait_for_exit(watcher, "vm9", "c2", 120)
        )
        assert info.status == 0
        (pid1,) = children(proc.pid)  # the bootloader, PID 1 inside
        assert nspid(pid1) == 1
        (agent,) = children(pid1)
        await wait_until(lambda: len(children(agent)) == 2, 10, "the orphans reach the agent")
        for f in fifos:
            os.close(os.open(f, os.O_WRONLY))  # the orphans exit...
        await wait_until(
            lambda: not (children(agent) or zombies_of(agent) or zombies_of(pid1)),
            10,
            "the orphans exit and are reaped",
        )
        os.kill(pid1, signal.SIGTERM)
        with trio.fail_after(30):
            assert await proc.wait() == 0, jail.path("/agent.log").read_text()
    finally:
        if proc.returncode is None:
            proc.kill()
        log.close()
