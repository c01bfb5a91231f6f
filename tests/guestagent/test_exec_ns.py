"""Exec into another process's namespaces, cgroups, environment and working directory.

The "container" is a shell started by ``unshare`` in new uts, mount, ipc, net and pid
namespaces (with its own /proc), which sets a hostname, mounts a tmpfs with a marker
file and waits; the test puts it in fresh cgroups of its own."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from guestagent.execproc import ExecProcess, start_exec
from guestagent.execspec import STDERR, STDOUT, TTY, ExecSpec, ExecStartError, ExitStatus, Stream
from guestagent.reaper import Child, Reaper

T = 20  # safety net only
NAMESPACES = ("mnt", "net", "ipc", "uts", "pid")
CONTAINER = (
    "hostname vic-exec-ns && mount -t tmpfs tmpfs /mnt && echo marker > /mnt/marker"
    " && cd /mnt && export FOO=container-foo && echo ready && exec cat"
)


@pytest.fixture
async def reaper(nursery: trio.Nursery) -> AsyncIterator[Reaper]:
    r = Reaper()
    await nursery.start(r.run)
    yield r


async def read_all(p: ExecProcess, stream: Stream) -> bytes:
    buf = bytearray()
    while chunk := await p.read(stream):
        buf += chunk
    return bytes(buf)


@dataclass
class Container:
    unshare: Child
    pid: int  # the shell inside, pid 1 of its pid namespace
    stdin: int


def _unshare_usable() -> str | None:
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    if os.geteuid() != 0:
        return "entering namespaces needs root"
    r = subprocess.run(["unshare", "--uts", "--fork", "true"], capture_output=True)
    if r.returncode != 0:
        return f"unshare does not work here: {r.stderr.decode(errors='replace').strip()}"
    return None


@pytest.fixture
def cgroups() -> Iterator[list[Path]]:
    """Fresh cgroups (one per writable hierarchy), removed afterwards."""
    made: list[Path] = []
    for top in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup/unified")):
        d = top / f"vic-exec-test-{os.getpid()}"
        try:
            d.mkdir()
            made.append(d)
        except OSError:
            pass
    yield made
    for d in made:
        try:
            d.rmdir()
        except OSError:
            pass


@pytest.fixture
async def container(reaper: Reaper, cgroups: list[Path]) -> AsyncIterator[Container]:
    why = _unshare_usable()
    if why is not None:
        pytest.skip(why)
    argv = ["unshare", "--uts", "--mount", "--ipc", "--net", "--pid", "--fork", "--mount-proc"]
    out_r, out_w = os.pipe()
    in_r, in_w = os.pipe()
    child = reaper.spawn([*argv, "sh", "-c", CONTAINER], stdin=in_r, stdout=out_w, close_fds=True)
    os.close(out_w)
    os.close(in_r)
    with trio.fail_after(T):
        async with trio.lowlevel.FdStream(out_r) as out:
            assert await out.receive_some(100) == b"ready\n"
    c = Container(child, _only_child(child.pid), in_w)
    for d in cgroups:
        _write(d / "cgroup.procs", str(c.pid))
    try:
        yield c
    finally:
        os.close(in_w)  # cat ends: pid 1 of the namespace exits, the kernel kills the rest
        with trio.fail_after(T):
            await child.wait()


def _only_child(pid: int) -> int:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        (kid,) = f.read().split()
    return int(kid)


def _write(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def ns_id(pid: int | str, name: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{name}")


async def test_exec_enters_namespaces_and_cgroups(
    reaper: Reaper, container: Container, cgroups: list[Path]
) -> None:
    script = (
        "hostname; cat /mnt/marker; pwd; echo $FOO; echo $$; "
        "for n in mnt net ipc uts pid; do readlink /proc/self/ns/$n; done; cat /proc/self/cgroup"
    )
    with trio.fail_after(T):
        p = await start_exec(
            ExecSpec(["sh", "-c", script]), reaper=reaper, container_pid=container.pid
        )
        async with p:
            out, err = await read_all(p, STDOUT), await read_all(p, STDERR)
            assert await p.wait() == ExitStatus(0, None), err
    lines = out.decode().splitlines()
    host, marker, cwd, foo, inner_pid = lines[:5]
    assert (host, marker, cwd, foo) == ("vic-exec-ns", "marker", "/mnt", "container-foo")
    assert int(inner_pid) != p.pid  # its pid inside the container's pid namespace
    assert lines[5:10] == [ns_id(container.pid, n) for n in NAMESPACES]
    assert lines[5:10] != [ns_id("self", n) for n in NAMESPACES]
    for d in cgroups:
        assert f":/{d.name}" in out.decode(), f"not in cgroup {d}: {lines[10:]}"
    assert os.uname().nodename != "vic-exec-ns"  # the agent itself was not moved


async def test_spec_overrides_container_env_and_cwd(reaper: Reaper, container: Container) -> None:
    spec = ExecSpec(["sh", "-c", "echo $FOO; pwd; id -u"], env={"FOO": "mine"}, cwd="/", user="1")
    with trio.fail_after(T):
        async with await start_exec(spec, reaper=reaper, container_pid=container.pid) as p:
            out = await read_all(p, STDOUT)
            assert await p.wait() == ExitStatus(0, None)
    assert out.decode().split() == ["mine", "/", "1"]


async def test_tty_exec_in_container(reaper: Reaper, container: Container) -> None:
    spec = ExecSpec(["sh", "-c", "stty size; hostname"], tty=True, rows=33, cols=99)
    with trio.fail_after(T):
        async with await start_exec(spec, reaper=reaper, container_pid=container.pid) as p:
            out = await read_all(p, TTY)
            assert await p.wait() == ExitStatus(0, None)
    assert out == b"33 99\r\nvic-exec-ns\r\n"


async def test_cwd_and_user_are_resolved_inside(reaper: Reaper, container: Container) -> None:
    # the host's /mnt is hidden in the container by its tmpfs: a directory made there
    # exists only outside, and is refused; /mnt/marker exists only inside
    outside = f"/mnt/vic-exec-outside-{os.getpid()}"
    os.mkdir(outside)
    try:
        with pytest.raises(ExecStartError, match=f"working directory {outside}: No such"):
            await start_exec(
                ExecSpec(["true"], cwd=outside), reaper=reaper, container_pid=container.pid
            )
    finally:
        os.rmdir(outside)
    spec = ExecSpec(["test", "-e", "/mnt/marker"], cwd="/mnt")
    async with await start_exec(spec, reaper=reaper, container_pid=container.pid) as p:
        assert await p.wait() == ExitStatus(0, None)


async def test_gone_container_is_refused(reaper: Reaper) -> None:
    child = reaper.spawn(["true"])
    await child.wait()
    with pytest.raises(ExecStartError, match=f"container process {child.pid} is gone"):
        await start_exec(ExecSpec(["true"]), reaper=reaper, container_pid=child.pid)


async def test_own_namespaces_need_no_setns(reaper: Reaper) -> None:
    """container_pid = the agent itself: nothing differs, the exec just runs."""
    spec = ExecSpec(["sh", "-c", "readlink /proc/self/ns/mnt"])
    async with await start_exec(spec, reaper=reaper, container_pid=os.getpid()) as p:
        out = await read_all(p, STDOUT)
        assert await p.wait() == ExitStatus(0, None)
    assert out.decode().strip() == ns_id("self", "mnt")


async def test_ten_execs_into_the_container_at_once(reaper: Reaper, container: Container) -> None:
    """No namespace fd reaches the execs, and the agent's own pid namespace for its
    children is back after each spawn."""
    outs: dict[int, bytes] = {}

    async def one(i: int) -> None:
        spec = ExecSpec(["sh", "-c", f"hostname; ls /proc/$$/fd; exit {i}"])
        async with await start_exec(spec, reaper=reaper, container_pid=container.pid) as p:
            outs[i] = await read_all(p, STDOUT)
            assert await p.wait() == ExitStatus(i, None)

    with trio.fail_after(T):
        async with trio.open_nursery() as n:
            for i in range(10):
                n.start_soon(one, i)
    assert all(out.split() == [b"vic-exec-ns", b"0", b"1", b"2"] for out in outs.values())
    assert len(outs) == 10
    assert ns_id("thread-self", "pid_for_children") == ns_id("self", "pid")
