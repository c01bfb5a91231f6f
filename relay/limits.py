"""Admission control: max streams globally and per VM, and an accept-rate token bucket.

No I/O and no clock: the caller passes ``now`` (seconds, monotonic). The daemon
logs and counts every refusal with the reason this module returns.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.config import LimitsConfig

REFUSE_GLOBAL = "max-streams"
REFUSE_PER_VM = "max-streams-per-vm"
REFUSE_RATE = "accept-rate"
REFUSE_REASONS = (REFUSE_GLOBAL, REFUSE_PER_VM, REFUSE_RATE)


@dataclass(frozen=True, slots=True)
class Ticket:
    """Proof of admission; give it back with ``Limits.release``."""

    vm: str


class Limits:
    """Counts live streams and hands out tickets. ``vm == ""`` (identity not known
    at the relay, e.g. vSPC Telnet) is only subject to the global limit."""

    def __init__(self, cfg: LimitsConfig, now: float) -> None:
        self.cfg = cfg
        self.active = 0
        self.per_vm: dict[str, int] = {}
        self._tokens = float(cfg.accept_burst)
        self._stamp = now

    def reconfigure(self, cfg: LimitsConfig) -> None:
        """New limits apply to new streams; live ones are never cut."""
        self.cfg = cfg
        self._tokens = min(self._tokens, float(cfg.accept_burst))

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._stamp)
        self._stamp = max(self._stamp, now)
        self._tokens = min(
            float(self.cfg.accept_burst), self._tokens + elapsed * self.cfg.accept_rate
        )

    def admit(self, vm: str, now: float) -> Ticket | str:
        """A Ticket, or the refusal reason (one of REFUSE_REASONS)."""
        self._refill(now)
        if self._tokens < 1.0:
            return REFUSE_RATE
        # A refused connection still costs a token: a flood cannot spin us for free.
        self._tokens -= 1.0
        if self.active >= self.cfg.max_streams:
            return REFUSE_GLOBAL
        if vm and self.per_vm.get(vm, 0) >= self.cfg.max_streams_per_vm:
            return REFUSE_PER_VM
        self.active += 1
        if vm:
            self.per_vm[vm] = self.per_vm.get(vm, 0) + 1
        return Ticket(vm)

    def carry_over(self, vm: str) -> Ticket:
        """A live stream the predecessor passed on (relay.handoff): counted, not refused."""
        self.active += 1
        if vm:
            self.per_vm[vm] = self.per_vm.get(vm, 0) + 1
        return Ticket(vm)

    def release(self, ticket: Ticket) -> None:
        self.active -= 1
        if ticket.vm:
            n = self.per_vm[ticket.vm] - 1
            if n:
                self.per_vm[ticket.vm] = n
            else:
                del self.per_vm[ticket.vm]
