"""A tethered VM's sessions over real relays, for the fault suite.

    tether (this process, real execs) --tcp--> esx-a relay (127.0.0.2)
      mesh:   ==TLS peer link, through a CutProxy==> esx-b relay (127.0.0.3)
              --tcp--> appliance, `vic vspc` with [sessions] (127.0.0.4)
      direct: --tcp--> appliance

Execs are driven through the appliance's console socket (EXEC request, framed
stdin/stdout/stderr/exit), so every byte crosses the session both ways.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from common.io.guestinfo.filestore import FileStore
from common.proto.console import protocol as proto
from common.proto.guestinfo.keys import session_secrets_key
from guestagent.backends.file import FileGuestBackend
from guestagent.channels import tcp_connector
from guestagent.config import SessionSection
from guestagent.reaper import Reaper
from guestagent.tether import Tether
from tests.fault.topology import APP, LINK, A, B
from tests.relay.pki_helpers import Pki
from tests.support.daemons import Daemon, Daemons, Table, free_port
from vic.lab.cutproxy import CutProxy
from vspc.console.client import Endpoint, connect, read_status
from vspc.guestinfo_watch import FileStoreWatcher

VM = "vm-s"
CHUNK = 16 * 1024
WINDOW = 128 * 1024


def _tls(files: Any) -> Table:
    return {"cert": str(files.cert), "key": str(files.key), "ca": str(files.ca)}


def _esx_a(pki: Pki, vm_port: int, egress: Table, peer: str | None) -> Table:
    cfg: Table = {
        "host": "esx-a",
        "egress": {"default": egress},
        "metrics": {"enabled": False},
        "timeouts": {"retry-min": 0.05, "retry-max": 0.5, "drain": 2.0},
        "tcp": [{"name": "vm", "vm": VM, "host": A, "port": vm_port, "label": "session"}],
    }
    if peer is not None:
        route = {"address": peer, "identity": "vic://host/esx-b"}
        cfg["peer"] = {
            "tls": _tls(pki.issue("host", "esx-a")),
            "link": LINK,
            "routes": {"appliance": route},
        }
    return cfg


def _esx_b(pki: Pki, peer_port: int, endpoint_port: int) -> Table:
    listen: Table = {
        "address": f"tcp:{B}:{peer_port}",
        "allowed-peers": ["vic://host/esx-a"],
        "egress": "appliance",
    }
    return {
        "host": "esx-b",
        "egress": {"appliance": {"kind": "tcp", "host": APP, "port": endpoint_port}},
        "metrics": {"enabled": False},
        "timeouts": {"drain": 2.0},
        "peer": {"tls": _tls(pki.issue("host", "esx-b")), "link": LINK, "listen": [listen]},
    }


class SessionMesh:
    """The daemons (not started) and the peer link's cut proxy (``mesh`` only)."""

    def __init__(self, tmp: Path, daemons: Daemons, *, mesh: bool) -> None:
        self.tmp = tmp
        self.daemons = daemons
        self.mesh = mesh
        self.gi = tmp / "gi"
        self.gi.mkdir()
        self.console_socket = tmp / "console.sock"
        self.vm_port = free_port(A)
        self.peer_port, self.endpoint_port = free_port(B), free_port(APP)
        self.pki = Pki(tmp / "pki")
        self.proxy = CutProxy((B, self.peer_port))
        self.app: Daemon = daemons.add("vspc", "appliance", self._vspc())
        self.b: Daemon | None = None
        self.a: Daemon | None = None

    def _vspc(self) -> Table:
        return {
            "listen": {"host": APP, "port": free_port(APP)},
            "endpoint": {"host": APP, "port": self.endpoint_port, "link-tuning": LINK},
            "console": {"log-dir": str(self.tmp / "logs"), "socket": str(self.console_socket)},
            "sessions": {"guestinfo-dir": str(self.gi), "handshake-timeout": 5.0},
            "metrics": {"host": APP, "port": free_port(APP)},
        }

    async def start(self, nursery: trio.Nursery) -> None:
        if self.mesh:
            await nursery.start(self.proxy.serve)
            egress: Table = {"kind": "peer", "route": "appliance"}
            peer: str | None = self.proxy.address
            self.b = self.daemons.add(
                "relay", "esx-b", _esx_b(self.pki, self.peer_port, self.endpoint_port)
            )
        else:
            egress = {"kind": "tcp", "host": APP, "port": self.endpoint_port}
            peer = None
        self.a = self.daemons.add("relay", "esx-a", _esx_a(self.pki, self.vm_port, egress, peer))
        await self.app.start()
        if self.b is not None:
            await self.b.start()
        await self.a.start()

    async def start_tether(self, nursery: trio.Nursery) -> Tether:
        """The tether, once the appliance wrote the VM's secret (a first stream names it)."""
        reaper = Reaper()
        await nursery.start(reaper.run)
        store = self.gi / f"{VM}.json"
        cfg = SessionSection(
            enabled=True, transport="tcp", host=A, port=self.vm_port, backoff_max=0.3
        )
        tether = Tether(
            cfg,
            tcp_connector(A, self.vm_port),
            backend=FileGuestBackend(FileStore(str(store))),
            reaper=reaper,
        )
        probe = await trio.open_tcp_stream(A, self.vm_port)
        async with FileStoreWatcher(self.gi).watch(VM) as w:
            while session_secrets_key() not in (await w.next()).values:
                pass
        nursery.start_soon(tether.run)
        await tether.secrets.wait_available()
        await probe.aclose()
        return tether


