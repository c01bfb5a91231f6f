"""``docker exec -it`` in a real terminal (tmux): the pty's size follows the
terminal's, seen by ``stty size`` in the container; the exit code is docker's own.
Output comes back through a fifo, read as it is written (no polling)."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pytest
import trio

from tests.vspc.docker_rig import DOCKER, STEP, Fifo, Rig, docker_rig, needs_docker

TMUX = shutil.which("tmux")
pytestmark = [
    pytest.mark.trio,
    needs_docker,
    pytest.mark.skipif(TMUX is None, reason="no tmux"),
]


async def _tmux(rig: Rig, sock: Path, *args: str, check: bool = True) -> None:
    assert TMUX is not None
    await trio.run_process([TMUX, "-S", str(sock), *args], env=rig.env(), check=check)


async def test_exec_it_follows_the_terminal_size(tmp_path: Path) -> None:
    async with docker_rig(tmp_path) as rig:
        vm = await rig.vm("web", ["sleep", "100000"])
        fifo = Fifo(tmp_path / "out")
        sock = tmp_path / "tmux.sock"
        f = shlex.quote(str(fifo.path))
        inner = f"stty size > {f}; read x; stty size > {f}; exit 7"
        cmd = f"{DOCKER} exec -it web sh -c {shlex.quote(inner)}; echo EXIT=$? > {f}; sleep 600"
        try:
            with trio.fail_after(STEP):
                await _tmux(rig, sock, "new-session", "-d", "-x", "100", "-y", "30", cmd)
                await fifo.until(b"30 100\n")
                while (40, 120) not in vm.tether.resized:
                    vm.tether.resize_seen = trio.Event()
                    await _tmux(rig, sock, "resize-window", "-x", "120", "-y", "40")
                    await vm.tether.resize_seen.wait()
                await _tmux(rig, sock, "send-keys", "go", "Enter")
                await fifo.until(b"40 120\n")
                await fifo.until(b"EXIT=7\n")
        finally:
            await _tmux(rig, sock, "kill-server", check=False)
            await fifo.aclose()


async def test_logs_of_a_tty_container_are_raw(tmp_path: Path) -> None:
    async with docker_rig(tmp_path) as rig:
        await rig.vm("term", ["sh", "-c", "echo one; echo two; exec sleep 100000"], tty=True)
        await rig.logged("term", b"two\n")
        r = await rig.docker("logs", "term")  # no frame headers in the output
        assert (r.code, r.out, r.err) == (0, b"one\ntwo\n", b""), r
        tail = await rig.docker("logs", "--tail", "1", "term")
        assert tail.out == b"two\n", tail


async def test_attach_in_a_terminal_then_detach_keys(tmp_path: Path) -> None:
    async with docker_rig(tmp_path) as rig:
        vm = await rig.vm("term", ["cat"], tty=True, openstdin=True)
        fifo = Fifo(tmp_path / "out")
        sock = tmp_path / "tmux.sock"
        f = shlex.quote(str(fifo.path))
        cmd = f"{DOCKER} attach term; echo EXIT=$? > {f}; sleep 600"
        try:
            with trio.fail_after(STEP):
                await _tmux(rig, sock, "new-session", "-d", "-x", "90", "-y", "25", cmd)
                while (25, 90) not in vm.tether.resized:  # the client sizes the main pty
                    vm.tether.resize_seen = trio.Event()
                    await vm.tether.resize_seen.wait()
                await _tmux(rig, sock, "send-keys", "hello", "C-j")  # a line: LF
                await rig.logged("term", b"hello")  # typed into the container
                await _tmux(rig, sock, "send-keys", "C-p", "C-q")
                await fifo.until(b"EXIT=1\n")  # docker's own: "read escape sequence", 1
        finally:
            await _tmux(rig, sock, "kill-server", check=False)
            await fifo.aclose()
        st = await rig.docker("inspect", "-f", "{{.State.Status}}", "term")
        assert st.out == b"running\n", st  # detached, not stopped
