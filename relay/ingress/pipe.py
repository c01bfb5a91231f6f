"""Pipe-backed serial ports.

ESX maps a VM's serial port to a named pipe; the VM end is the server or the
client, so the relay is the other one:

* ``listen``: the relay listens on the Unix socket, the VM end connects (again
  after each power cycle);
* ``connect``: the VM end listens, the relay connects, and reconnects with
  backoff when the VM goes away and comes back;
* ``fifo``: a FIFO pair as QEMU's pipe chardev uses: the relay reads
  ``<path>.out`` and writes ``<path>.in``; a stream starts when the VM side first
  writes and ends when it closes its end.

A handoff (relay.handoff) passes a listen- or connect-mode stream (a Unix
socket) to the successor; a successor's connect loop waits for the stream it
was passed from that VM end to end before it connects (relay.handoff_holds).
FIFO pairs cannot be handed over (the config refuses ``handoff-socket`` then).
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any

import trio

from common.io.unixlisten import open_unix_listener
from relay import handoff_holds as holds
from relay.config import PipeListener
from relay.ingress import BACKLOG, IngressSink, Origin, accept_loop, wait_done

log = logging.getLogger("relay.ingress.pipe")


async def serve(
    cfg: PipeListener, sink: IngressSink, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    if cfg.mode == "listen":
        await _listen(cfg, sink, task_status)
    elif cfg.mode == "connect":
        await _connect(cfg, sink, task_status)
    else:
        await _fifo(cfg, sink, task_status)


def _origin(cfg: PipeListener) -> Origin:
    return Origin(cfg.name, "pipe", cfg.vm, cfg.label, str(cfg.path))


async def _listen(cfg: PipeListener, sink: IngressSink, task_status: Any) -> None:
    listener = await open_unix_listener(cfg.path, mode=0o660, backlog=BACKLOG)
    try:
        task_status.started(str(cfg.path))
        log.info("route=%s vm=%s listening on %s", cfg.name, cfg.vm, cfg.path)
        origin = _origin(cfg)

        async def on_accept(conn: trio.socket.SocketType, addr: Any) -> None:
            await sink.dispatch(trio.SocketStream(conn), origin)

        await accept_loop(listener.socket, cfg.name, on_accept)
    finally:
        listener.close()


async def _connect(cfg: PipeListener, sink: IngressSink, task_status: Any) -> None:
    task_status.started(str(cfg.path))
    backoff = sink.backoff()
    origin = _origin(cfg)
    down_logged = False
    while True:
        await holds.wait_clear(str(cfg.path))  # (after a handoff: relay.handoff_holds)
        try:
            stream = await trio.open_unix_socket(str(cfg.path))
        except OSError as e:
            if not down_logged:  # a connect failure: WARNING, once until it connects
                log.warning(
                    "route=%s vm=%s waiting for the VM end at %s (%s)",
                    cfg.name,
                    cfg.vm,
                    cfg.path,
                    e.strerror or e,
                )
                down_logged = True
            await backoff.sleep()
            continue
        down_logged = False
        backoff.reset()
        log.info("route=%s vm=%s connected to %s", cfg.name, cfg.vm, cfg.path)
        done = await sink.dispatch(stream, origin, track=True)
        if done is None:
            await backoff.sleep()
        else:
            await wait_done(done)


def _open_write_end(path: Path) -> int:
    """The VM's input FIFO; if the VM is not reading yet, hold it open read-write
    so that what we write waits in the pipe for the reader."""
    try:
        return os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno != errno.ENXIO:
            raise
        return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)


async def _fifo(cfg: PipeListener, sink: IngressSink, task_status: Any) -> None:
    out_path = Path(f"{cfg.path}.out")
    in_path = Path(f"{cfg.path}.in")
    task_status.started(str(cfg.path))
    backoff = sink.backoff()
    origin = _origin(cfg)
    while True:
        try:
            rfd = os.open(out_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            log.debug("route=%s vm=%s cannot open %s (%s)", cfg.name, cfg.vm, out_path, e)
            await backoff.sleep()
            continue
        try:
            # Readable once the VM side has written, or opened and closed again
            # (POLLHUP); until then a read would just say EOF.
            await trio.lowlevel.wait_readable(rfd)
            wfd = _open_write_end(in_path)
        except BaseException as e:
            os.close(rfd)
            if isinstance(e, OSError):
                log.warning("route=%s vm=%s cannot open %s (%s)", cfg.name, cfg.vm, in_path, e)
                await backoff.sleep()
                continue
            raise
        backoff.reset()
        stream = trio.StapledStream(trio.lowlevel.FdStream(wfd), trio.lowlevel.FdStream(rfd))
        done = await sink.dispatch(stream, origin, track=True)
        if done is None:
            await backoff.sleep()
        else:
            await wait_done(done)
