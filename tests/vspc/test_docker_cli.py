"""The stock ``docker`` client against the appliance's Docker endpoint (issue 14):
ps, inspect, logs (--tail, -f), wait, kill, stop, and an unsupported verb."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.vspc.docker_rig import docker_rig, needs_docker

pytestmark = [pytest.mark.trio, needs_docker]

SEQ = "for i in 1 2 3 4 5; do echo line$i; done; echo oops >&2; exec sleep 100000"


async def test_version_ps_and_inspect(tmp_path: Path) -> None:
    async with docker_rig(tmp_path) as rig:
        vm = await rig.vm("web-1", ["sh", "-c", SEQ], address="10.0.0.5")
        v = await rig.docker("version", "--format", "{{.Server.APIVersion}}")
        assert (v.code, v.out.strip()) == (0, b"1.45"), v
        ps = await rig.docker("ps", "--format", "{{.Names}} {{.State}} {{.Command}}")
        assert ps.code == 0, ps
        assert ps.out.decode().split("\n")[0].startswith('web-1 running "sh -c for i'), ps
        got = await rig.docker("inspect", "web-1")
        assert got.code == 0, got
        (c,) = json.loads(got.out)
        assert c["Name"] == "/web-1"
        assert c["State"]["Status"] == "running" and c["State"]["Running"] is True
        assert c["State"]["StartedAt"] == "2023-11-14T22:13:20.000000000Z"
        assert c["NetworkSettings"]["IPAddress"] == "10.0.0.5"
        assert c["NetworkSettings"]["Networks"]["public"]["IPAddress"] == "10.0.0.5"
        assert c["Config"]["Cmd"] == ["sh", "-c", SEQ]
        assert c["Config"]["Tty"] is False and c["Config"]["OpenStdin"] is False
        by_id = await rig.docker("inspect", "--format", "{{.Name}}", c["Id"][:12])
        assert by_id.out.strip() == b"/web-1", by_id
        assert vm.session_id == "c-web-1"


async def test_logs_tail_and_streams(tmp_path: Path) -> None:
    async with docker_rig(tmp_path) as rig:
        await rig.vm("web-1", ["sh", "-c", SEQ])
        await rig.logged("web-1", b"line5\n")
        await rig.logged("web-1", b"oops\n")
        r = await rig.docker("logs", "web-1")  # multiplexed: the client splits the streams
        assert (r.code, r.out, r.err) == (0, b"line1\nline2\nline3\nline4\nline5\n", b"oops\n")
        tail = await rig.docker("logs", "--tail", "3", "web-1")
        assert len((tail.out + tail.err).splitlines()) == 3, tail
        assert tail.out.endswith(b"line5\n"), tail
        ts = await rig.docker("logs", "-t", "--tail", "1", "web-1", "--since", "2000-01-01")
        line = (ts.out + ts.err).decode()
        assert line[:2] == "20" and line[29:31] == "Z ", ts
        later = await rig.docker("logs", "--since", "2100-01-01T00:00:00Z", "web-1")
        assert (later.code, later.out, later.err) == (0, b"", b""), later


async def test_unknown_container_and_unsupported_verb(tmp_path: Path) -> None:
    async with docker_rig(tmp_path) as rig:
        r = await rig.docker("inspect", "nope")
        assert r.code == 1 and b"nope" in r.err, r
        run = await rig.docker("run", "--rm", "busybox", "true")
        assert run.code == 125, run
        assert b"does not create containers" in run.err, run
        assert run.err.startswith(b"docker: Error response from daemon: vic-channel: "), run
        first = run.err.splitlines()[0]  # one line (docker 20.10 ends it with a period)
        assert first.rstrip(b".").endswith(b"(POST /containers/create is not supported)"), run
        pull = await rig.docker("pull", "busybox")
        assert pull.code == 1 and b"does not create containers" in pull.err, pull
        rm = await rig.docker("rm", "x")
        assert rm.code == 1 and b"does not create containers" in rm.err, rm


async def test_exec_output_exit_code_and_stdin(tmp_path: Path) -> None:
    async with docker_rig(tmp_path) as rig:
        await rig.vm("web-1", ["sleep", "100000"])
        r = await rig.docker("exec", "web-1", "sh", "-c", "echo out; echo err >&2; exit 3")
        assert (r.code, r.out, r.err) == (3, b"out\n", b"err\n"), r
        cat = await rig.docker("exec", "-i", "web-1", "wc", "-c", stdin=b"x" * 100_000)
        assert (cat.code, cat.out.strip()) == (0, b"100000"), cat
        env = await rig.docker(
            "exec", "-e", "A=b", "-w", "/tmp", "web-1", "sh", "-c", 'echo "$A $PWD"'
        )
        assert env.out == b"b /tmp\n", env
        user = await rig.docker("exec", "-u", "nobody", "web-1", "id", "-un")
        assert user.out == b"nobody\n", user
        missing = await rig.docker("exec", "web-1", "/no/such/program")
        assert missing.code == 127, missing


async def test_top_info_and_request_metrics(tmp_path: Path) -> None:
    async with docker_rig(tmp_path) as rig:
        await rig.vm("web-1", ["sleep", "100000"])
        top = await rig.docker("top", "web-1", "-o", "pid,args")
        assert top.code == 0 and top.out.split(b"\n")[0].split() == [b"PID", b"COMMAND"], top
        assert b"sleep 100000" in top.out, top
        info = await rig.docker("info", "--format", "{{.Containers}} {{.ContainersRunning}}")
        assert (info.code, info.out) == (0, b"1 1\n"), info
        reg = rig.service.metrics.registry
        ok = reg.get_sample_value("vspc_docker_requests_total", {"verb": "top", "status": "2xx"})
        assert ok == 1.0
