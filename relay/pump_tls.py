"""Moving a stream whose egress is TLS: the successor continues it at the appliance.

Python's ssl cannot export a TLS session, so the appliance-side connection cannot
pass to the successor. The stream can, by continuation (issue 11): the appliance
keeps where each stream stands (vspc.core.continuation), and a new connection
whose origin header (version 2) names the same stream id with ``offset`` (bytes
the appliance got so far) and ``received`` (bytes the VM got so far) fits on
exactly: it skips nothing twice and sends the VM again what it never got, from
its last ``resend-bytes``.

The pump runs between the views of relay.pump_peer (``VmView``, and
``TlsEgressView`` here), which stop it at a safe point: nothing read from one
side and not yet written to the other. Its counters are then exactly the
stream's offsets. ``TlsFreeze.close_egress`` ends the old TLS connection before
the VM's socket passes: the pump's waiting read of it is cancelled (what it had
not taken the appliance sends again), the socket is shut for writing, and what
the appliance still sends is read and dropped until it closes its end, which it
does once it has every byte this relay wrote (then the successor's continuation
cannot overtake them). The appliance takes the closed connection as a break,
as when a relay dies, not as the stream's end.
"""

from __future__ import annotations

import contextlib
import socket

import trio

from relay.pump_freeze import Freeze
from relay.pump_peer import EgressView, PeerFreeze, VmView
from relay.pump_peer import movable as movable_fd_or_peer

CLOSE_WAIT = 5.0  # seconds for the appliance to close the old connection
DRAIN_READ = 256 * 1024


class TlsFreeze(PeerFreeze):
    """A movable TLS-egress pump: the freeze of relay.pump_peer, with no session to
    export; what moves is the VM's socket and the byte counts."""

    __slots__ = ("recv_left", "recv_scope")

    def __init__(self, vm: trio.SocketStream, inner: trio.SSLStream[trio.SocketStream]) -> None:
        super().__init__(vm, inner)
        self.recv_scope: trio.CancelScope | None = None  # around the egress read's wait
        self.recv_left = trio.Event()  # set when that read is over

    def snapshot_counts(self) -> None:
        """Frozen: bytes the egress gives from now on wait for the verdict."""
        self.snapped = True

    async def close_egress(self) -> bool:
        """End the old TLS connection (see the module); False if the appliance did not
        close its end within CLOSE_WAIT (the continuation may then overtake bytes)."""
        if self.recv_scope is not None:
            self.recv_scope.cancel()
            with trio.move_on_after(CLOSE_WAIT):
                await self.recv_left.wait()  # the read left its wait on the socket
        inner = self.inner
        assert isinstance(inner, trio.SSLStream)
        sock = inner.transport_stream.socket
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return True  # already gone
        with trio.move_on_after(CLOSE_WAIT):
            try:
                while await sock.recv(DRAIN_READ):
                    pass
            except OSError:
                pass
            return True
        return False


class TlsEgressView(EgressView):
    """The TLS egress as the pump sees it: its waiting read can be cancelled (the
    connection is given up, so no TLS state matters after it)."""

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        f = self.f
        assert isinstance(f, TlsFreeze)
        while True:
            if f.asked:
                await f.gate()
            with trio.CancelScope() as scope:
                f.recv_scope, f.recv_left = scope, trio.Event()
                try:
                    data = await self.inner.receive_some(max_bytes)
                finally:
                    f.recv_scope = None
                    f.recv_left.set()
            if scope.cancelled_caught:
                continue  # (to the gate: moved, it never returns)
            if f.snapped:
                await f.gate()  # moved: never returns (the appliance sends them again)
            f.down_holding = bool(data)
            return data


def movable(vm: trio.abc.Stream, egress: trio.abc.Stream) -> Freeze | PeerFreeze:
    """The freeze for a stream that can move (relay.pump_handoff.why_not said so)."""
    if isinstance(egress, trio.SSLStream):
        assert isinstance(vm, trio.SocketStream)
        return TlsFreeze(vm, egress)
    return movable_fd_or_peer(vm, egress)


def views(
    freeze: Freeze | PeerFreeze | None, vm: trio.abc.Stream, egress: trio.abc.Stream
) -> tuple[trio.abc.Stream, trio.abc.Stream, contextlib.AbstractContextManager[object]]:
    """What the pump runs between, and the scope it runs in."""
    if isinstance(freeze, TlsFreeze):
        return VmView(freeze), TlsEgressView(freeze), freeze.scope
    if isinstance(freeze, PeerFreeze):
        return VmView(freeze), EgressView(freeze), freeze.scope
    return vm, egress, contextlib.nullcontext()
