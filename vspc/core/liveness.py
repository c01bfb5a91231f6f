"""Which Telnet connections are alive, sans-IO: identity deadline, idle probe, probe answer.

Every ESX connection gets a :class:`Liveness` record when it opens. The adapter
tells it what happens (``heard``: bytes were read; ``identified``: the VM's VC UUID
is known; ``probe``: someone wants proof of life now, e.g. a takeover of its port)
and asks :class:`LivenessTable` at :meth:`LivenessTable.next_deadline` what is due.
``tick(now)`` returns one :class:`Due` per connection that needs something:

* ``PROBE``: send it IAC DO TIMING-MARK (silent for ``idle_probe`` seconds);
* ``IDENTIFY_TIMEOUT``: no VC UUID ``identify_timeout`` seconds after it opened;
* ``DEAD``: a probe went unanswered for ``probe_timeout`` seconds.

Any bytes read answer a probe (a WILL/WONT TIMING-MARK reply, or anything else).
No clock here: ``now`` comes in as an argument. One heap entry per connection at a
time (stale entries are recognised and dropped), so the table holds O(connections).
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections.abc import Hashable
from dataclasses import dataclass

Conn = Hashable


@dataclass(frozen=True, slots=True)
class LivenessPolicy:
    identify_timeout: float = 10.0
    idle_probe: float = 60.0
    probe_timeout: float = 5.0


class Due(enum.Enum):
    PROBE = "probe"
    IDENTIFY_TIMEOUT = "identify_timeout"
    DEAD = "dead"


class Liveness:
    """One connection's timers (see the module docstring)."""

    __slots__ = (
        "answered",
        "check_at",
        "conn",
        "deadline_id",
        "heard_at",
        "identified",
        "identify_by",
        "probe_until",
        "seq",
    )

    def __init__(self, conn: Conn, now: float, policy: LivenessPolicy, seq: int) -> None:
        self.conn = conn
        self.seq = seq
        self.heard_at = now
        self.identified = False
        self.identify_by = now + policy.identify_timeout
        self.probe_until: float | None = None  # a probe is out, unanswered
        self.answered = 0  # probes answered so far
        self.check_at = 0.0  # when its live heap entry is due
        self.deadline_id = 0

    def heard(self, now: float) -> bool:
        """Bytes were read from it; True if that answered an outstanding probe."""
        self.heard_at = now
        if self.probe_until is None:
            return False
        self.probe_until = None
        self.answered += 1
        return True

    @property
    def probing(self) -> bool:
        return self.probe_until is not None

    def due_at(self, policy: LivenessPolicy) -> float:
        """When something is next due for it (an idle deadline may have moved on since)."""
        at = self.probe_until if self.probe_until is not None else self.heard_at + policy.idle_probe
        if not self.identified:
            at = min(at, self.identify_by)
        return at


class LivenessTable:
    """The records of every open connection and one heap of their next deadlines."""

    def __init__(self, policy: LivenessPolicy) -> None:
        self.policy = policy
        self._recs: dict[Conn, Liveness] = {}
        self._heap: list[tuple[float, int, int, Liveness]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._recs)

    def opened(self, conn: Conn, now: float) -> Liveness:
        rec = self._recs[conn] = Liveness(conn, now, self.policy, next(self._seq))
        self._schedule(rec)
        return rec

    def closed(self, conn: Conn) -> None:
        if self._recs.pop(conn, None) is not None and len(self._heap) > 2 * len(self._recs) + 64:
            self._compact()  # entries of closed connections: keep the heap O(connections)

    def get(self, conn: Conn) -> Liveness | None:
        return self._recs.get(conn)

    def identified(self, conn: Conn) -> None:
        rec = self._recs.get(conn)
        if rec is not None:
            rec.identified = True

    def probe(self, conn: Conn, now: float) -> bool:
        """Ask ``conn`` for proof of life now; True: send it a probe (none is out yet)."""
        rec = self._recs.get(conn)
        if rec is None or rec.probe_until is not None:
            return False
        rec.probe_until = now + self.policy.probe_timeout
        self._schedule(rec)
        return True

    def answered(self, conn: Conn) -> None:
        """Its probe was answered (``Liveness.heard`` returned True): next idle deadline."""
        rec = self._recs.get(conn)
        if rec is not None:
            self._schedule(rec)

    def spare(self, conn: Conn, now: float) -> None:
        """After DEAD, the adapter found the peer still there (it could not read the
        answer): count it as heard now and keep watching it."""
        rec = self._recs.get(conn)
        if rec is not None:
            rec.heard(now)
            self._schedule(rec)

    def reconfigure(self, policy: LivenessPolicy) -> None:
        """New timeouts apply from each connection's next deadline on."""
        self.policy = policy

    def next_deadline(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def tick(self, now: float) -> list[tuple[Conn, Due]]:
        """What is due at ``now``; PROBE marks the probe as sent (send it)."""
        out: list[tuple[Conn, Due]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _at, _seq, gen, rec = heapq.heappop(heap)
            if gen != rec.deadline_id or self._recs.get(rec.conn) is not rec:
                continue  # stale: rescheduled since, or closed
            due = self._due(rec, now)
            if due is not None:
                out.append((rec.conn, due))
            if due not in (Due.IDENTIFY_TIMEOUT, Due.DEAD):
                self._schedule(rec)
        return out

    def _due(self, rec: Liveness, now: float) -> Due | None:
        if not rec.identified and now >= rec.identify_by:
            return Due.IDENTIFY_TIMEOUT
        if rec.probe_until is not None:
            return Due.DEAD if now >= rec.probe_until else None
        if now >= rec.heard_at + self.policy.idle_probe:
            rec.probe_until = now + self.policy.probe_timeout
            return Due.PROBE
        return None

    def _compact(self) -> None:
        self._heap = [
            e for e in self._heap if e[2] == e[3].deadline_id and self._recs.get(e[3].conn) is e[3]
        ]
        heapq.heapify(self._heap)

    def _schedule(self, rec: Liveness) -> None:
        rec.deadline_id += 1
        rec.check_at = rec.due_at(self.policy)
        heapq.heappush(self._heap, (rec.check_at, rec.seq, rec.deadline_id, rec))
