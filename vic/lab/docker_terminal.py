"""The checks of lab scenario ``docker`` that need a terminal: the ``docker`` client
runs in a tmux window (a real pty), keys are typed with ``tmux send-keys``, the
window is resized with ``tmux resize-window``; what the container prints comes back
through a fifo (read as it is written, no polling).

* ``docker exec -it vm-dock-tty sh``: ``stty size`` in the container follows the
  window (30x100, then 40x120), the exec's exit code is docker's own;
* ``docker attach vm-dock-tty``: a typed line reaches the container (``cat`` echoes
  it into the container log), ctrl-p ctrl-q detaches (docker's exit 1, "read escape
  sequence") and the container carries on running.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import trio

from vic.lab.agent_processes import STEP_TIMEOUT
from vic.lab.docker_client import TTY, Docker
from vic.lab.session_checks import SessionCheck


class Fifo:
    """A fifo read without blocking; our own writer keeps it from reading EOF."""

    def __init__(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        os.mkfifo(path)
        self.path = path
        self.reader = trio.lowlevel.FdStream(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
        self._keep = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        self.seen = bytearray()

    async def until(self, want: bytes) -> None:
        while want not in self.seen:
            self.seen += await self.reader.receive_some(4096)

    async def aclose(self) -> None:
        os.close(self._keep)
        await self.reader.aclose()


class Tmux:
    def __init__(self, dk: Docker, sock: Path) -> None:
        self.dk = dk
        self.sock = sock

    async def __call__(self, *args: str, check: bool = True) -> None:
        tmux = shutil.which("tmux")
        assert tmux is not None
        await trio.run_process(
            [tmux, "-S", str(self.sock), *args],
            env=self.dk.env(),
            check=check,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def kill(self) -> None:
        with trio.CancelScope(shield=True):
            await self(*("kill-server",), check=False)


def no_tmux(what: str) -> SessionCheck | None:
    if shutil.which("tmux") is None:
        return SessionCheck(what, "skipped: no tmux", True, TTY)
    return None


async def check_exec_it(dk: Docker, d: Path) -> SessionCheck:
    what = "exec -it under tmux, window resized: stty size, exit 7"
    if (skip := no_tmux(what)) is not None:
        return skip
    fifo = Fifo(d / "exec-it.out")
    tmux = Tmux(dk, d / "tmux-exec.sock")
    f = shlex.quote(str(fifo.path))
    inner = f'stty size > {f}; while read x; do stty size > {f}; [ "$x" = q ] && exit 7; done'
    cmd = f"{dk.binary} exec -it {TTY} sh -c {shlex.quote(inner)}; echo EXIT=$? > {f}; sleep 600"
    try:
        with trio.fail_after(STEP_TIMEOUT):
            await tmux("new-session", "-d", "-x", "100", "-y", "30", cmd)
            await _size_seen(tmux, fifo, b"30 100\n")
            await tmux("resize-window", "-x", "120", "-y", "40")
            await _size_seen(tmux, fifo, b"40 120\n")
            await tmux("send-keys", "q", "Enter")
            await fifo.until(b"EXIT=7\n")
    except trio.TooSlowError:
        return SessionCheck(what, f"timed out; saw {bytes(fifo.seen)!r}", False, TTY)
    finally:
        await tmux.kill()
        await fifo.aclose()
    sizes = [ln for ln in bytes(fifo.seen).decode().splitlines() if ln and "EXIT" not in ln]
    seen = f"stty size {' -> '.join(dict.fromkeys(sizes))}, {fifo.seen.splitlines()[-1].decode()}"
    ok = "30 100" in sizes and sizes[-1] == "40 120" and fifo.seen.endswith(b"EXIT=7\n")
    return SessionCheck(what, seen, ok, TTY)


async def _size_seen(tmux: Tmux, fifo: Fifo, size: bytes) -> None:
    """Until ``stty size`` in the exec printed ``size``: a key a time, each answered by
    one ``stty size`` (the resize and the keys reach the container by separate ways;
    docker 20.10 sizes an exec's pty only once it started, so it may begin at 0 0)."""
    await fifo.until(b"\n")
    while size not in fifo.seen:
        n = len(fifo.seen)
        await tmux("send-keys", "again", "Enter")
        while len(fifo.seen) == n or not fifo.seen.endswith(b"\n"):
            fifo.seen += await fifo.reader.receive_some(4096)


async def check_attach_detach(dk: Docker, d: Path) -> SessionCheck:
    what = "attach under tmux: a typed line in, ctrl-p ctrl-q out"
    if (skip := no_tmux(what)) is not None:
        return skip
    fifo = Fifo(d / "attach.out")
    tmux = Tmux(dk, d / "tmux-attach.sock")
    f = shlex.quote(str(fifo.path))
    cmd = f"{dk.binary} attach {TTY}; echo EXIT=$? > {f}; sleep 600"
    try:
        with trio.fail_after(STEP_TIMEOUT):
            await tmux("new-session", "-d", "-x", "90", "-y", "25", cmd)
            await tmux("send-keys", "hello-from-attach", "C-j")  # a line: LF
            await dk.logged(TTY, b"hello-from-attach")  # typed into the container
            await tmux("send-keys", "C-p", "C-q")
            await fifo.until(b"\n")
    except (trio.TooSlowError, EOFError) as e:
        return SessionCheck(what, f"failed: {e or 'timed out'}", False, TTY)
    finally:
        await tmux.kill()
        await fifo.aclose()
    st = await dk.run("inspect", "-f", "{{.State.Status}}", TTY)
    ok = fifo.seen == b"EXIT=1\n" and st.stdout == b"running\n"
    seen = f"typed line logged; {bytes(fifo.seen).strip().decode()}, then {st.stdout.strip()!r}"
    return SessionCheck(what, seen, ok, TTY)
