"""The mesh the fault suite breaks: three hosts, each on its own loopback address.

    VM (this test) --tcp--> esx-a relay (127.0.0.2) ==TLS peer link==> esx-b relay
    (127.0.0.3) --> appliance, `vic vspc` (127.0.0.4)

esx-b either ends the sessions and delivers over a plain TCP egress to the
appliance's endpoint (``role="egress"``), or forwards the whole link to the
appliance's ``[[endpoint.link]]`` (``role="forward"``), where the sessions end.
The appliance writes what the VM sends to its console log; an attached console
client types what goes to the VM.

Streams are counter lines (``%010d\\n``), so a hole and a repeat are told apart
and located (``explain``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from common.proto.console import protocol as proto
from tests.relay.pki_helpers import Pki
from tests.support.daemons import Daemon, Daemons, Table, free_port
from tests.support.waiting import wait_until, wait_until_async
from vspc.console.client import ConsoleClientError, attach, list_consoles
from vspc.console.client import Endpoint as ConsoleEndpoint

A, B, APP = "127.0.0.2", "127.0.0.3", "127.0.0.4"
VM = "vm-1"
LABEL = "com1"
# fast failure detection; resume windows far longer than any restart here
LINK = {"ping-interval": 0.5, "dead-after": 2.0, "resume-timeout": 40.0}
LINE = 11


def counter(first: int, count: int) -> bytes:
    return b"".join(b"%010d\n" % i for i in range(first, first + count))


def explain(got: bytes, want: bytes) -> str:
    """Where ``got`` leaves ``want``: the first differing line, as a hole or a repeat."""
    if got == want:
        return "identical"
    i = next(
        (k for k in range(min(len(got), len(want))) if got[k] != want[k]), min(len(got), len(want))
    )
    line = i // LINE
    seen = got[line * LINE : (line + 1) * LINE]
    return (
        f"{len(got)} bytes for {len(want)}: first difference at byte {i} (line {line}), "
        f"got {seen!r} where line {line} was due"
    )


def _tls(files: Any) -> Table:
    return {"cert": str(files.cert), "key": str(files.key), "ca": str(files.ca)}


def _esx_a(pki: Pki, vm_port: int, peer_port: int) -> Table:
    """Relay esx-a: the VM's listener, its peer route to esx-b."""
    return {
        "host": "esx-a",
        "egress": {"default": {"kind": "peer", "route": "appliance"}},
        "metrics": {"enabled": False},
        "timeouts": {"retry-min": 0.05, "retry-max": 0.5, "drain": 2.0},
        "tcp": [{"name": "vm1", "vm": VM, "host": A, "port": vm_port, "label": LABEL}],
        "peer": {
            "tls": _tls(pki.issue("host", "esx-a")),
            "link": LINK,
            "routes": {
                "appliance": {
                    "address": f"tcp:{B}:{peer_port}",
                    "identity": "vic://host/esx-b",
                }
            },
        },
    }


def _esx_b(pki: Pki, role: str, peer_port: int, endpoint_port: int, link_port: int) -> Table:
    """Relay esx-b: takes esx-a's link; ends its sessions, or forwards the link."""
    listen: Table = {"address": f"tcp:{B}:{peer_port}", "allowed-peers": ["vic://host/esx-a"]}
    if role == "forward":
        listen["forward"] = f"tcp:{APP}:{link_port}"
    else:
        listen["egress"] = "appliance"
    return {
        "host": "esx-b",
        "egress": {"appliance": {"kind": "tcp", "host": APP, "port": endpoint_port}},
        "metrics": {"enabled": False},
        "timeouts": {"drain": 2.0},
        "peer": {"tls": _tls(pki.issue("host", "esx-b")), "link": LINK, "listen": [listen]},
    }


class Mesh:
    def __init__(
        self, tmp: Path, daemons: Daemons, *, role: str, resend_bytes: int = 8 << 20
    ) -> None:
        pki = Pki(tmp / "pki")
        self.role = role
        self.log_dir = tmp / "consoles"
        self.console_socket = tmp / "console.sock"
        self.vm_port = free_port(A)
        peer_port, endpoint_port, link_port = free_port(B), free_port(APP), free_port(APP)
        self.metrics_port = free_port(APP)
        self.a: Daemon = daemons.add("relay", "esx-a", _esx_a(pki, self.vm_port, peer_port))
        self.b: Daemon = daemons.add(
            "relay", "esx-b", _esx_b(pki, role, peer_port, endpoint_port, link_port)
        )
        self.app: Daemon = daemons.add(
            "vspc",
            "appliance",
            {
                "listen": {"host": APP, "port": free_port(APP)},
                "endpoint": {
                    "host": APP,
                    "port": endpoint_port,
                    "resend-bytes": resend_bytes,
                    "link-tuning": LINK,
                    "link": [
                        {"address": f"tcp:{APP}:{link_port}", "tls": False, "forwarded": True}
                    ],
                },
                "console": {"log-dir": str(self.log_dir), "socket": str(self.console_socket)},
                "metrics": {"host": APP, "port": self.metrics_port},
            },
        )

    async def start(self) -> None:
        await self.app.start()
        await self.b.start()
        await self.a.start()

    async def connect_vm(self) -> trio.SocketStream:
        return await trio.open_tcp_stream(A, self.vm_port)

    def console_log(self) -> bytes:
        logs = list(self.log_dir.glob("*.log"))
        assert len(logs) <= 1, logs
        return logs[0].read_bytes() if logs else b""

    async def wait_console_log(self, size: int, timeout: float = 40.0) -> bytes:
        """Until the console log holds ``size`` bytes (or more: then it is wrong anyway)."""
        with trio.move_on_after(timeout):
            await wait_until(lambda: len(self.console_log()) >= size, None, interval=0.05)
        return self.console_log()

    async def wait_connected(self, timeout: float = 30.0) -> None:
        """Until the appliance has the VM's stream (keys typed before that are discarded)."""
        ep = ConsoleEndpoint(socket=self.console_socket)

        async def connected() -> bool:
            try:
                return any(c.get("connected") for c in await list_consoles(ep))
            except (ConsoleClientError, OSError):
                return False

        await wait_until_async(connected, timeout, "the VM's stream at the appliance")

    async def attach_console(self) -> trio.abc.Stream:
        """A read-write console client, once the VM's stream is there."""
        await self.wait_connected()
        streams: list[trio.abc.Stream] = []

        async def attached() -> bool:
            try:
                stream, _status, _rest = await attach(
                    ConsoleEndpoint(socket=self.console_socket),
                    proto.AttachRequest(vm=VM, label=LABEL, mode="rw"),
                )
            except (ConsoleClientError, OSError):  # not there yet
                return False
            streams.append(stream)
            return True

        await wait_until_async(attached, 20.0, "a read-write console client attached")
        return streams[0]
