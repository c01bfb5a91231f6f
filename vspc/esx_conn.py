"""Trio adapter for one ESX Telnet connection to the vSPC.

One reader task feeds the sans-IO ``EsxSession`` and hands its events to the
service; it never waits on a console, a client or the disk (the service queues
console bytes per port), only on TCP and on its own bounded budgets. A writer
task, started only while something is queued (in the nursery that runs the
reader: no nursery per connection, as thousands are open), drains two outgoing queues,
control frames (GOAHEAD, NOTNOW, PEER-OK, negotiation) first, so a vMotion answer
never waits behind console data bound for the VM: console data is kept un-escaped
and escaped per chunk, so a control frame can go between any two chunks without
splitting an escaped 0xFF.

Output is bounded: console writers wait above OUT_HIGH_WATER, and the reader stops
reading a peer whose replies (control frames) pass CONTROL_HIGH_WATER unread, so a
client that sends negotiation and never reads gets back-pressure, not memory; a
write that makes no progress for OUTPUT_STALL_SECONDS closes the connection.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable

import trio

from common.io import fastsock
from common.io.streamlayers import find_layer
from common.ops.excgroups import first_leaf
from common.ops.wiretext import wire
from vspc.core.esx_session import EsxSession
from vspc.core.liveness import Liveness
from vspc.esx_owner import ConnectionOwner, report
from vspc.esx_parking import ParkedReads

log = logging.getLogger("vspc.esx")

_ids = itertools.count(1)
#: Bytes asked of one read; after a read of READ_SIZE or more, READ_SIZE_BULK
#: (fewer reads, less per-read work while a VM writes in bulk) until a shorter one.
READ_SIZE = 65536
READ_SIZE_BULK = 256 * 1024
#: Console bytes per write: small enough that a control frame never waits long.
WRITE_CHUNK = 16 * 1024
#: Console bytes queued towards the VM above which writers wait (``wait_out_room``).
OUT_HIGH_WATER = 256 * 1024
#: How long a connection being closed gets to flush what is queued for it.
CLOSE_FLUSH_SECONDS = 2.0
#: Control bytes (negotiation replies, ...) queued unread above which the peer is
#: no longer read until they drain (at most one read's replies more are queued).
CONTROL_HIGH_WATER = 64 * 1024
#: A write that makes no progress this long: the peer does not read; close it.
OUTPUT_STALL_SECONDS = 30.0


class EsxConnection(ParkedReads):
    """One live ESX connection (a hashable token for the switchboard).

    Small on purpose (thousands are open at once): the writer task exists only
    while there is something to write, and events are created only when waited on.
    """

    __slots__ = (
        "_closing",
        "_control",
        "_data",
        "_done",
        "_failed",
        "_inflight",
        "_nursery",
        "_resume",
        "_room",
        "_scope",
        "_sock",
        "_writing",
        "_wscope",
        "close_reason",
        "id",
        "key",
        "label",
        "liveness",
        "peer",
        "raw_uuid",
        "received_at",
        "refusal",
        "session",
        "stream",
        "vm_name",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        peer: str,
        proxy_rule: Callable[[str, str], bool],
    ) -> None:
        self.id = next(_ids)
        self.stream = stream
        self.peer = peer
        self.session = EsxSession(proxy_rule=proxy_rule)
        self.label: str | None = None
        self.raw_uuid: str | None = None
        self.vm_name: str | None = None
        self.key: object | None = None  # PortKey once bound
        self.received_at = 0.0  # trio time of the read being processed
        self._control = bytearray()
        self._data = bytearray()  # un-escaped console bytes for the VM
        self._inflight = 0  # bytes of the write under way
        self._writing = False  # a writer task is running
        self._closing = False
        self._nursery: trio.Nursery | None = None  # where writer tasks start
        self._scope: trio.CancelScope | None = None  # the reader's (not on a socket)
        self._sock: trio.socket.SocketType | None = None  # the socket under the stream
        self._wscope: trio.CancelScope | None = None  # the writer's, while it runs
        self._done: trio.Event | None = None  # set as the writer ends (when awaited)
        self._failed: BaseException | None = None  # what ended the writer
        self._room: trio.Event | None = None  # someone waits in wait_out_room
        self._resume: trio.Event | None = None  # the reader waits for resume_reading
        self.close_reason: str | None = None
        #: Why the vSPC's own checks closed it (vspc_telnet_refused_total's reason).
        self.refusal: str | None = None
        self.liveness: Liveness | None = None  # set by the service
        super().__init__()  # (parking)

    def __repr__(self) -> str:
        return f"<esx#{self.id} {wire(self.peer)}>"

    def __hash__(self) -> int:
        return self.id

    def __eq__(self, other: object) -> bool:
        return self is other

    @property
    def closing(self) -> bool:
        return self._closing

    def send_control(self, data: bytes) -> None:
        if data and not self._closing:
            self._control += data
            self._kick()

    async def send_control_now(self, data: bytes) -> None:
        """A vMotion answer, from this connection's own reader: written by the calling
        task at once when nothing else is being written (no writer task to start and
        wait for behind the rest of the loop's batch), else queued like send_control."""
        if not data or self._closing:
            return
        if self._writing or self._control or self._data or self._nursery is None:
            self.send_control(data)
            return
        if self.parked_fd is not None:  # from the parking watcher: it must not wait
            if not self.answer_at_once(data):
                self.send_control(data)
            return
        self._writing = True  # what is queued meanwhile waits for us (see _kick)
        try:
            with trio.CancelScope() as self._wscope:  # (close_soon's flush deadline)
                await self.stream.send_all(data)
        finally:
            self._writing = False
            self._wscope = None
        if self._control or self._data:
            self._kick()
        elif self._closing:
            self._cancel()  # flushed: now close

    def send_console(self, data: bytes) -> None:
        if data and not self._closing:
            self._data += data
            self._kick()

    def out_pending(self) -> int:
        """Bytes queued for the peer, the write under way included."""
        return len(self._control) + len(self._data) + self._inflight

    @property
    def output_full(self) -> bool:
        """The peer leaves our replies unread: stop reading it until they drain."""
        return len(self._control) > CONTROL_HIGH_WATER

    @property
    def reading_paused(self) -> bool:
        return self._resume is not None

    def refuse(self, reason: str, detail: str) -> None:
        """Close it for failing one of the vSPC's own checks (counted by ``reason``)."""
        if not self._closing:
            self.refusal = reason
            log.warning("%r: closing (%s): %s", self, reason, detail)
            self.close_soon(detail)

    async def wait_out_room(self) -> None:
        """Wait while more than OUT_HIGH_WATER console bytes wait for the VM."""
        while len(self._data) > OUT_HIGH_WATER and not self._closing:
            if self._room is None:
                self._room = trio.Event()
            await self._room.wait()

    def _wake_room(self) -> None:
        if self._room is not None:
            self._room.set()
            self._room = None

    def resume_reading(self) -> None:
        if self._resume is not None:
            self._resume.set()
            self._resume = None

    def close_soon(self, reason: str) -> None:
        """Close after flushing what is queued (for at most CLOSE_FLUSH_SECONDS)."""
        if not self._closing:
            self._closing = True
            self.close_reason = reason
            self._wake_room()
            if self._writing:  # the writer stops the reader once flushed
                if self._wscope is not None:
                    flushed_by = trio.current_time() + CLOSE_FLUSH_SECONDS
                    self._wscope.deadline = min(self._wscope.deadline, flushed_by)
            else:
                self._cancel()
        self.resume_reading()

    def _cancel(self) -> None:
        """Stop the reader and writer. A reader on a socket has no cancel scope (0.7 KiB):
        it is woken from the socket (closed next), by resume_reading, or sees closing."""
        if self._wscope is not None:
            self._wscope.cancel()
        if self.parked_fd is not None and self.parking is not None:
            self.parking.unpark(self, self.parked_fd)  # a task of its own again, to close
        elif self._scope is not None:
            self._scope.cancel()
        elif self._sock is not None and self._sock.fileno() >= 0:
            trio.lowlevel.notify_closing(self._sock)

    def _fail(self, e: BaseException) -> None:
        self._failed = self._failed or e
        self._closing = True

    @property
    def writer_failed(self) -> bool:
        return self._failed is not None

    def _stalled(self) -> None:
        log.warning(
            "%r: closing (output): %d bytes unread by the peer for %.0f s",
            self,
            self.out_pending(),
            OUTPUT_STALL_SECONDS,
        )
        self.refusal = self.refusal or "output"
        self._closing = True
        self.close_reason = self.close_reason or "peer does not read"
        self._control.clear()
        self._data.clear()
        self._wake_room()
        self.resume_reading()
        self._cancel()

    def _kick(self) -> None:
        if not self._writing and self._nursery is not None:
            self._writing = True
            self._nursery.start_soon(self._write)

    async def _write(self) -> None:
        """Write until nothing is queued, then end. It runs beside the reader, not
        under it: what ends it is kept for the reader (``run``) to report."""
        try:
            with trio.CancelScope() as self._wscope:
                if self._closing:  # (started by run: closed before it ran)
                    self._wscope.deadline = trio.current_time() + CLOSE_FLUSH_SECONDS
                await self._write_queued()
        except Exception as e:  # the reader reports it (run)
            self._failed = self._failed or e
            self._closing = True
            self._cancel()
        finally:
            self._wscope = None
            self._writing = False
            self._inflight = 0
            if self._done is not None:
                self._done.set()
        if self._closing:
            self._cancel()  # flushed: now close

    async def _write_queued(self) -> None:
        """Write until nothing is queued (control frames first)."""
        while self._control or self._data:
            control = bool(self._control)
            if control:
                chunk = bytes(self._control)
                self._control.clear()
            else:
                raw = bytes(self._data[:WRITE_CHUNK])
                del self._data[: len(raw)]
                chunk = self.session.send_console(raw)
                if len(self._data) <= OUT_HIGH_WATER:
                    self._wake_room()
            self._inflight = len(chunk)
            with trio.move_on_after(OUTPUT_STALL_SECONDS) as stall:
                await self.stream.send_all(chunk)
            self._inflight = 0
            if stall.cancelled_caught:
                self._stalled()
                return
            if control:
                self.resume_reading()  # a reader paused on output_full re-checks

    async def run(self, service: ConnectionOwner) -> None:
        """Serve the connection until EOF, error, or the switchboard closes it (the read
        loop is here, not in a coroutine of its own: fewer frames per idle task), or
        until it parks (the task ends; the parking watcher reads it, see esx_parking)."""
        failure: BaseException | None = None
        parked = False
        layer = find_layer(self.stream, trio.SocketStream)
        self._sock = layer.socket if layer is not None else None
        may_park = self._nursery is None  # new; else unparked: read once here first
        try:
            with (
                contextlib.nullcontext() if self._sock is not None else trio.CancelScope() as scope
            ):
                self._scope = scope
                self._nursery = trio.lowlevel.current_task().parent_nursery
                self.send_control(self.session.initial_bytes())
                self._kick()  # anything queued before the reader ran
                size = READ_SIZE if may_park else READ_SIZE_BULK  # (unparked: in bulk)
                receive_some = fastsock.receiver(self.stream)  # one yield per read
                while not self._closing:
                    await self._wait_budget(service)
                    if self._closing or (may_park and (parked := self._park())):
                        break
                    data = await receive_some(size)
                    if not data:
                        log.debug("%r: EOF", self)
                        break
                    # In bulk a VM keeps its task: two short reads in a row park it, not one.
                    may_park = len(data) < READ_SIZE and size == READ_SIZE
                    size = READ_SIZE_BULK if len(data) >= READ_SIZE else READ_SIZE
                    await self._received(data if type(data) is bytes else bytes(data), service)
                if self._closing and self._writing and not parked:  # flush (deadline-bound)
                    done = self._done = trio.Event()
                    await done.wait()
            self._scope = None
            if self._failed is not None and not parked:
                raise self._failed
        except* Exception as eg:  # a bug too must cost this connection only
            failure = first_leaf(eg)
        finally:
            if not parked:
                with trio.CancelScope(shield=True):
                    await self._finish(service, failure)

    async def _received(self, data: bytes, service: ConnectionOwner) -> None:
        """One read's bytes: through the session core, its events to the service."""
        now = self.received_at = trio.current_time()
        live = self.liveness
        if live is not None and live.heard(now):
            await service.probe_answered(self)  # any bytes prove it alive
        self.session.receive_data(data)
        events = self.session.next_events()
        out = self.session.data_to_send()
        if out:
            self.send_control(out)
        for ev in events:
            await service.on_session_event(self, ev)
            if self._closing:
                return

    def _over_budget(self, service: ConnectionOwner) -> bool:
        """Past its budgets: bytes held for a later owner (switchboard), bytes queued
        for the console (service), replies unread (output_full)."""
        return self.output_full or not service.may_read(self)

    async def _wait_budget(self, service: ConnectionOwner) -> None:
        while not self._closing and self._over_budget(service):
            if not self._closing:  # (may_read may have refused it)
                resume = self._resume = trio.Event()
                await resume.wait()

    async def _finish(self, service: ConnectionOwner, failure: BaseException | None) -> None:
        """Closed: stop the writer, report, tell the service, close the stream."""
        self._closing = True
        self._nursery = None
        self._wake_room()
        if self._writing:  # EOF or an error: what is queued is dropped
            self._control.clear()  # (a writer not started yet finds nothing)
            self._data.clear()
            self._cancel()
            done = self._done = trio.Event()
            await done.wait()
        if failure is not None:  # (once no writer uses the stream: TLS state is final)
            report(self, failure, service)
        try:
            await service.connection_closed(self)
        except Exception:  # a bug must not take the service down
            log.exception("%r: error while closing", self)
        await trio.aclose_forcefully(self.stream)
