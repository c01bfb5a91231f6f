"""The vSPC's answers to the simulated ESX's vMotion requests, queued for whoever waits.

GOAHEAD/NOTNOW answer a BEGIN, PEER-OK answers a PEER. An answer that comes
after ESX gave up on its sequence is stale: dropped when picked, and counted.
"""

from __future__ import annotations

import logging

import trio

from vic.lab import telnet_wire as tw
from vic.lab.esx_behaviour import EsxStats

log = logging.getLogger("vic.lab.esx_sim")


class VMotionReplies:
    """Queued vMotion answers of one connection, and when the current BEGIN's arrived."""

    def __init__(self, vm_name: str, stats: EsxStats) -> None:
        self._vm_name = vm_name
        self._stats = stats
        self._queue: list[tuple[int, bytes]] = []
        self._abandoned: list[bytes] = []  # seqs whose BEGIN timed out
        self.current_seq: bytes | None = None
        self.receipt: float | None = None  # when the reader got the current answer
        self.receipt_ns: int | None = None  # ...its kernel arrival time (wall clock, ns)
        self.event = trio.Event()  # set (and replaced) on each answer queued

    def expect(self, seq: bytes) -> None:
        """A BEGIN(seq) is about to go out: time its answer."""
        self.current_seq = seq
        self.receipt = None
        self.receipt_ns = None

    def abandon(self, seq: bytes) -> None:
        """ESX gave up on ``seq``: its answer, if it comes, is stale."""
        self._abandoned = [*self._abandoned[-63:], seq]

    def put(self, cmd: int, body: bytes, rx_ns: int | None) -> None:
        """GOAHEAD, NOTNOW or PEER-OK read from the vSPC (``rx_ns``: its kernel arrival)."""
        if (
            cmd != tw.VMOTION_PEER_OK
            and self.receipt is None
            and self.current_seq is not None
            and body.startswith(self.current_seq)
        ):
            self.receipt = trio.current_time()
            self.receipt_ns = rx_ns
        self._queue.append((cmd, body))
        self.event.set()
        self.event = trio.Event()

    def _is_stale(self, cmd: int, payload: bytes) -> bool:
        """A late answer to a BEGIN (or PEER) this ESX already gave up on."""
        return any(payload.startswith(old) for old in self._abandoned) and not (
            self.current_seq is not None and payload.startswith(self.current_seq)
        )

    def pick(self, cmds: set[int]) -> tuple[int, bytes] | None:
        """Take the first queued reply among ``cmds``, dropping late (stale) ones."""
        k = 0
        while k < len(self._queue):
            cmd, payload = self._queue[k]
            if cmd not in cmds:
                k += 1
                continue
            del self._queue[k]
            if self._is_stale(cmd, payload):
                self._stats.stale_replies += 1
                log.info("esx-sim %s: late %s ignored", self._vm_name, tw.EXT_NAMES[cmd])
                continue
            return cmd, payload
        return None
