"""The ESX simulator's errors (:mod:`vic.lab.esx_sim`)."""

from __future__ import annotations

import trio


class SimError(Exception):
    """Base of the simulator's errors."""


class ConnectionClosed(SimError):
    """The vSPC closed the connection (or it failed)."""


class ProtocolViolation(SimError):
    """The vSPC sent something a real ESX would reject."""


class HandshakeTimeout(SimError, trio.TooSlowError):
    """The vSPC did not finish the Telnet/option-232 handshake in time."""


class VMotionNotNow(SimError):
    """The vSPC answered BEGIN with NOTNOW."""


class VMotionTimeout(SimError):
    """No answer in time (ESX would fail the migration)."""


class VMotionRefused(SimError):
    """The vSPC closed the connection instead of answering PEER."""