# how far past a fault's point the feeders may run before they wait for it to be dealt
HOLD_MARGIN = 0.1


class Gate:
    """Held shut while a fault is being dealt: stdin already in the window stays in
    flight, no more is sent, so no break lands after the traffic is over.

    ``hold(at)`` before waiting for a fault's point also stops each feeder once it
    has sent ``at`` of its stdin: however fast the path, the traffic cannot all be
    over before the fault (``open`` lifts it)."""

    def __init__(self) -> None:
        self._open = trio.Event()
        self._open.set()
        self._hold_at: float | None = None
        self._released = trio.Event()

    def shut(self) -> None:
        self._open = trio.Event()

    def hold(self, at: float) -> None:
        self._hold_at = at
        self._released = trio.Event()

    def open(self) -> None:
        self._hold_at = None
        self._released.set()
        self._open.set()

    async def wait(self, progress: float = 0.0) -> None:
        """Until the gate is open and ``progress`` (of a feeder's stdin) is not held."""
        await self._open.wait()
        while self._hold_at is not None and progress >= self._hold_at:
            await self._released.wait()
            await self._open.wait()


@dataclass
class ExecRun:
    """One exec through the appliance: what went in, what came back."""

    script: str
    stdin: bytes
    sent: int = 0
    out: bytearray = field(default_factory=bytearray)
    err: bytearray = field(default_factory=bytearray)
    exits: list[dict[str, Any]] = field(default_factory=list)
    trailing: bytes = b""
    gate: Gate = field(default_factory=Gate)
    _echoed: trio.Event = field(default_factory=trio.Event)

    async def run(self, socket: Path) -> None:
        req = proto.ExecRequest(vm=VM, argv=("sh", "-c", self.script), stdin=True)
        stream = await connect(Endpoint(socket=socket))
        async with stream, trio.open_nursery() as n:
            await stream.send_all(proto.encode_request(req))
            _, rest = await read_status(stream)
            n.start_soon(self._feed, stream)
            await self._read(stream, rest)
            n.cancel_scope.cancel()

    async def _feed(self, stream: trio.abc.Stream) -> None:
        """Stdin, never more than ``WINDOW`` bytes ahead of its echo: the exec stays
        busy (and bytes stay in flight) from the first break to the last."""
        for i in range(0, len(self.stdin), CHUNK):
            await self.gate.wait(i / len(self.stdin))
            while i - len(self.out) >= WINDOW:
                self._echoed = trio.Event()
                await self._echoed.wait()
            await stream.send_all(
                proto.encode_frame(proto.FrameType.STDIN, self.stdin[i : i + CHUNK])
            )
            self.sent = i + len(self.stdin[i : i + CHUNK])
        await stream.send_all(proto.encode_frame(proto.FrameType.STDIN_EOF))

    async def _read(self, stream: trio.abc.Stream, data: bytes) -> None:
        """Every frame to the stream's end (the exit status should be the last)."""
        reader = proto.FrameReader()
        while True:
            for frame in reader.feed(data):
                if frame.type is proto.FrameType.EXIT:
                    self.exits.append(proto.decode_line(frame.payload.rstrip(b"\n")))
                elif self.exits:
                    self.trailing += frame.payload or b"?"
                elif frame.type is proto.FrameType.STDERR:
                    self.err += frame.payload
                else:
                    self.out += frame.payload
                    self._echoed.set()
            data = bytes(await stream.receive_some(64 * 1024))
            if not data:
                return

    def check(self, want_err: bytes, code: int) -> list[str]:
        """What is wrong with this run, if anything."""
        bad: list[str] = []
        if self.trailing:
            bad.append(f"frames after the exit status: {self.trailing[:40]!r}")
        if bytes(self.out) != self.stdin:
            bad.append(f"stdout: {describe(bytes(self.out), self.stdin)}")
        if bytes(self.err) != want_err:
            bad.append(f"stderr: {describe(bytes(self.err), want_err)}")
        if [e.get("code") for e in self.exits] != [code]:
            bad.append(f"exit statuses {json.dumps(self.exits)}, want one code {code}")
        return bad


def describe(got: bytes, want: bytes) -> str:
    """Where ``got`` leaves ``want``: a hole, a repeat, or a short tail."""
    n = min(len(got), len(want))
    i = next((k for k in range(n) if got[k] != want[k]), n)
    return (
        f"{len(got)} bytes for {len(want)}, first difference at {i}: "
        f"got {got[i : i + 24]!r}, want {want[i : i + 24]!r}"
    )
