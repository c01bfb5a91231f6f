"""A tethered VM as a real `vic agent` process behind real relays, for the fault suite.

    vic agent (its TOML: guestinfo file store, [session] on, the console a Unix
    socket) --unix--> esx-a relay, [[pipe]] ingress labelled "session"
      direct:  --tcp--> appliance, `vic vspc` with [sessions] (127.0.0.4)
      mesh:    ==TLS peer link, through cut proxy ``link``==> esx-b relay (127.0.0.3),
               which ends the streams --tcp--> appliance endpoint
      forward: ==TLS peer link, through ``link``==> esx-b relay, which forwards the
               whole link --tcp, through cut proxy ``fwd``--> the appliance's
               [[endpoint.link]] (forwarded = true), where the streams end

The container's main process (configured in guestinfo before the agent starts)
writes ``main N`` lines, paced, until the file ``stop`` exists, then ``main end N``
and exits 7: its output reaches the appliance's container log files, read here
record by record. Execs go through the appliance's console socket
(``tests.fault.sessionmesh.ExecRun``, which names the VM ``vm-s``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import trio
import trio.testing

from common.proto import guestinfo as gi
from tests.fault.sessionmesh import VM
from tests.fault.topology import APP, LINK, B
from tests.relay.pki_helpers import Pki
from tests.support.daemons import Daemon, Daemons, Table, free_port
from tests.support.waiting import wait_until
from vic.lab.cutproxy import CutProxy
from vic.lab.lab_tether import secret_written
from vspc.core.linelog import LineLogError, Stream, parse_record
from vspc.guestinfo_watch import FileStoreWatcher, configure_session

PathKind = Literal["direct", "mesh", "forward"]
MAIN_ID = "main-1"
MAIN_CODE = 7
MAIN_LINE = re.compile(rb"^main (\d+)$")


def _tls(files: Any) -> Table:
    return {"cert": str(files.cert), "key": str(files.key), "ca": str(files.ca)}


def main_script(stop: Path) -> str:
    """Paced output (the workload's own pace, about 50 lines a second), until ``stop``."""
    return (
        f'i=0; while [ ! -e "{stop}" ]; do i=$((i+1)); echo "main $i"; sleep 0.02; done; '
        f'echo "main end $i"; exit {MAIN_CODE}'
    )


class AgentPath:
    """The daemons (added, not started) and the cut proxies of one path."""

    def __init__(self, tmp: Path, daemons: Daemons, *, path: PathKind) -> None:
        self.tmp = tmp
        self.daemons = daemons
        self.path = path
        self.gi = tmp / "gi"
        self.gi.mkdir()
        self.logs_dir = tmp / "logs"
        self.console_socket = tmp / "console.sock"
        self.pipe = tmp / "vm.sock"
        self.stop_file = tmp / "stop"
        self.endpoint_port, self.link_port = free_port(APP), free_port(APP)
        self.peer_port = free_port(B)
        self.pki = Pki(tmp / "pki")
        self.link = CutProxy((B, self.peer_port))
        self.fwd = CutProxy((APP, self.link_port))
        self.app: Daemon = daemons.add("vspc", "appliance", self._vspc())
        self.agent: Daemon = daemons.add("agent", "agent", self._agent())
        self.a: Daemon | None = None
        self.b: Daemon | None = None

    # ------------------------------------------------------------ configs
    def _vspc(self) -> Table:
        endpoint: Table = {"host": APP, "port": self.endpoint_port, "link-tuning": LINK}
        if self.path == "forward":
            link = {"address": f"tcp:{APP}:{self.link_port}", "tls": False, "forwarded": True}
            endpoint["link"] = [link]
        return {
            "listen": {"host": APP, "port": free_port(APP)},
            "endpoint": endpoint,
            "console": {"log-dir": str(self.tmp / "consoles"), "socket": str(self.console_socket)},
            "sessions": {
                "guestinfo-dir": str(self.gi),
                "logs-dir": str(self.logs_dir),
                "handshake-timeout": 5.0,
            },
            "metrics": {"host": APP, "port": free_port(APP)},
        }

    def _agent(self) -> Table:
        return {
            "guestinfo": {"backend": "file", "path": str(self.gi / f"{VM}.json")},
            "console": {"transport": "unix", "path": str(self.pipe), "backoff-max": 0.2},
            "session": {"enabled": True, "backoff-max": 0.3, "handshake-timeout": 5.0},
            "network": {"publish": False},
            "agent": {"subreaper": True},
        }

    def _esx_a(self) -> Table:
        cfg: Table = {
            "host": "esx-a",
            "metrics": {"enabled": False},
            "timeouts": {"retry-min": 0.05, "retry-max": 0.5, "drain": 2.0},
            "pipe": [{"name": "vm", "vm": VM, "path": str(self.pipe), "label": "session"}],
        }
        if self.path == "direct":
            cfg["egress"] = {"default": {"kind": "tcp", "host": APP, "port": self.endpoint_port}}
            return cfg
        cfg["egress"] = {"default": {"kind": "peer", "route": "appliance"}}
        route = {"address": self.link.address, "identity": "vic://host/esx-b"}
        cfg["peer"] = {
            "tls": _tls(self.pki.issue("host", "esx-a")),
            "link": LINK,
            "routes": {"appliance": route},
        }
        return cfg

    def _esx_b(self) -> Table:
        listen: Table = {
            "address": f"tcp:{B}:{self.peer_port}",
            "allowed-peers": ["vic://host/esx-a"],
        }
        if self.path == "forward":
            listen["forward"] = self.fwd.address
        else:
            listen["egress"] = "appliance"
        return {
            "host": "esx-b",
            "egress": {"appliance": {"kind": "tcp", "host": APP, "port": self.endpoint_port}},
            "metrics": {"enabled": False},
            "timeouts": {"drain": 2.0},
            "peer": {
                "tls": _tls(self.pki.issue("host", "esx-b")),
                "link": LINK,
                "listen": [listen],
            },
        }

    # ------------------------------------------------------------ starting
    async def start(self, nursery: trio.Nursery) -> None:
        """The appliance, the relays and the agent; the VM's secret, then its main
        process, in its guestinfo; returns once the main process's first line is logged."""
        if self.path != "direct":
            await nursery.start(self.link.serve)
            await nursery.start(self.fwd.serve)
            self.b = self.daemons.add("relay", "esx-b", self._esx_b())
        self.a = self.daemons.add("relay", "esx-a", self._esx_a())
        async with trio.open_nursery() as up:  # each waits for what it needs by itself
            up.start_soon(self.agent.launch)  # it waits for its secret in guestinfo
            for d in (self.app, self.b, self.a):
                if d is not None:
                    up.start_soon(d.start)
        watcher = FileStoreWatcher(self.gi)
        await secret_written(watcher, VM, self.pipe)  # a stream naming the VM: its secret
        main = gi.SessionConfig(
            id=MAIN_ID, path="/bin/sh", args=("sh", "-c", main_script(self.stop_file))
        )
        await configure_session(watcher, VM, main)  # the agent starts it as listed
        await wait_until(lambda: self.main_numbers(), None, interval=0.05)

    async def restart_relay(self, d: Daemon, sig: int | None) -> None:
        """Signal ``d`` (None: it was killed already), wait for its end, start it again."""
        if sig is not None:
            d.kill(sig)
        await d.wait_exit()
        if d is self.a:
            self.pipe.unlink(missing_ok=True)  # a killed relay leaves its socket behind
        await d.start()

    # ------------------------------------------------------------ the container logs
    def log_records(self) -> list[tuple[Stream, bytes]]:
        """Every record in the VM's container log files, oldest first."""
        files = sorted(self.logs_dir.glob("*_container.log*"), key=_age, reverse=True)
        out: list[tuple[Stream, bytes]] = []
        for f in files:
            for raw in f.read_bytes().splitlines():
                try:
                    line = parse_record(raw)
                except LineLogError:
                    continue
                out.append((line.stream, line.text))
        return out

    def main_numbers(self) -> list[int]:
        """The ``N`` of every ``main N`` line logged on stdout, in the order logged."""
        return [
            int(m.group(1))
            for s, text in self.log_records()
            if s is Stream.STDOUT and (m := MAIN_LINE.match(text))
        ]

    def main_ended(self) -> bool:
        return any(t.startswith(b"main end ") for _, t in self.log_records())

    async def finish_main(self) -> tuple[list[tuple[Stream, bytes]], Any]:
        """Stop the main process; once its last line is logged and its exit status
        published, the container log's records and that status (``gi.ExitInfo``)."""
        self.stop_file.touch()
        await wait_until(self.main_ended, None, interval=0.05)
        watcher = FileStoreWatcher(self.gi)
        async with watcher.watch(VM) as w:
            while (st := await w.next()).session(MAIN_ID).exit is None:
                pass
        return self.log_records(), st.session(MAIN_ID).exit

    def events(self) -> list[dict[str, Any]]:
        """The VM's container log events (connections, gaps), oldest first."""
        text = (self.logs_dir / f"{VM}_container.events.jsonl").read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def _age(p: Path) -> int:
    """0 for ``X.log``, N for ``X.log.N`` (older)."""
    tail = p.name.rsplit(".", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def check_main(records: list[tuple[Stream, bytes]], exit_info: Any) -> list[str]:
    """What is wrong with the main process's logged output, if anything: every line
    once, in order, then its last line; and its exit status (7)."""
    texts = [t for s, t in records if s is Stream.STDOUT and t]
    bad: list[str] = []
    nums = [int(m.group(1)) for t in texts if (m := MAIN_LINE.match(t))]
    if nums != list(range(1, len(nums) + 1)):
        first = next(i for i, n in enumerate(nums) if n != i + 1)
        bad.append(f"main: line {first} is 'main {nums[first]}' (want {first + 1})")
    ends = [t for t in texts if t.startswith(b"main end ")]
    if ends != [b"main end %d" % len(nums)]:
        bad.append(f"main: ended {ends!r} after {len(nums)} lines")
    others = [t for t in texts if not MAIN_LINE.match(t) and not t.startswith(b"main end ")]
    if others:
        bad.append(f"main: unexpected lines {others[:3]!r}")
    if exit_info is None or exit_info.status != MAIN_CODE:
        bad.append(f"main: exit {exit_info!r}, want status {MAIN_CODE}")
    return bad


async def quiet() -> None:
    """While a daemon is frozen: until this process (the exec clients) has nothing left
    to do but wait on the path, i.e. the frozen daemon holds it up."""
    with trio.move_on_after(5.0):
        await trio.testing.wait_all_tasks_blocked(cushion=0.1)
