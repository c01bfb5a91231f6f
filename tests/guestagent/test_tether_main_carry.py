"""The main process's output across a lost session (the appliance restarted).

``MainAttach.detach_all`` (the tether's ``_session_lost``) holds again what the old
session's attach channel had not got acknowledged, and the new session's first
attach gets exactly that: output written while the appliance was away reaches its
logs, and what it acknowledged (logged) is not sent twice. Two sans-IO Sessions
joined by ``tests.common.proto.session.test_session.Wire`` stand for each session.
"""

from __future__ import annotations

from common.io.sealedsession import SessionEndpoint
from common.proto.session.channels import Role
from common.proto.session.messages import Stream
from guestagent.tether_attach import MainAttach
from tests.common.proto.session.test_session import Wire, received


def attached(w: Wire, main: MainAttach) -> int:
    """The appliance's attach channel on ``w``, accepted by ``main``."""
    ch = w.a.open_attach(tty=False)
    w.settle()
    main.attach(ch, tty=False)
    return ch


async def test_unacknowledged_main_output_goes_to_the_next_session() -> None:
    old = Wire(auto_accept=False)
    ep = SessionEndpoint(Role.TETHER, old.t, lambda: (b"s" * 32,), name="tether")
    main = MainAttach(ep, hold_bytes=1 << 20, replay_bytes=1 << 20)
    main.enabled = True
    ch = attached(old, main)
    await main.write(b"logged\n")
    old.settle()  # it reached the appliance, which acknowledged it
    await main.write(b"while the appliance was away\n")
    await main.write_stderr(b"an error meanwhile\n")
    old.flush()  # on the wire when the appliance died: never acknowledged
    assert received(old.events[0], ch, Stream.STDOUT) == b"logged\n"

    main.detach_all()  # the appliance lost the session
    new = Wire(auto_accept=False)
    ep.replace_session(new.t)
    await main.write(b"after\n")
    ch2 = attached(new, main)
    new.settle()
    out = received(new.events[0], ch2, Stream.STDOUT)
    assert out == b"while the appliance was away\nafter\n"
    assert received(new.events[0], ch2, Stream.STDERR) == b"an error meanwhile\n"


async def test_nothing_unacknowledged_means_nothing_sent_again() -> None:
    old = Wire(auto_accept=False)
    ep = SessionEndpoint(Role.TETHER, old.t, lambda: (b"s" * 32,), name="tether")
    main = MainAttach(ep, hold_bytes=1 << 20, replay_bytes=1 << 20)
    main.enabled = True
    attached(old, main)
    await main.write(b"logged\n")
    old.settle()
    main.detach_all()
    new = Wire(auto_accept=False)
    ep.replace_session(new.t)
    ch2 = attached(new, main)
    new.settle()
    assert received(new.events[0], ch2, Stream.STDOUT) == b""
