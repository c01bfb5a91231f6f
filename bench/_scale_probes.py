"""The probe VMs of bench/vspc_scale.py: the vMotions the parent runs, and their timing.

In ``vspc`` mode each probe is a simulated ESX connection and a vMotion is a
whole migrate (BEGIN, new destination connection, PEER, PEER-OK, COMPLETE),
timed BEGIN->GOAHEAD as the source ESX sees it; in ``direct`` mode a probe is a
raw TCP connection that sends a BEGIN frame and reads the GOAHEAD-shaped answer.
Both also time each answer to its arrival in this host's kernel (SO_TIMESTAMPNS).
"""

from __future__ import annotations

import random
import time
from typing import Any

import _vspc_benchlib as bl
import trio
from _scale_hosts import GOAHEAD_SECRET

from vic.lab import rxstamp
from vic.lab import telnet_wire as tw
from vic.lab.esx_sim import EsxConnection, SimError, SimVM, migrate, random_seq


class Probes:
    """The parent's own VMs, migrated one at a time while the others are connected."""

    def __init__(self, mode: str, port: int, nursery: trio.Nursery, vmotion_gap: float) -> None:
        self.mode = mode
        self.port = port
        self.nursery = nursery
        self.vmotion_gap = vmotion_gap
        self.rng = random.Random(4242)
        self.conns: list[Any] = []
        self.lat: list[float] = []
        self.lat_waiter: list[float] = []  # vspc: until migrate()'s waiting task ran
        # until the answer reached this host's kernel (SO_TIMESTAMPNS): without
        # the probing process's own wake-up and loop
        self.lat_kernel: list[float] = []
        self.lat_at: list[float] = []  # wall-clock time of each sample (to line up with logs)
        self.failures: dict[str, int] = {}

    async def open(self, n: int) -> None:
        for i in range(n):
            vm = SimVM.random(self.rng, name=f"probe-{i}")
            if self.mode.startswith("vspc"):
                self.conns.append(
                    await EsxConnection.open(
                        self.nursery, "127.0.0.1", self.port, vm=vm, kernel_timestamps=True
                    )
                )
            else:
                raw = await trio.open_tcp_stream("127.0.0.1", self.port)
                rxstamp.enable(raw.socket)
                self.conns.append(raw)

    async def aclose(self) -> None:
        for p in self.conns:
            await p.aclose()

    async def vmotions(self, n: int, record: bool) -> None:
        for k in range(n):
            # vMotions arrive one at a time, spaced out (not on the heels of
            # the previous one's clean-up): what is measured is the answer to
            # a BEGIN arriving while 16k VMs are connected and writing.
            await trio.sleep(self.rng.random() * 2 * self.vmotion_gap)
            i = k % len(self.conns)
            seq = random_seq(self.rng, with_ff=(k % 7 == 0))
            if self.mode.startswith("vspc"):
                await self._migrate(i, seq, record)
            else:
                await self._begin_raw(i, seq, record)

    async def _migrate(self, i: int, seq: bytes, record: bool) -> None:
        src = self.conns[i]
        try:
            m = await migrate(src, "127.0.0.1", self.port, nursery=self.nursery, seq=seq)
        except SimError as e:
            # ESX fails this migration (BEGIN unanswered in 5 s, NOTNOW,
            # PEER refused); migrate() already sent ABORT where due.
            key = type(e).__name__
            self.failures[key] = self.failures.get(key, 0) + 1
            if src.closed.is_set():
                raise
            return
        self.conns[i] = m.dest
        if record:
            self.lat.append(src.stats.begin_receipt_latencies[-1])
            self.lat_waiter.append(src.stats.begin_latencies[-1])
            if src.stats.begin_kernel_latencies:
                self.lat_kernel.append(src.stats.begin_kernel_latencies[-1])
            self.lat_at.append(time.time())

    async def _begin_raw(self, i: int, seq: bytes, record: bool) -> None:
        s = self.conns[i]
        t0 = trio.current_time()
        t0_ns = time.time_ns()
        await s.send_all(tw.ext(tw.VMOTION_BEGIN, seq))
        want = len(tw.ext(tw.VMOTION_GOAHEAD, seq + GOAHEAD_SECRET))
        got = b""
        rx_ns = None
        while len(got) < want:
            chunk, rx_ns = await rxstamp.recv_stamped(s.socket, 4096)
            if not chunk:
                raise SimError("the server closed a probe connection")
            got += chunk
        if record:
            self.lat.append(trio.current_time() - t0)
            if rx_ns is not None:
                self.lat_kernel.append((rx_ns - t0_ns) / 1e9)
            self.lat_at.append(time.time())

    def begin_goahead_ms(self) -> dict[str, Any]:
        """The recorded BEGIN->GOAHEAD latencies, in ms (the result's ``begin_goahead_ms``)."""
        lat, lat_waiter, lat_kernel = self.lat, self.lat_waiter, self.lat_kernel
        failed = sum(self.failures.values())
        return {
            "n": len(lat),
            "p50": bl.percentile(lat, 50) * 1e3,
            "p90": bl.percentile(lat, 90) * 1e3,
            "p99": bl.percentile(lat, 99) * 1e3,
            "max": max(lat) * 1e3 if lat else None,
            "failed": failed,
            # a failed vMotion counts as >= ESX's 5 s give-up
            "p99_incl_failed": bl.percentile(lat + [5.0] * failed, 99) * 1e3,
            "all": [x * 1e3 for x in lat],
            # the same BEGINs until the simulator's waiting task ran (its own
            # scheduling included): what this bench reported before 2026-12-03
            "waiter_p50": bl.percentile(lat_waiter, 50) * 1e3 if lat_waiter else None,
            "waiter_p99": bl.percentile(lat_waiter, 99) * 1e3 if lat_waiter else None,
            # BEGIN sent -> GOAHEAD in this host's kernel: where a real ESX host,
            # which does not share the vSPC's CPUs, would have it
            "kernel_n": len(lat_kernel),
            "kernel_p50": bl.percentile(lat_kernel, 50) * 1e3 if lat_kernel else None,
            "kernel_p99": bl.percentile(lat_kernel, 99) * 1e3 if lat_kernel else None,
            "kernel_p99_incl_failed": bl.percentile(lat_kernel + [5.0] * failed, 99) * 1e3
            if lat_kernel
            else None,
            "kernel_all": [x * 1e3 for x in lat_kernel],
            "at_unix": [round(t, 3) for t in self.lat_at],
        }
