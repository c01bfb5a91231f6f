"""The simulated ESX hosts of bench/vspc_scale.py, and its direct baseline server.

Each worker process (``vspc_scale.py --worker``) connects its share of the VMs
(negotiating like ESX, or raw TCP against the direct server), then writes a
console line per VM now and then; it prints one JSON line when all are
connected and one when its stdin closes. ``vspc_scale.py --sink`` is the
minimal trio server of the ``direct`` mode.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from typing import Any

import trio

from vic.lab import telnet_wire as tw
from vic.lab.esx_sim import EsxBehaviour, EsxConnection, SimVM

GOAHEAD_SECRET = b"\x00" * 8


# ---------------------------------------------------------------- worker process


async def _console_writer(
    send: Any, name: str, interval: float, rng: random.Random, counter: list[int]
) -> None:
    await trio.sleep(rng.random() * interval)
    k = 0
    while True:
        k += 1
        line = f"[{time.time():.6f}] {name}: heartbeat {k} load=0.{rng.randrange(100):02d}\r\n"
        try:
            await send(line.encode())
        except Exception:
            return
        counter[0] += 1
        await trio.sleep(interval * (0.5 + rng.random()))


async def _raw_drain(stream: trio.abc.Stream) -> None:
    try:
        while await stream.receive_some(4096):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


class _Connector:
    """Connects one worker's VMs, counting what came of it."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.limiter = trio.CapacityLimiter(args.concurrency)
        self.connected, self.failed = [0], [0]
        self.errors: dict[str, int] = {}
        self.all_done = trio.Event()
        self.remaining = [args.count]
        self.writers: list[tuple[Any, str, int]] = []

    async def one(self, nursery: trio.Nursery, i: int) -> None:
        args = self.args
        vm = SimVM.random(random.Random(args.seed * 1_000_003 + i), name=f"w{args.seed}-vm{i}")
        send: Any
        try:
            async with self.limiter:
                if args.raw:
                    stream = await trio.open_tcp_stream("127.0.0.1", args.port)
                    nursery.start_soon(_raw_drain, stream)
                    send = stream.send_all
                else:
                    conn = await EsxConnection.open(
                        nursery,
                        "127.0.0.1",
                        args.port,
                        vm=vm,
                        behaviour=EsxBehaviour(ready_timeout=120.0, recv_size=4096),
                    )
                    send = conn.send_console
            self.connected[0] += 1
            self.writers.append((send, vm.name, i))
            if self.connected[0] % 1000 == 0:
                print(
                    f"worker {args.seed}: {self.connected[0]} connected",
                    file=sys.stderr,
                    flush=True,
                )
        except Exception as e:
            self.failed[0] += 1
            key = type(e).__name__
            self.errors[key] = self.errors.get(key, 0) + 1
        finally:
            self.remaining[0] -= 1
            if self.remaining[0] == 0:
                self.all_done.set()


async def worker(args: argparse.Namespace) -> None:
    c = _Connector(args)
    lines = [0]
    t0 = time.monotonic()

    async with trio.open_nursery() as nursery:
        for i in range(args.count):
            nursery.start_soon(c.one, nursery, i)
        await c.all_done.wait()
        # Console lines start once this worker's VMs are all connected (so connecting
        # 16k VMs is not slowed down by the ones already writing).
        for send, name, i in c.writers:
            nursery.start_soon(_console_writer, send, name, args.interval, random.Random(i), lines)
        print(
            json.dumps(
                {
                    "ready": True,
                    "connected": c.connected[0],
                    "failed": c.failed[0],
                    "errors": c.errors,
                    "seconds": time.monotonic() - t0,
                }
            ),
            flush=True,
        )
        # Run until the parent closes our stdin.
        await trio.to_thread.run_sync(sys.stdin.read)
        print(json.dumps({"lines": lines[0]}), flush=True)
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- direct baseline server


async def sink_server(args: argparse.Namespace) -> None:
    """Holds connections, discards data, answers a BEGIN frame with a GOAHEAD frame."""
    begin = bytes((tw.IAC, tw.SB, tw.VMWARE_EXT, tw.VMOTION_BEGIN))

    async def handler(stream: trio.SocketStream) -> None:
        try:
            while True:
                data = await stream.receive_some(4096)
                if not data:
                    return
                if data.startswith(begin):
                    dec = tw.decode_all(data)
                    for ev in dec:
                        if isinstance(ev, tw.Subnegotiation) and ev.payload[:1] == bytes(
                            (tw.VMOTION_BEGIN,)
                        ):
                            seq = ev.payload[1:]
                            await stream.send_all(tw.ext(tw.VMOTION_GOAHEAD, seq + GOAHEAD_SECRET))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    listeners = await trio.open_tcp_listeners(args.port, host="127.0.0.1")
    print(json.dumps({"listening": args.port}), flush=True)
    await trio.serve_listeners(handler, listeners)


# ---------------------------------------------------------------- parent side


class Workers:
    """The worker processes, seen from the parent (``script`` is the bench to run as one)."""

    def __init__(self, script: str) -> None:
        self.script = script
        self.procs: list[trio.Process] = []
        self.bufs: list[bytearray] = []

    async def start(
        self,
        nursery: trio.Nursery,
        port: int,
        counts: list[int],
        args: argparse.Namespace,
        raw: bool,
    ) -> None:
        for k, count in enumerate(counts):
            cmd = [
                sys.executable,
                self.script,
                "--worker",
                "--port",
                str(port),
                "--count",
                str(count),
                "--seed",
                str(k + 1),
                "--interval",
                str(args.interval),
                "--concurrency",
                str(args.concurrency),
            ]
            if raw:
                cmd.append("--raw")
            if args.worker_nice:
                cmd = ["nice", "-n", str(args.worker_nice), *cmd]
            p = await trio.lowlevel.open_process(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            self.procs.append(p)
            self.bufs.append(bytearray())

    async def line(self, k: int) -> dict[str, Any]:
        p, buf = self.procs[k], self.bufs[k]
        assert p.stdout is not None
        while b"\n" not in buf:
            chunk = await p.stdout.receive_some(65536)
            if not chunk:
                raise RuntimeError(f"worker {k} exited ({p.returncode})")
            buf += chunk
        line, _, rest = bytes(buf).partition(b"\n")
        buf[:] = rest
        return dict(json.loads(line))

    async def wait_ready(self, timeout: float) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{} for _ in self.procs]
        with trio.fail_after(timeout):
            async with trio.open_nursery() as n:
                for k in range(len(self.procs)):

                    async def one(k: int = k) -> None:
                        out[k] = await self.line(k)

                    n.start_soon(one)
        return out

    async def stop(self) -> list[dict[str, Any]]:
        stats: list[dict[str, Any]] = []
        for k, p in enumerate(self.procs):
            if p.stdin is not None:
                await p.stdin.aclose()
            try:
                with trio.fail_after(30):
                    stats.append(await self.line(k))
            except Exception as e:
                stats.append({"error": repr(e)})
        for p in self.procs:
            with trio.move_on_after(10):
                await p.wait()
            if p.returncode is None:
                p.kill()
                await p.wait()
        return stats
