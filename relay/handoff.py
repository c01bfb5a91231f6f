"""Restart by handoff: the next relay process takes the listening sockets over.

With ``handoff-socket = PATH`` in the config, a relay listens on PATH (mode 0600).
A relay that starts while another one serves PATH (an upgrade, a config change
that needs a restart) takes over instead of binding:

1. it connects and sends ``take``; the running relay answers with one JSON line
   ``{"pid": N, "keys": [...]}`` carrying every listening socket it has (SCM_RIGHTS):
   ingress TCP and Unix listeners, peer listeners, the admin socket, the metrics
   port and PATH itself (``common.ops.inherit``); no port or path is ever closed,
   so no connection is refused while the processes change;
2. it starts on those sockets and, once READY, sends ``ready``;
3. the old relay stops accepting and leaves every session that ends at it
   (RESET INTERNAL: retryable): each peer relay's resumable stream resumes against
   the new process at once, which answers UNKNOWN_SESSION, and the sender
   CONTINUES the stream from its last acknowledged byte (no loss, no repeat);
4. it moves the live streams whose VM side is a plain socket (the VM's own
   TCP/Unix/vsock connection) and whose egress is a TCP/Unix/vsock socket, TLS,
   or a resumable stream on a peer route: each pump stops at a safe point
   (nothing held in user space or a splice pipe; relay.pump_freeze,
   relay.pump_peer, relay.pump_tls), and their sockets pass with each stream's
   state in batches of JSON lines plus SCM_RIGHTS (relay.core.handoff_wire,
   relay.pump_handoff); a peer-route stream passes its session too (offsets,
   replay bytes, bytes not yet written to the VM: common.link.resume_export)
   and is let go here without a frame, and the successor resumes it on its own
   peer link. A TLS egress cannot pass (Python's ssl cannot export its state):
   this process ends that TLS connection once the appliance has every byte it
   wrote (relay.pump_tls) and passes the VM's socket with the byte counts each
   way; the successor opens a new TLS connection whose origin header (version
   2) continues the stream at those offsets, and the appliance skips nothing
   twice and sends the VM again what it never got (within its
   ``resend-bytes``; keystrokes typed while no connection of the VM is open are
   discarded with a notice to the typist, as at any reconnect). The successor
   pumps them on, so bytes not yet read wait in the kernel and none is lost or
   repeated. The other local streams (a FIFO-pair pipe, pty or serial ingress;
   a half-closed stream; a pump that found no safe point within
   ``MOVE_DEADLINE``) drain there (``timeouts.drain``) and are cut after it,
   as on SIGTERM; each stream's path is a log line and
   ``relay_handoff_streams_total{path}``. It answers ``released`` and exits
   once its last stream is gone.

Under systemd the successor says ``MAINPID=<its pid>`` before step 3 and the old
process does not say ``STOPPING=1``: with ``NotifyAccess=all`` the unit follows
the new process and the old one's exit is no stop.

If the new process dies before ``ready`` the old one carries on as if nothing
happened.
"""

from __future__ import annotations

import array
import functools
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from common.io.listen import listening
from common.io.unixlisten import UnixListener, open_unix_listener
from common.ops import inherit, sdnotify
from relay import handoff_holds as holds
from relay.core.handoff_wire import Batch, Receiver, Released, WireError

log = logging.getLogger("relay.handoff")

MAX_FDS = 250  # SCM_MAX_FD is 253
READY_TIMEOUT = 300.0  # the successor's start-up, certificates and all
RELEASE_TIMEOUT = 30.0  # from ``ready`` to ``released``: the live streams pass meanwhile

Adopt = Callable[[Batch], None]
SendBatch = Callable[[bytes, Sequence[int]], Awaitable[None]]


async def _line(stream: trio.SocketStream, limit: int = 4096) -> bytes:
    buf = bytearray()
    while b"\n" not in buf and len(buf) < limit:
        data = await stream.receive_some(limit)
        if not data:
            break
        buf += data
    return bytes(buf).split(b"\n", 1)[0].strip()


