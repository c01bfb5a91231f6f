"""The relay admin socket: route.show / route.set moving live streams, bad requests."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import trio

from common.link.route import Route, Router
from relay.admin import AdminServer, admin_request, admin_request_sync
from relay.route_admin import route_commands
from tests.common.link.link_harness import MiB, acceptor, pattern, roundtrip, small_config
from tests.relay.faultproxy import FaultProxy


async def test_route_set_over_admin_socket_moves_live_stream(tmp_path: Path) -> None:
    cfg = small_config()
    sock = tmp_path / "relay.sock"
    data = pattern(6 * MiB, seed=2)
    with trio.fail_after(30):
        async with acceptor(cfg) as acc, trio.open_nursery() as n:
            a = FaultProxy(("127.0.0.1", acc.port))
            b = FaultProxy(("127.0.0.1", acc.port))
            await n.start(a.serve)
            await n.start(b.serve)
            router = Router(Route(a.address, tls=False, name="appliance"), n, config=cfg)
            changes: list[str] = []
            server = AdminServer(
                sock,
                route_commands(
                    lambda: {"appliance": router}, lambda name, r: changes.append(r.address)
                ),
            )
            await n.start(server.serve)
            assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
            st = await router.open_stream(b"x")

            async def move(sent: int) -> None:
                if sent == 2 * MiB:
                    reply = await admin_request(sock, {"cmd": "route.set", "address": b.address})
                    assert reply["ok"] and reply["streams_moved"] == 1, reply
                    a.refuse()

            assert await roundtrip(st, data, on_progress=move) == data
            assert changes == [b.address]
            shown = await trio.to_thread.run_sync(admin_request_sync, sock, {"cmd": "route.show"})
            assert shown["routes"]["appliance"]["address"] == b.address
            assert shown["routes"]["appliance"]["route_changes"] == 1
            n.cancel_scope.cancel()


async def test_bad_requests_get_an_error_line(tmp_path: Path) -> None:
    sock = tmp_path / "a.sock"
    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            router = Router(Route("tcp:127.0.0.1:9", tls=False), n)
            await n.start(AdminServer(sock, route_commands(lambda: {"r": router})).serve)
            cases: list[tuple[dict[str, Any], str]] = [
                ({"cmd": "nope"}, "unknown command"),
                ({"cmd": "route.set"}, "address"),
                ({"cmd": "route.set", "route": "zz", "address": "tcp:1.2.3.4:5"}, "unknown route"),
                ({"cmd": "route.set", "address": "carrier-pigeon:1"}, "unknown address kind"),
                (
                    {"cmd": "route.set", "address": "tcp:h:1", "tls": True, "identity": "bob"},
                    "identity",
                ),
            ]
            for req, msg in cases:
                reply = await admin_request(sock, req)
                assert not reply["ok"] and msg in reply["error"], (req, reply)
            s = await trio.open_unix_socket(str(sock))
            await s.send_all(b"{not json\n")
            assert b"not JSON" in await s.receive_some(1000)
            await s.aclose()
            assert router.route.address == "tcp:127.0.0.1:9"
            n.cancel_scope.cancel()


async def test_vic_relay_route_cli(tmp_path: Path) -> None:
    """``vic relay route show|set`` against a live admin socket, as an operator runs it."""
    import subprocess
    import sys

    sock = tmp_path / "r.sock"
    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            router = Router(Route("tcp:127.0.0.1:9", tls=False, name="appliance"), n)
            await n.start(AdminServer(sock, route_commands(lambda: {"appliance": router})).serve)

            def vic(*args: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run(
                    [sys.executable, "-m", "vic.cli", "relay", "route", *args],
                    capture_output=True,
                    text=True,
                    timeout=20,
                )

            r = await trio.to_thread.run_sync(
                vic,
                "set",
                "--admin-socket",
                str(sock),
                "--address",
                "unix:/run/x.sock",
                "--plaintext",
            )
            assert r.returncode == 0, r.stdout + r.stderr
            assert router.route.address == "unix:/run/x.sock"
            r = await trio.to_thread.run_sync(vic, "show", "--admin-socket", str(sock))
            assert r.returncode == 0 and "unix:/run/x.sock" in r.stdout
            r = await trio.to_thread.run_sync(vic, "show", "--admin-socket", str(tmp_path / "no"))
            assert r.returncode == 1 and "cannot reach" in r.stderr
            n.cancel_scope.cancel()


async def test_second_admin_server_refuses_a_live_socket(tmp_path: Path) -> None:
    """Two relays given one admin-socket: the second refuses, the first keeps serving."""
    sock = tmp_path / "a.sock"
    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            router = Router(Route("tcp:127.0.0.1:9", tls=False), n)
            await n.start(AdminServer(sock, route_commands(lambda: {"r": router})).serve)
            second = AdminServer(sock, route_commands(lambda: {"r": router}))
            try:
                await n.start(second.serve)
            except OSError as e:
                assert "in use" in str(e)
            else:
                raise AssertionError("the second admin server took a live socket")
            reply = await admin_request(sock, {"cmd": "route.show"})
            assert "r" in reply["routes"]
            n.cancel_scope.cancel()
    assert not sock.exists()  # removed when the first one stopped
