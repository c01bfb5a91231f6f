"""Hostile HTTP on the Docker endpoint: each bad client costs its own connection only.

Malformed requests and oversized heads get docker's error JSON and a close; a
client that hangs up during ``logs -f`` leaves nothing behind; keep-alive
serves several requests on one connection; a big body to an unsupported verb
still gets its one-line answer; ``[docker]`` refuses plaintext TCP off loopback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
import trio.testing

from common.io.guestinfo.filestore import FileStore
from common.ops import config as cfgmod
from common.proto import guestinfo as gi
from tests.vspc.docker_rig import STEP, Fifo, Rig, docker_rig
from vspc.config import VspcConfig

pytestmark = pytest.mark.trio


async def _connect(rig: Rig) -> trio.SocketStream:
    return await trio.open_unix_socket(str(rig.sock))


async def _read_all(s: trio.SocketStream) -> bytes:
    out = bytearray()
    while data := await s.receive_some(65536):
        out += data
    return bytes(out)


async def _response(s: trio.SocketStream) -> tuple[int, bytes]:
    """One response with a Content-Length body: (status, body)."""
    buf = bytearray()
    while b"\r\n\r\n" not in buf:
        data = await s.receive_some(65536)
        assert data, bytes(buf)
        buf += data
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    body = bytearray(rest)
    while len(body) < length:
        body += await s.receive_some(65536)
    return int(head.split(b" ")[1]), bytes(body)


async def _ping_ok(rig: Rig) -> None:
    s = await _connect(rig)
    await s.send_all(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
    assert await _response(s) == (200, b"OK")
    await s.aclose()


async def test_malformed_and_huge_requests_cost_their_connection(tmp_path: Path) -> None:
    async with docker_rig(tmp_path, max_header_bytes=4096) as rig:
        with trio.fail_after(STEP):
            bad = await _connect(rig)
            await bad.send_all(b"THIS IS NOT HTTP\r\n\r\n")
            raw = await _read_all(bad)  # answered, then closed
            assert raw.startswith(b"HTTP/1.1 400 "), raw
            assert json.loads(raw.split(b"\r\n\r\n", 1)[1])["message"].startswith("bad request")
            huge = await _connect(rig)
            await huge.send_all(b"GET /_ping HTTP/1.1\r\nHost: d\r\nX-Big: " + b"a" * 8000)
            raw = await _read_all(huge)
            assert raw.startswith(b"HTTP/1.1 431 "), raw
            bad_version = await _connect(rig)
            await bad_version.send_all(b"GET /v9.99/info HTTP/1.1\r\nHost: d\r\n\r\n")
            status, body = await _response(bad_version)
            assert status == 400 and b"too new" in body
            await _ping_ok(rig)


async def test_keep_alive_and_unsupported_with_a_body(tmp_path: Path) -> None:
    async with docker_rig(tmp_path) as rig:
        with trio.fail_after(STEP):
            s = await _connect(rig)
            for _ in range(3):
                await s.send_all(b"GET /v1.45/version HTTP/1.1\r\nHost: d\r\n\r\n")
                status, body = await _response(s)
                assert status == 200 and json.loads(body)["ApiVersion"] == "1.45"
            big = b"x" * (3 << 20)  # a build context: not read into memory, not waited on
            await s.send_all(
                b"POST /v1.45/build HTTP/1.1\r\nHost: d\r\nContent-Length: %d\r\n\r\n" % len(big)
            )
            async with trio.open_nursery() as n:
                n.start_soon(s.send_all, big)
                status, body = await _response(s)
            assert status == 501 and b"does not create containers" in body
            await s.send_all(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")  # and on it goes
            assert await _response(s) == (200, b"OK")


async def test_client_gone_mid_follow_costs_nothing(tmp_path: Path) -> None:
    async with docker_rig(tmp_path) as rig:
        await rig.vm("quiet", ["sleep", "100000"])
        docker = rig.service.docker
        assert docker is not None
        with trio.fail_after(STEP):
            s = await _connect(rig)
            await s.send_all(
                b"GET /v1.45/containers/quiet/logs?follow=1&stdout=1 HTTP/1.1\r\nHost: d\r\n\r\n"
            )
            head = await s.receive_some(65536)
            assert head.startswith(b"HTTP/1.1 200 "), head
            assert docker.clients == 1
            await s.aclose()  # gone while nothing is written
            while docker.clients:
                await docker.clients_changed.wait()
            await _ping_ok(rig)


async def test_slow_request_head_is_closed(tmp_path: Path) -> None:
    async with docker_rig(tmp_path, request_timeout=0.2) as rig:
        with trio.fail_after(STEP):
            s = await _connect(rig)
            await s.send_all(b"GET /_ping HTTP/1.1\r\n")  # and never the rest
            assert await _read_all(s) == b""
        errors = rig.service.metrics.registry.get_sample_value(
            "vspc_protocol_errors_total", {"where": "docker"}
        )
        assert errors == 1.0


async def test_vspc_check_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vic.cli import main

    path = tmp_path / "vspc.toml"
    path.write_text(
        f'[console]\nsocket = "{tmp_path}/c.sock"\nlog-dir = "{tmp_path}"\n'
        '[docker]\nenabled = true\nsocket = "' + f'{tmp_path}/d.sock"\n'
        '[docker.tcp]\nhost = "0.0.0.0"\n'
    )
    assert main(["vspc", "--config", str(path), "--check"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "docker.tcp.tls:" in line and "plaintext" in line, line


async def test_plaintext_tcp_off_loopback_is_refused(tmp_path: Path) -> None:
    base = f'[console]\nsocket = "{tmp_path}/c.sock"\nlog-dir = "{tmp_path}"\n'
    with pytest.raises(cfgmod.ConfigError) as e:
        cfgmod.loads(VspcConfig, base + '[docker.tcp]\nhost = "0.0.0.0"\n')
    assert e.value.key == "docker.tcp.tls"
    (tmp_path / "c.pem").write_text("x")
    tls = f'[docker.tcp.tls]\ncert = "{tmp_path}/c.pem"\nkey = "{tmp_path}/c.pem"\n'
    with pytest.raises(cfgmod.ConfigError) as e2:
        cfgmod.loads(VspcConfig, base + '[docker.tcp]\nhost = "0.0.0.0"\n' + tls)
    assert e2.value.key == "docker.tcp.tls.client-ca"
    ok = cfgmod.loads(
        VspcConfig,
        base + '[docker]\nenabled = true\nsocket = "' + f'{tmp_path}/d.sock"\n[docker.tcp]\n',
    )
    assert ok.docker.tcp is not None and ok.docker.tcp.host == "127.0.0.1"
    with pytest.raises(cfgmod.ConfigError) as e3:
        cfgmod.loads(VspcConfig, base + '[docker]\nsocket-owner = "no-such-user-here"\n')
    assert e3.value.key == "docker.socket-owner"


async def test_hijacked_client_killed_ends_its_exec(tmp_path: Path) -> None:
    """docker exec (no -i: the client half-closes at once) of a quiet process; the
    client is killed: its connection goes and the exec with it."""
    async with docker_rig(tmp_path) as rig:
        await rig.vm("web", ["sleep", "100000"])
        docker = rig.service.docker
        assert docker is not None
        fifo = Fifo(tmp_path / "started")
        reg = rig.service.metrics.registry
        with trio.fail_after(STEP):
            quiet = f"echo started > {fifo.path}; exec sleep 100000"
            proc = await rig.open_docker("exec", "web", "sh", "-c", quiet)
            await fifo.until(b"started\n")  # the exec runs in the VM, writing nothing
            assert docker.clients >= 1  # the hijacked one, maybe one kept alive
            proc.kill()
            await proc.wait()
            while docker.clients:
                await docker.clients_changed.wait()
        assert reg.get_sample_value("vspc_session_execs_finished_total", {"outcome": "cancelled"})
        await fifo.aclose()


async def test_max_clients_closes_the_extra_one(tmp_path: Path) -> None:
    """Full of connections busy in a request (``docker wait``: an idle one would be
    closed to make room, see tests/hostile/test_docker_http.py), a new one is closed."""
    async with docker_rig(tmp_path, max_clients=2) as rig:
        docker = rig.service.docker
        assert docker is not None
        await rig.vm("web-1", ["sleep", "100000"])
        with trio.fail_after(STEP):
            held = [await _connect(rig), await _connect(rig)]
            for s in held:
                await s.send_all(b"POST /containers/web-1/wait HTTP/1.1\r\nHost: d\r\n\r\n")
                head = b""
                while b"\r\n\r\n" not in head:  # the wait's head: it is in its request
                    head += await s.receive_some(65536)
            extra = await _connect(rig)
            assert await _read_all(extra) == b""  # closed at accept
            await held[0].aclose()
            while docker.clients > 1:
                await docker.clients_changed.wait()
            await _ping_ok(rig)  # room again
            await held[1].aclose()


async def test_a_vm_known_only_by_its_guestinfo(tmp_path: Path) -> None:
    """No session: ps, inspect and wait from the published guestinfo alone."""
    async with docker_rig(tmp_path) as rig:
        store = FileStore(rig.gi_dir / "old-vm.json")
        cfg = gi.SessionConfig(id="s1", path="/bin/true")
        store.update(gi.encode_sessions([cfg]) | gi.encode_started("s1", True, starttime=10))
        store.update(gi.encode_exit("s1", 3, 20))
        ps = await rig.docker("ps", "-a", "--format", "{{.Names}} {{.Status}}")
        assert ps.out.startswith(b"old-vm Exited (3) "), ps
        w = await rig.docker("wait", "old-vm")
        assert w.out == b"3\n", w
        failed = FileStore(rig.gi_dir / "bad-vm.json")
        failed.update(gi.encode_sessions([cfg]) | gi.encode_started("s1", False, "no such file"))
        st = await rig.docker("inspect", "-f", "{{.State.Status}} {{.State.Error}}", "bad-vm")
        assert st.out == b"exited no such file\n", st


async def test_socket_mode_and_group(tmp_path: Path) -> None:
    async with docker_rig(tmp_path, socket_mode=0o620, socket_group="1") as rig:
        st = rig.sock.stat()
        assert (st.st_mode & 0o777, st.st_gid) == (0o620, 1)
        await _ping_ok(rig)


async def test_stop_listening_keeps_open_connections(tmp_path: Path) -> None:
    async with docker_rig(tmp_path) as rig:
        docker = rig.service.docker
        assert docker is not None
        with trio.fail_after(STEP):
            s = await _connect(rig)
            await docker.stop_listening()  # as the vSPC's drain does
            assert not rig.sock.exists()
            await s.send_all(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
            assert await _response(s) == (200, b"OK")


async def test_idle_keep_alive_closes_quietly(tmp_path: Path) -> None:
    async with docker_rig(tmp_path, request_timeout=0.2) as rig:
        errors = {"where": "docker"}
        reg = rig.service.metrics.registry
        with trio.fail_after(STEP):
            s = await _connect(rig)
            await s.send_all(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
            assert await _response(s) == (200, b"OK")
            assert await _read_all(s) == b""  # idle past the timeout: closed
        assert not reg.get_sample_value("vspc_protocol_errors_total", errors)