def _fds(anc: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, cdata in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(cdata[: len(cdata) - len(cdata) % fds.itemsize])
    return list(fds)


class Successor:
    """The new process's side: the connection to the relay it takes over from."""

    def __init__(self, sock: trio.socket.SocketType, pid: int, keys: list[str]) -> None:
        self.stream = trio.SocketStream(sock)
        self.pid = pid
        self.keys = keys

    async def confirm(self, adopt: Adopt) -> bool:
        """We are READY: the old process lets go of its streams, passing the live
        ones that can move (``adopt`` carries each batch on). Under systemd
        (``NotifyAccess=all``) this process becomes the service's main PID first."""
        sdnotify.notify(f"MAINPID={os.getpid()}")
        rx = Receiver()
        try:
            await self.stream.send_all(b"ready\n")
            with trio.fail_after(RELEASE_TIMEOUT):
                return await self._receive(rx, adopt)
        except (OSError, trio.BrokenResourceError, trio.TooSlowError, WireError) as e:
            log.warning("handoff: pid %d did not confirm: %s", self.pid, e)
            for fd in rx.held_fds:
                os.close(fd)
            return False
        finally:
            holds.settled()
            await trio.aclose_forcefully(self.stream)

    async def _receive(self, rx: Receiver, adopt: Adopt) -> bool:
        sock = self.stream.socket
        while True:
            data, anc, flags, _addr = await sock.recvmsg(65536, socket.CMSG_SPACE(MAX_FDS * 4))
            fds = _fds(anc)
            if flags & socket.MSG_CTRUNC:
                for fd in fds:
                    os.close(fd)
                raise OSError("handoff: passed sockets truncated")
            if not data:
                return False
            for event in rx.feed(data, fds):
                if isinstance(event, Released):
                    return True
                adopt(event)


async def take_over(path: Path) -> Successor | None:
    """Take the listening sockets of the relay serving ``path``; None if none does."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.connect(os.fspath(path))
    except OSError:  # nobody there (or no such directory: opening it will say so)
        sock.close()
        return None  # a plain start
    try:
        await sock.send(b"take\n")
        with trio.fail_after(10):
            data, anc, _flags, _addr = await sock.recvmsg(65536, socket.CMSG_SPACE(MAX_FDS * 4))
            while b"\n" not in data:
                more = await sock.recv(65536)
                if not more:
                    raise OSError("handoff: the running relay closed the connection")
                data += more
    except BaseException:
        sock.close()
        raise
    fds = _fds(anc)
    head = json.loads(data.split(b"\n", 1)[0])
    keys = [str(k) for k in head["keys"]]
    if len(keys) != len(fds):
        for fd in fds:
            os.close(fd)
        sock.close()
        raise OSError(f"handoff: {len(keys)} names for {len(fds)} sockets")
    inherit.adopt({k: socket.socket(fileno=fd) for k, fd in zip(keys, fds, strict=True)})
    log.info("taking over from relay pid %s: %d listening sockets", head["pid"], len(keys))
    holds.taking_over(int(head["pid"]))  # (connect-mode pipes wait: relay.handoff_holds)
    return Successor(sock, int(head["pid"]), keys)


class HandoffServer:
    """The running process's side: hands its sockets to a successor, then lets go."""

    def __init__(self, path: Path, let_go: Callable[[SendBatch], Awaitable[None]]) -> None:
        self.path = path
        self.let_go = let_go
        self.scope = trio.CancelScope()
        self._busy = False
        self._listener: UnixListener | None = None

    async def open(self) -> None:
        """Listen (on the predecessor's socket when it handed us one)."""
        self._listener = await open_unix_listener(self.path, mode=0o600, backlog=4)

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        if self._listener is None:
            await self.open()
        assert self._listener is not None
        listener = self._listener
        try:
            with self.scope:
                await trio.serve_listeners(self._handle, [listener], task_status=task_status)
        finally:
            listener.close()

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            if self._busy or inherit.handed_on():
                await stream.send_all(b'{"error": "a handoff is already under way"}\n')
                return
            self._busy = True
            try:
                await self._hand(stream)
            finally:
                self._busy = False
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
            log.warning("handoff: abandoned (%s); carrying on", e)
        finally:
            await trio.aclose_forcefully(stream)

    async def _hand(self, stream: trio.SocketStream) -> None:
        with trio.fail_after(10):
            if await _line(stream) != b"take":
                return
        socks = inherit.listening()
        keys = sorted(socks)[:MAX_FDS]
        head = json.dumps({"pid": os.getpid(), "keys": keys}).encode() + b"\n"
        fds = array.array("i", [socks[k].fileno() for k in keys])
        await stream.socket.sendmsg([head], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        log.info("handoff: %d listening sockets passed; waiting for the successor", len(keys))
        with trio.move_on_after(READY_TIMEOUT):
            if await _line(stream) == b"ready":
                inherit.hand_on()
                # (shielded: the last stream moved ends this process's run, which
                # must not cut the handoff short of ``released``)
                with trio.CancelScope(shield=True), trio.move_on_after(RELEASE_TIMEOUT):
                    await self.let_go(functools.partial(_send_batch, stream))
                    await stream.send_all(b"released\n")
                self.scope.cancel()  # (this handler too)
                return
        log.warning("handoff: the successor did not become ready; carrying on")


async def _send_batch(stream: trio.SocketStream, line: bytes, fds: Sequence[int]) -> None:
    """One batch of live streams: the line, its fds riding with its first bytes."""
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
    n = await stream.socket.sendmsg([line], rights)
    if n < len(line):
        await stream.send_all(line[n:])


async def open_server(
    path: Path | None, on_handoff: Callable[[SendBatch], Awaitable[None]]
) -> HandoffServer | None:
    """The handoff socket (``handoff-socket``), bound; None when not configured."""
    if path is None:
        return None
    server = HandoffServer(path, on_handoff)
    with listening("handoff-socket", where=str(path)):
        await server.open()
    return server


async def serve(
    svc: trio.Nursery, server: HandoffServer, taker: Successor | None, adopt: Adopt
) -> None:
    """Once READY: close what the predecessor passed that this config does not use,
    confirm the takeover to it, then serve the handoff socket for our successor."""
    for key in inherit.unclaimed():
        log.info("handoff: %s not in this config, closed", key)
    if taker is not None:
        ok = await taker.confirm(adopt)
        log.info("took over from relay pid %d%s", taker.pid, "" if ok else " (unconfirmed)")
    await svc.start(server.serve)
