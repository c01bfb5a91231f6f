"""The checks of lab scenario ``docker`` run by the plain client (no terminal): each
runs the real ``docker`` command and compares what it printed and its exit code with
what docker's own daemon gives (:mod:`vic.lab.docker_scenario`)."""

from __future__ import annotations

import os
import pwd
import re
import time
from pathlib import Path

import trio

from vic.lab.agent_processes import STEP_TIMEOUT, stop
from vic.lab.docker_client import (
    EXIT,
    TTY,
    V1,
    Docker,
    mains,
    now,
    parse_inspect,
    seen_of,
)
from vic.lab.polling import wait_until
from vic.lab.session_checks import SessionCheck, read_until

PUBLISH_WAIT = 3.0  # seconds for V1's agent to publish an address (none: IPAddress "")
TS = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z three\n")


async def check_ps(dk: Docker, d: Path) -> SessionCheck:
    r = await dk.run("ps", "--format", "{{.Names}} {{.State}}")
    mine = sorted(ln for ln in r.stdout.decode().splitlines() if ln.startswith("vm-dock-"))
    want = sorted(f"{vm} running" for vm in (V1, TTY, EXIT))
    return SessionCheck("ps", f"exit {r.returncode}: {', '.join(mine)}", mine == want, V1)


async def check_inspect(dk: Docker, d: Path) -> SessionCheck:
    with trio.move_on_after(PUBLISH_WAIT):  # the agent publishes its addresses once started
        await wait_until(lambda: dk.published_ip(V1) != "", interval=0.05)
    for _ in range(2):  # the agent may publish its addresses between the two reads
        r = await dk.run("inspect", V1)
        c = parse_inspect(r)
        published = dk.published_ip(V1)
        if c["NetworkSettings"]["IPAddress"] == published:  # type: ignore[index]
            break
    state, cfg, net = c["State"], c["Config"], c["NetworkSettings"]
    assert isinstance(state, dict) and isinstance(cfg, dict) and isinstance(net, dict)
    ok = (
        r.returncode == 0
        and state["Status"] == "running"
        and state["Running"] is True
        and cfg["Cmd"] == list(mains(d)[V1].args)
        and net["IPAddress"] == published
    )
    ip = net["IPAddress"] or "none"
    seen = f"State {state['Status']}, IPAddress {ip} (published {published or 'none'}), Cmd"
    seen += f" {cfg['Cmd'][:2]}..."
    return SessionCheck("inspect: State, NetworkSettings.IPAddress, Config.Cmd", seen, ok, V1)


async def check_logs(dk: Docker, d: Path) -> SessionCheck:
    """--tail and -t on what V1 printed first (one two three)."""
    tail = await dk.run("logs", "--tail", "2", V1)
    ts = await dk.run("logs", "-t", "--tail", "1", V1)
    ok = (tail.returncode, tail.stdout, ts.returncode) == (0, b"two\nthree\n", 0)
    ok &= TS.fullmatch(ts.stdout) is not None
    seen = f"--tail 2 {tail.stdout!r}; -t --tail 1 {ts.stdout[:20]!r}..."
    return SessionCheck("logs --tail 2, logs -t --tail 1", seen, ok, V1)


async def check_follow(dk: Docker, d: Path) -> SessionCheck:
    """``logs -f`` while the container writes: what it had, then each new line."""
    proc = await dk.open("logs", "-f", V1)
    assert proc.stdout is not None and proc.stderr is not None
    out, err = bytearray(), bytearray()
    try:
        with trio.fail_after(STEP_TIMEOUT):
            await read_until(proc.stdout, out, b"three\n")
            (d / "cut").write_text(now())  # V1 printed one two three by now, nothing after
            (d / "more").touch()  # V1 writes four, five (stderr), six
            await read_until(proc.stdout, out, b"six\n")
            await read_until(proc.stderr, err, b"five\n")
    finally:
        await stop(proc)
    ok = (bytes(out), bytes(err)) == (b"one\ntwo\nthree\nfour\nsix\n", b"five\n")
    seen = f"out {bytes(out)!r}, err {bytes(err)!r}"
    return SessionCheck("logs -f while the container writes four five six", seen, ok, V1)


