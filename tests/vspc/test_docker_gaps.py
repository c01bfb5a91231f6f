"""Docker verbs past the first cut: ``logs --until`` (with ``--tail`` and ``-f``) and
``docker exec -d`` (started, nothing attached, its exit code in the exec's inspect)."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

import pytest
import trio

from common.proto.session import channels as chs
from tests.vspc.docker_rig import STEP, Fifo, Rig, docker_rig, needs_docker

pytestmark = [pytest.mark.trio, needs_docker]


async def _api(rig: Rig, method: str, path: str, body: object = None) -> tuple[int, object]:
    """One request on its own connection (``Connection: close``): status, JSON body."""
    data = b"" if body is None else json.dumps(body).encode()
    s = await trio.open_unix_socket(str(rig.sock))
    head = f"{method} {path} HTTP/1.1\r\nHost: d\r\nConnection: close\r\n"
    head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    await s.send_all(head.encode() + data)
    out = bytearray()
    while chunk := await s.receive_some(65536):
        out += chunk
    await s.aclose()
    top, _, rest = bytes(out).partition(b"\r\n\r\n")
    status = int(top.split(b" ")[1])
    return status, (json.loads(rest) if rest.strip() else None)


async def test_logs_until_with_tail_and_follow(tmp_path: Path) -> None:
    async with docker_rig(tmp_path) as rig:
        flag = tmp_path / "flag"
        main = f"echo a1; echo e1 >&2; echo a2; while [ ! -e {flag} ]; do sleep 0.02; done; echo b1"
        await rig.vm("web", ["sh", "-c", main + "; exec sleep 100000"])
        await rig.logged("web", b"a2\n")
        await rig.logged("web", b"e1\n")
        cut = f"{time.time():.9f}"  # after a1 and a2 were logged, before b1 is written
        flag.touch()
        await rig.logged("web", b"b1\n")
        r = await rig.docker("logs", "--until", cut, "web")
        assert (r.code, r.out, r.err) == (0, b"a1\na2\n", b"e1\n"), r
        last = await rig.docker("logs", "--until", cut, "--tail", "1", "web")
        # the last line logged by then (stdout and stderr race each other: either)
        assert last.code == 0 and last.out + last.err in (b"a2\n", b"e1\n"), last
        every = await rig.docker("logs", "web")
        assert every.out == b"a1\na2\nb1\n", every
        # -f with --until in the past: what was logged by then, and the command ends
        with trio.fail_after(STEP):
            f = await rig.docker("logs", "-f", "--until", cut, "web")
        assert (f.code, f.out) == (0, b"a1\na2\n"), f
        bad = await rig.docker("logs", "--since", "2030-01-01", "--until", "2020-01-01", "web")
        assert bad.code != 0 and b"until is before since" in bad.err, bad


async def test_logs_follow_until_ends_at_that_time(tmp_path: Path) -> None:
    """``logs -f --until <soon>``: the lines up to then, and the follow ends by itself."""
    async with docker_rig(tmp_path) as rig:
        await rig.vm("web", ["sh", "-c", "echo early; exec sleep 100000"])
        await rig.logged("web", b"early\n")
        with trio.fail_after(STEP):
            f = await rig.docker("logs", "-f", "--until", f"{time.time() + 0.5:.3f}", "web")
        assert (f.code, f.out) == (0, b"early\n"), f


async def test_exec_detached_then_its_exit_code(tmp_path: Path) -> None:
    async with docker_rig(tmp_path) as rig:
        await rig.vm("web", ["sleep", "100000"])
        fifo = Fifo(tmp_path / "ran")
        # the docker client: -d returns at once, exit 0, nothing printed
        with trio.fail_after(STEP):
            r = await rig.docker("exec", "-d", "web", "sh", "-c", f"echo ran > {fifo.path}")
            assert (r.code, r.out, r.err) == (0, b"", b""), r
            await fifo.until(b"ran\n")
        # through the API: create, start detached (200, no hijack), inspect until it ended
        cmd = f"read x < {shlex.quote(str(fifo.path))}.go; exit 5"
        (tmp_path / "ran.go").touch()
        status, made = await _api(
            rig, "POST", "/v1.41/containers/web/exec", {"Cmd": ["sh", "-c", cmd]}
        )
        assert status == 201 and isinstance(made, dict), made
        xid = made["Id"]
        assert (await _api(rig, "POST", f"/v1.41/exec/{xid}/start", {"Detach": True}))[0] == 200
        again = await _api(rig, "POST", f"/v1.41/exec/{xid}/start", {"Detach": True})
        assert again[0] == 409, again  # started once only
        with trio.fail_after(STEP):
            while True:
                status, seen = await _api(rig, "GET", f"/v1.41/exec/{xid}/json")
                assert status == 200 and isinstance(seen, dict), seen
                if not seen["Running"]:
                    break
                await trio.sleep(0.02)  # docker's own client polls exec inspect too
        assert seen["ExitCode"] == 5, seen
        await fifo.aclose()


async def test_tty_exec_without_a_size_starts_at_the_first_resize(tmp_path: Path) -> None:
    """docker 20.10 (API 1.41) creates an exec with no ConsoleSize and resizes it just
    after the start: the process starts on a pty of that size, not 0x0."""
    async with docker_rig(tmp_path) as rig:
        vm = await rig.vm("web", ["sleep", "100000"])
        sizes: list[tuple[int, int]] = []
        on = vm.tether._on

        def spy(ev: chs.Event) -> None:
            if isinstance(ev, chs.ExecRequested):
                sizes.append((ev.spec.rows, ev.spec.cols))
            on(ev)

        vm.tether._on = spy  # type: ignore[method-assign]
        body = {"Cmd": ["stty", "size"], "Tty": True, "AttachStdout": True}
        status, made = await _api(rig, "POST", "/v1.41/containers/web/exec", body)
        assert status == 201 and isinstance(made, dict), made
        xid = made["Id"]
        s = await trio.open_unix_socket(str(rig.sock))
        start = json.dumps({"Tty": True}).encode()
        await s.send_all(
            f"POST /v1.41/exec/{xid}/start HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r\n"
            f"Upgrade: tcp\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(start)}\r\n\r\n".encode()
            + start
        )
        seen = bytearray()
        with trio.fail_after(STEP):
            while b"\r\n\r\n" not in seen:
                seen += await s.receive_some(65536)
            resized = await _api(rig, "POST", f"/v1.41/exec/{xid}/resize?h=33&w=77")
            assert resized[0] == 200, resized
            while data := await s.receive_some(65536):
                seen += data
        assert sizes == [(33, 77)], sizes
        assert seen.endswith(b"33 77\r\n"), seen
