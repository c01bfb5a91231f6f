"""Listening sockets handed from one process to the next (``relay.handoff``).

A daemon that restarts by handing off passes its listening sockets, by key, to
its successor over a Unix socket (SCM_RIGHTS). The successor ``adopt()``s them
before it opens its listeners; each opener first asks ``inherit(key)`` for a
socket already bound and listening, so the port or path is never closed and no
connection is refused while the processes change. Keys name what was listened
on: ``tcp HOST:PORT#N``, ``peer ADDRESS``, ``unix PATH``.

``register``/``unregister`` keep the table of this process's listening sockets
(what it would hand on); after ``hand_on()`` its Unix listeners no longer remove
their paths when closed (the successor serves them now).
"""

from __future__ import annotations

import socket
from typing import Protocol

import trio


class HasFileno(Protocol):
    def fileno(self) -> int: ...


_inherited: dict[str, socket.socket] = {}
_listening: dict[str, HasFileno] = {}
_handed_on = False


def adopt(socks: dict[str, socket.socket]) -> None:
    _inherited.update(socks)


def inherit(key: str) -> socket.socket | None:
    """The socket the predecessor listened on under ``key`` (taken once), or None."""
    return _inherited.pop(key, None)


def unclaimed() -> list[str]:
    """Close what was handed over but is not configured any more; their keys."""
    keys = sorted(_inherited)
    for s in _inherited.values():
        s.close()
    _inherited.clear()
    return keys


async def open_tcp_listeners(key: str, port: int, host: str | None) -> list[trio.SocketListener]:
    """``trio.open_tcp_listeners``, or the sockets the previous process listened on
    under ``key`` (each registered as ``KEY#N``, to be handed on in turn)."""
    handed: list[trio.SocketListener] = []
    while (s := inherit(f"{key}#{len(handed)}")) is not None:
        handed.append(trio.SocketListener(trio.socket.from_stdlib_socket(s)))
    listeners = handed or await trio.open_tcp_listeners(port, host=host)
    for i, lst in enumerate(listeners):
        register(f"{key}#{i}", lst.socket)
    return listeners


def forget(key: str, listeners: list[trio.SocketListener]) -> None:
    for i, lst in enumerate(listeners):
        unregister(f"{key}#{i}", lst.socket)


def register(key: str, sock: HasFileno) -> None:
    _listening[key] = sock


def unregister(key: str, sock: HasFileno) -> None:
    if _listening.get(key) is sock:
        del _listening[key]


def listening() -> dict[str, HasFileno]:
    """This process's listening sockets still open, by key."""
    for key in [k for k, s in _listening.items() if s.fileno() < 0]:
        del _listening[key]  # closed without unregister: nothing to hand on
    return dict(_listening)


def hand_on() -> None:
    global _handed_on
    _handed_on = True


def handed_on() -> bool:
    return _handed_on