async def check_window(dk: Docker, d: Path) -> SessionCheck:
    """--until and --since T, T between three and four."""
    cut = (d / "cut").read_text()
    until = await dk.run("logs", "--until", cut, V1)
    since = await dk.run("logs", "--since", cut, V1)
    got = [until.stdout, since.stdout, since.stderr, until.returncode, since.returncode]
    ok = got == [b"one\ntwo\nthree\n", b"four\nsix\n", b"five\n", 0, 0]
    seen = f"until {until.stdout!r}; since {since.stdout!r} + {since.stderr!r}"
    return SessionCheck("logs --until T, --since T (T between three and four)", seen, ok, V1)


async def check_exec(dk: Docker, d: Path) -> SessionCheck:
    r = await dk.run("exec", V1, "sh", "-c", "echo out; echo err >&2; exit 3")
    ok = (r.returncode, r.stdout, r.stderr) == (3, b"out\n", b"err\n")
    return SessionCheck("exec sh -c 'echo out; echo err >&2; exit 3'", seen_of(r), ok, V1)


async def check_exec_stdin(dk: Docker, d: Path) -> SessionCheck:
    r = await dk.run("exec", "-i", V1, "wc", "-c", stdin=b"x" * 100_000)
    ok = (r.returncode, r.stdout.strip()) == (0, b"100000")
    return SessionCheck("exec -i wc -c, 100000 bytes in", seen_of(r), ok, V1)


async def check_exec_env(dk: Docker, d: Path) -> SessionCheck:
    user = "nobody" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    script = 'echo "$A $PWD $(id -un)"'
    r = await dk.run("exec", "-e", "A=b", "-w", "/tmp", "-u", user, V1, "sh", "-c", script)
    ok = (r.returncode, r.stdout) == (0, f"b /tmp {user}\n".encode())
    return SessionCheck(f"exec -e A=b -w /tmp -u {user}", seen_of(r), ok, V1)


async def check_attach_exit(dk: Docker, d: Path) -> SessionCheck:
    """The container exits while attached: attach's exit code is the container's."""
    await dk.logged(EXIT, b"ready\n")
    r = await dk.run("attach", EXIT, stdin=b"hello\n")
    ok = (r.returncode, r.stdout, r.stderr) == (21, b"got hello\n", b"bye\n")
    return SessionCheck("attach, input 'hello', the container exits 21", seen_of(r), ok, EXIT)


async def check_wait(dk: Docker, d: Path) -> SessionCheck:
    r = await dk.run("wait", EXIT)
    st = await dk.run("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", EXIT)
    ok = (r.returncode, r.stdout, st.stdout) == (0, b"21\n", b"exited 21\n")
    return SessionCheck("wait; inspect State", f"{r.stdout!r}, {st.stdout!r}", ok, EXIT)


async def check_kill(dk: Docker, d: Path) -> SessionCheck:
    k = await dk.run("kill", "-s", "TERM", V1)
    w = await dk.run("wait", V1)
    ok = (k.returncode, k.stdout, w.stdout) == (0, f"{V1}\n".encode(), b"143\n")
    return SessionCheck("kill -s TERM; wait", f"{k.stdout!r}, exit {w.stdout!r}", ok, V1)


async def check_stop(dk: Docker, d: Path) -> SessionCheck:
    """SIGTERM is ignored in ``vm-dock-tty``: SIGKILL one second later, 137."""
    t0 = time.monotonic()
    r = await dk.run("stop", "-t", "1", TTY)
    took = time.monotonic() - t0
    st = await dk.run("inspect", "-f", "{{.State.ExitCode}}", TTY)
    ok = r.returncode == 0 and st.stdout == b"137\n" and took >= 1.0
    seen = f"exit {r.returncode} after {took:.1f} s, ExitCode {st.stdout!r}"
    return SessionCheck("stop -t 1 (SIGTERM ignored: SIGKILL after 1 s)", seen, ok, TTY)


async def check_unsupported(dk: Docker, d: Path) -> SessionCheck:
    r = await dk.run("run", "--rm", "busybox", "true")
    first = (r.stderr.decode(errors="replace").strip().splitlines() or [""])[0]
    ok = r.returncode == 125 and "does not create containers" in first
    seen = f"exit {r.returncode}: {first.removeprefix('docker: Error response from daemon: ')}"
    return SessionCheck("run (unsupported): one line", seen, ok, V1)
