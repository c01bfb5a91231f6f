"""Errors of the guestinfo key scheme."""

from __future__ import annotations


class GuestinfoError(Exception):
    """Base class for guestinfo problems."""


class GuestinfoLimitError(GuestinfoError):
    """A write would exceed the per-value or per-VM size limit."""


class ReadOnlyKeyError(GuestinfoError):
    """The guest tried to write a key it may only read."""


class SessionConfigError(GuestinfoError):
    """The session config the appliance wrote is unusable; str() is the user-facing text."""
