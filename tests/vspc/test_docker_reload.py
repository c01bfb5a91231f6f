"""``[docker]`` on SIGHUP (``VspcService.reload``): socket mode, max-clients, the
socket path and the TCP listener change while a hijacked ``docker exec -i`` carries on
across the reload, its input and output intact."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from tests.vspc.docker_rig import DOCKER, STEP, Rig, docker_rig, needs_docker
from vspc.docker_config import DockerConfig, DockerTcpConfig

pytestmark = [pytest.mark.trio, needs_docker]


async def _reload(rig: Rig, **changes: object) -> DockerConfig:
    cfg = rig.service.config
    await rig.service.reload(replace(cfg, docker=replace(cfg.docker, **changes)))  # type: ignore[arg-type]
    return rig.service.config.docker


async def _line(proc: trio.Process, line: bytes, seen: bytearray) -> None:
    """Send ``line`` to a running ``docker exec -i ... cat``; until it comes back."""
    assert proc.stdin is not None and proc.stdout is not None
    await proc.stdin.send_all(line)
    while not seen.endswith(line):
        data = await proc.stdout.receive_some(65536)
        assert data, bytes(seen)
        seen += data


async def _cat(rig: Rig) -> trio.Process:
    assert DOCKER is not None
    return await trio.lowlevel.open_process(
        [DOCKER, "exec", "-i", "web", "cat"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=rig.env(),
    )


async def test_mode_and_max_clients_apply_with_a_live_exec(tmp_path: Path) -> None:
    async with docker_rig(tmp_path) as rig:
        await rig.vm("web", ["sleep", "100000"])
        docker = rig.service.docker
        assert docker is not None
        proc, seen = await _cat(rig), bytearray()
        with trio.fail_after(STEP):
            await _line(proc, b"before\n", seen)
            group = str(os.getgid() if os.geteuid() else 65534)  # root may give it away
            cfg = await _reload(rig, socket_mode=0o600, socket_group=group, max_clients=7)
            assert (cfg.socket_mode, cfg.max_clients, docker.config.max_clients) == (0o600, 7, 7)
            st = rig.sock.stat()
            assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o600, int(group))
            await _line(proc, b"after\n", seen)  # the hijacked exec carried on
            ps = await rig.docker("ps", "--format", "{{.Names}}")
            assert ps.out == b"web\n", ps
            assert proc.stdin is not None
            await proc.stdin.aclose()
            assert await proc.wait() == 0
        assert seen == b"before\nafter\n"


async def test_new_socket_path_and_tcp_listener(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with docker_rig(tmp_path) as rig:
        await rig.vm("web", ["sleep", "100000"])
        docker = rig.service.docker
        assert docker is not None
        old = rig.sock
        proc, seen = await _cat(rig), bytearray()
        with trio.fail_after(STEP):
            await _line(proc, b"one\n", seen)
            new = tmp_path / "moved" / "docker.sock"
            tcp = DockerTcpConfig(host="127.0.0.1", port=0)
            cfg = await _reload(rig, socket=new, tcp=tcp)
            assert (cfg.socket, docker.unix_path) == (new, new)
            assert new.is_socket() and not old.exists()  # the old path went with its listener
            rig.sock = new
            ps = await rig.docker("ps", "--format", "{{.Names}}")
            assert ps.out == b"web\n", ps
            host, port = docker.tcp_addresses[0]
            on_tcp = await rig.docker(
                "-H", f"tcp://{host}:{port}", "inspect", "-f", "{{.Name}}", "web"
            )
            assert on_tcp.out == b"/web\n", on_tcp
            await _line(proc, b"two\n", seen)  # the live exec came through the old socket
            # the TCP listener moves to another address; the old one is closed
            cfg = await _reload(rig, tcp=DockerTcpConfig(host="127.0.0.2", port=0))
            assert docker.tcp_addresses[0][0] == "127.0.0.2"
            h2, p2 = docker.tcp_addresses[0]
            moved = await rig.docker("-H", f"tcp://{h2}:{p2}", "ps", "--format", "{{.Names}}")
            assert moved.out == b"web\n", moved
            with pytest.raises(OSError):
                await trio.open_tcp_stream(host, port)
            with caplog.at_level(logging.WARNING, logger="vspc.docker"):
                cfg = await _reload(rig, enabled=False)
            assert cfg.enabled and "docker.enabled changes only at restart" in caplog.text
            await _line(proc, b"three\n", seen)
            assert proc.stdin is not None
            await proc.stdin.aclose()
            assert await proc.wait() == 0


async def test_a_socket_path_that_cannot_be_opened_keeps_the_old(tmp_path: Path) -> None:
    async with docker_rig(tmp_path) as rig:
        (tmp_path / "file").write_text("not a directory")
        cfg = await _reload(rig, socket=tmp_path / "file" / "docker.sock", max_clients=9)
        assert (cfg.socket, cfg.max_clients) == (rig.sock, 9)  # the rest applied
        ping = await rig.docker("version", "--format", "{{.Server.Os}}")
        assert (ping.code, ping.out) == (0, b"linux\n"), ping
