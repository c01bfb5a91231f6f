"""Simulated tethers for bench/session_exec.py, in a process of their own:
``python _session_idle_tethers.py ENDPOINT GUESTINFO_DIR N``.

Each is a ``SessionEndpoint`` (TETHER) on one stream into the vSPC's endpoint,
labelled ``session`` for its own VM; the secret is the one the appliance writes into
that VM's guestinfo. Prints ``ready`` once all N carry their session (then idle);
each line on stdin (``K``) makes the first K tethers reconnect one after the other,
and prints a JSON list of seconds from connecting to Established at each.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.io.sealedsession import SessionEndpoint
from common.proto.guestinfo import keys as gik
from common.proto.link.header import OriginHeader, encode_header
from common.proto.session.channels import Role
from common.proto.session.session import Session
from vspc.guestinfo_watch import FileStoreWatcher

PARALLEL = 32


class Tethers:
    def __init__(self, endpoint: str, gi: Path, n: int) -> None:
        self.endpoint = endpoint
        self.gi = FileStoreWatcher(gi)
        self.vms = [f"vm-idle-{i:05d}" for i in range(n)]
        self.eps: dict[str, SessionEndpoint] = {}

    def _secrets(self, vm: str) -> tuple[bytes, ...]:
        raw = self.gi.store(vm).read().values.get(gik.session_secrets_key())
        return gik.decode_session_secrets(raw)

    async def _open(self, vm: str) -> trio.SocketStream:
        stream = await trio.open_unix_socket(self.endpoint)
        header = OriginHeader(host="esx1", vm=vm, kind="pipe", label="session")
        await stream.send_all(encode_header(header))
        return stream

    async def connect(self, nursery: trio.Nursery, vm: str) -> float:
        """A connection for ``vm`` (the first waits for its secret): seconds to live."""
        t0 = time.perf_counter()
        stream = await self._open(vm)
        if vm not in self.eps:
            async with self.gi.watch(vm) as w:
                while gik.session_secrets_key() not in (await w.next()).values:
                    pass
            self.eps[vm] = SessionEndpoint(
                Role.TETHER, Session(Role.TETHER), lambda: self._secrets(vm), name=vm
            )
        ep = self.eps[vm]
        was = ep.stats.established
        nursery.start_soon(lambda: ep.run_connection(stream, handshake_timeout=30))
        with trio.fail_after(60):
            while ep.stats.established == was or not ep.live:
                await ep.wait_changed()
        return time.perf_counter() - t0

    async def all_up(self, nursery: trio.Nursery) -> None:
        limit = trio.CapacityLimiter(PARALLEL)

        async def one(vm: str) -> None:
            async with limit:
                await self.connect(nursery, vm)

        async with trio.open_nursery() as starting:
            for vm in self.vms:
                starting.start_soon(one, vm)


async def main(endpoint: str, gi: str, n: int) -> None:
    t = Tethers(endpoint, Path(gi), n)
    stdin = trio.lowlevel.FdStream(0)
    async with trio.open_nursery() as nursery:
        await t.all_up(nursery)
        print("ready", flush=True)
        buf = b""
        while data := await stdin.receive_some(4096):
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                times = [await t.connect(nursery, vm) for vm in t.vms[: int(line)]]
                print(json.dumps(times), flush=True)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    from _common import raise_nofile

    raise_nofile(20_000)
    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
