"""``vic lab up`` / ``vic lab down``: the lab topology left running, then stopped.

``up`` starts the appliance (``vic vspc`` on the lab's config, ``D/vspc.toml``) and
the hosts (:mod:`vic.lab.lab_hosts`: simulated ESX hosts, relays, the mesh, the
agent VMs), each detached from the shell in a session of its own with its log in
``D``, records their pids in ``D/pids``, waits for each to say ``READY=1`` on the
notify socket ``D/notify.sock`` (sd_notify's datagram form; the appliance's carries
its ports) and writes ``D/env``: shell lines that point ``vic console`` at the
lab's appliance and ``docker`` at its Docker endpoint (``D/docker.sock``). ``down``
stops every recorded process (SIGTERM, SIGKILL after a deadline) and removes what
``up`` created. The default ``D`` is
``$XDG_RUNTIME_DIR/vic-lab``, or ``.lab`` in the repository without it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

import trio

from vic.lab import lab_state
from vic.lab.appliance_config import docker_socket, lab_toml
from vic.lab.lab_hosts import VM_PATHS

START_TIMEOUT = 120.0  # per process, on a loaded 2-core machine
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the NUL


class LabStartError(Exception):
    pass


def run(args: argparse.Namespace) -> int:
    d = (args.dir or lab_state.default_dir()).absolute()
    if args.action == "down":
        return down(d)
    return up(d)


def down(d: Path) -> int:
    if not lab_state.is_lab(d):
        print(f"vic lab down: no lab up in {d}: nothing to stop")
        return 0
    live = lab_state.running(d)
    killed = lab_state.stop(live)
    lab_state.remove(d)
    extra = f" ({', '.join(killed)} needed SIGKILL)" if killed else ""
    print(f"vic lab down: stopped {len(live)} processes{extra}; removed the lab in {d}")
    return 0


def up(d: Path) -> int:
    if lab_state.is_lab(d):
        live = lab_state.running(d)
        if live:
            pids = ", ".join(f"{s.name} {s.pid}" for s in live)
            print(
                f"vic lab up: a lab is already up in {d} ({pids}); "
                f"`vic lab down --dir {d}` stops it",
                file=sys.stderr,
            )
            return 1
        lab_state.remove(d)  # what a lab that died (or a reboot) left behind
        print(f"vic lab up: removed what a lab no longer running left in {d}")
    elif d.exists() and any(d.iterdir()):
        print(
            f"vic lab up: {d} is not empty and holds no lab; choose another --dir", file=sys.stderr
        )
        return 1
    longest = d / "ag" / "vm-agent-1.vsock_1024"  # the longest socket path the lab binds
    if len(os.fsencode(longest)) > MAX_SOCKET_PATH:
        print(f"vic lab up: {d} is too long for the lab's Unix sockets", file=sys.stderr)
        return 1
    made = not d.exists()
    d.mkdir(mode=0o700, parents=True, exist_ok=True)  # it holds the mesh's private keys
    (d / lab_state.MARKER).write_text("created\n" if made else "existed\n")
    (d / ".gitignore").write_text("*\n")  # the default D is in the repository
    try:
        env = trio.run(_start, d)
    except LabStartError as e:
        print(f"vic lab up: {e}", file=sys.stderr)
        down(d)
        return 1
    except BaseException:
        down(d)
        raise
    (d / "env").write_text(env)
    print(f"lab up in {d}; to use it (also in {d / 'env'}):\n")
    print(env, end="")
    print(f"\nstop it with: vic lab down --dir {d}")
    return 0


def _spawn(d: Path, name: str, argv: list[str], env: dict[str, str]) -> int:
    log = d / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", *argv],
            cwd=lab_state.ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # no SIGHUP/SIGINT from the shell that ran `up`
        )
    lab_state.record(d, name, proc.pid)
    proc.returncode = 0  # it outlives us: no "still running" warning when this object goes
    return proc.pid


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(lab_state.ROOT), env.get("PYTHONPATH", "")) if p
    )
    return env


async def _start(d: Path) -> str:
    notify_path = d / "notify.sock"
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_DGRAM)
    with sock:
        await sock.bind(str(notify_path))
        (d / "consoles").mkdir(exist_ok=True)
        (d / "ag" / "guestinfo").mkdir(parents=True, exist_ok=True)  # the agents' store
        (d / "vspc.toml").write_text(lab_toml(d, d / "ag" / "guestinfo", docker=True))
        env = _child_env()
        pid = _spawn(
            d,
            "appliance",
            ["vic.cli", "vspc", "--config", str(d / "vspc.toml"), "--drain-seconds", "1"],
            env | {"NOTIFY_SOCKET": str(notify_path)},
        )
        status = (await _ready(sock, pid, d / "appliance.log", "STATUS"))["STATUS"].split()
        ports = dict(f.split("=", 1) for f in status)
        esx_port = ports["esx"].rpartition(":")[2]
        pid = _spawn_hosts(d, esx_port, notify_path, env)
        hosts = await _ready(sock, pid, d / "hosts.log", "LAB")
    notify_path.unlink(missing_ok=True)
    return render_env(d, ports.get("metrics", "-"), hosts)


def _spawn_hosts(d: Path, esx_port: str, notify_path: Path, env: dict[str, str]) -> int:
    argv = ["vic.lab.lab_hosts", "--dir", str(d), "--esx-port", esx_port]
    return _spawn(d, "hosts", [*argv, "--notify", str(notify_path)], env)


async def _ready(sock: trio.socket.SocketType, pid: int, log: Path, key: str) -> dict[str, str]:
    """The READY=1 message (with ``key``) from ``pid``; LabStartError if it exits first."""
    pidfd = os.pidfd_open(pid)
    fields: dict[str, str] = {}
    try:
        with trio.move_on_after(START_TIMEOUT) as timer:
            async with trio.open_nursery() as n:

                async def died() -> None:
                    await trio.lowlevel.wait_readable(pidfd)
                    n.cancel_scope.cancel()

                n.start_soon(died)
                while not (fields.get("READY") == "1" and key in fields):
                    msg = (await sock.recv(65536)).decode(errors="replace")
                    fields = dict(ln.partition("=")[::2] for ln in msg.splitlines())
                n.cancel_scope.cancel()
    finally:
        os.close(pidfd)
    if fields.get("READY") == "1" and key in fields:
        return fields
    why = f"not ready within {START_TIMEOUT:g} s" if timer.cancelled_caught else "exited"
    raise LabStartError(f"{log.stem} {why}; the end of {log}:\n{_tail(log)}")


def _tail(log: Path, n: int = 15) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def render_env(d: Path, appliance_metrics: str, hosts: dict[str, str]) -> str:
    urls = [f"http://127.0.0.1:{appliance_metrics}/metrics"]
    names = ["appliance"]
    for item in filter(None, hosts.get("METRICS", "").split(",")):
        host, _, port = item.partition("=")
        names.append(f"relay {host}")
        urls.append(f"http://127.0.0.1:{port}/metrics")
    q = shlex.quote
    vms = hosts.get("VMS", "")
    paths = "".join(f"# {vm}: {VM_PATHS.get(vm, '')}\n" for vm in vms.split())
    return (
        f"export VIC_CONSOLE_SOCKET={q(str(d / 'console.sock'))}\n"
        + paths
        + f'export VIC_LAB_VMS="{vms}"\n'
        + "# tethered (sealed sessions): vic console exec VM -- CMD..., vic console logs VM\n"
        + f'export VIC_LAB_TETHERED="{hosts.get("TETHERED", "")}"\n'
        + "# the Docker endpoint: docker ps, docker logs --tail 5 VM, docker exec -it VM sh,\n"
        + "# docker attach VM, docker wait VM\n"
        + f"export DOCKER_HOST={q('unix://' + str(docker_socket(d)))}\n"
        f"# metrics: {', '.join(names)}\n"
        f"export VIC_LAB_METRICS={q(' '.join(urls))}\n"
    )
