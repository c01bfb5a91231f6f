"""Stopping a pump between a VM socket and a peer-link resumable stream, to move it.

A VM stream whose egress is a resumable stream on a peer link (relay.mesh) is
pumped on the copy path: its bytes pass through user space, and the resumable
stream holds state (offsets, replay bytes, bytes received and not yet written
to the VM) that no fd carries. To move it to the successor (relay.pump_handoff)
the pump runs between two thin views, ``VmView`` and ``EgressView``, that
share a ``PeerFreeze``:

* once asked, neither direction starts anything new: the VM-to-peer direction
  waits (``gate``) before it reads the VM socket, the peer-to-VM direction
  before it takes bytes from the resumable stream;
* the stream is at a safe point (``frozen``) when neither direction holds
  bytes it read and has not finished writing (a chunk read from the VM and not
  yet in the session, a chunk taken from the session and not yet written to
  the VM); then the session's state is exactly the VM socket's:
  common.link.resume_export takes it, and the mover passes it with the VM
  socket's fd;
* bytes taken from the session after its state was taken wait for the verdict:
  moved, they are dropped (the successor has them as pending bytes); called off,
  they go to the VM;
* moved: the resumable stream is let go here without a frame to the far end
  (it resumes from the successor), and the pump is cancelled at its waits; its
  views close only this process's copy of the VM socket.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import trio

from common.io.fastsock import unthrottle_tcp
from common.link.resumable import ResumableStream
from common.link.resume_export import StreamImage, export_stream, let_go
from relay.pump_freeze import Freeze

READ_SIZE = 256 * 1024


class PeerFreeze:
    """What the mover (relay.pump_handoff) sees of a movable peer-egress pump; the
    same questions and answers as relay.pump_freeze.Freeze."""

    __slots__ = (
        "_gate",
        "asked",
        "decided",
        "direct",
        "down_holding",
        "ended",
        "inner",
        "moved",
        "scope",
        "session",
        "snapped",
        "up_holding",
        "vm",
    )

    def __init__(self, vm: trio.SocketStream, inner: trio.abc.Stream) -> None:
        self.vm = vm
        self.inner = inner
        self.session = None  # (no relay.park session: the copy path never parks)
        self.scope = trio.CancelScope()  # around the pump: cancelled once moved
        self.asked = self.decided = self.moved = self.snapped = self.ended = False
        self.up_holding = False  # read from the VM, not yet all in the session
        self.down_holding = False  # taken from the session, not yet all written to the VM
        self._gate: trio.Event | None = None
        # the VM socket the link may splice payloads into (EgressView.deliver_to):
        # only while not asked to stop, so the session's state is the socket's
        self.direct: tuple[int, Callable[[int], None] | None] | None = None

    def _direct(self) -> None:
        if not isinstance(self.inner, ResumableStream):
            return
        if self.direct is not None and not self.asked and not self.moved:
            self.inner.deliver_to(*self.direct)
        else:
            self.inner.deliver_to(None)

    # --- the mover's side --------------------------------------------------------------
    def ask(self) -> None:
        self.asked, self.decided, self.moved = True, False, False
        self._direct()

    def poke(self) -> None:
        """(Nothing to poke: the views stop at their gates by themselves.)"""

    @property
    def frozen(self) -> bool:
        return (
            self.asked
            and not self.decided
            and not self.ended
            and not self.up_holding
            and not self.down_holding
        )

    @property
    def stopped(self) -> bool:
        return self.ended or self.frozen

    def snapshot(self) -> StreamImage:
        """The session's state now (frozen; raises NotImageable)."""
        assert isinstance(self.inner, ResumableStream)
        img = export_stream(self.inner)
        self.snapped = True
        return img

    def decide(self, moved: bool) -> None:
        self.decided, self.moved, self.snapped = True, moved, self.snapped and moved
        if moved:
            if isinstance(self.inner, ResumableStream):
                let_go(self.inner, "moved to the successor")
            self.scope.cancel()
        else:
            self.asked = False
        self._direct()
        if self._gate is not None:
            self._gate.set()
            self._gate = None

    # --- the views' side -----------------------------------------------------------------
    async def gate(self) -> None:
        """Asked to stop: wait for the verdict (moved: for the cancellation)."""
        while self.asked or self.snapped:
            if self.moved:
                await trio.sleep_forever()
            if self._gate is None:
                self._gate = trio.Event()
            await self._gate.wait()


class VmView(trio.abc.HalfCloseableStream):
    """The VM socket as the pump sees it: reads only when not asked to stop."""

    def __init__(self, f: PeerFreeze) -> None:
        self.f = f
        self.vm = f.vm
        unthrottle_tcp(f.vm.socket)  # (what the pump does for a socket it writes bulk into)

    @property
    def socket(self) -> trio.socket.SocketType:
        """(For a link that splices payloads straight in: EgressView.deliver_to.)"""
        return self.vm.socket

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Read only when not asked to stop: a read that waits re-checks after the wait
        (what trio's own ``recv`` does, with the check between wait and read)."""
        f, sock = self.f, self.vm.socket
        while True:
            if f.asked:
                await f.gate()
                continue
            try:
                data = os.read(sock.fileno(), max_bytes or READ_SIZE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError as e:
                raise trio.BrokenResourceError(str(e)) from e
            f.up_holding = bool(data)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.vm.send_all(data)
        self.f.down_holding = False

    async def wait_send_all_might_not_block(self) -> None:
        await self.vm.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if not self.f.moved:  # (a moved socket is the successor's to shut down)
            await self.vm.send_eof()

    async def aclose(self) -> None:
        await self.vm.aclose()  # (only this process's fd)


class EgressView(trio.abc.HalfCloseableStream):
    """The resumable stream as the pump sees it: takes bytes only when not asked to
    stop; what it took after the state was taken waits for the verdict."""

    def __init__(self, f: PeerFreeze) -> None:
        self.f = f
        self.inner = f.inner

    def deliver_to(self, fd: int | None, moved: Callable[[int], None] | None = None) -> None:
        """ResumableStream.deliver_to, only while the pump is not asked to stop."""
        self.f.direct = None if fd is None else (fd, moved)
        self.f._direct()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        f = self.f
        if f.asked:
            await f.gate()
        data = await self.inner.receive_some(max_bytes)
        if f.snapped:
            await f.gate()  # moved: never returns (the successor has these bytes)
        f.down_holding = bool(data)
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)
        self.f.up_holding = False

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        # (a TLS egress has no half-close: the pump closes it with the VM's side)
        if not self.f.moved and isinstance(self.inner, trio.abc.HalfCloseableStream):
            await self.inner.send_eof()

    async def aclose(self) -> None:
        if not self.f.moved:
            await self.inner.aclose()
        else:
            await trio.lowlevel.checkpoint()


def movable(vm: trio.abc.Stream, egress: trio.abc.Stream) -> Freeze | PeerFreeze:
    """The freeze for a stream that can move (relay.pump_handoff.why_not said so)."""
    if isinstance(egress, ResumableStream):
        assert isinstance(vm, trio.SocketStream)
        return PeerFreeze(vm, egress)
    return Freeze()


def views(
    freeze: Freeze | PeerFreeze | None, vm: trio.abc.Stream, egress: trio.abc.Stream
) -> tuple[trio.abc.Stream, trio.abc.Stream, contextlib.AbstractContextManager[object]]:
    """What the pump runs between, and the scope it runs in."""
    if isinstance(freeze, PeerFreeze):
        return VmView(freeze), EgressView(freeze), freeze.scope
    return vm, egress, contextlib.nullcontext()
