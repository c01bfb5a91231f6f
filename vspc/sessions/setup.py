"""The session service as the vSPC starts it from ``[sessions]``."""

from __future__ import annotations

from functools import partial

from vspc.config import SessionsConfig
from vspc.console.service import ConsoleService
from vspc.sessions.api import SessionsApi
from vspc.sessions.guestinfo import guestinfo_store
from vspc.sessions.requests import serve_request
from vspc.sessions.service import SessionService


def session_service(config: SessionsConfig, consoles: ConsoleService) -> SessionService | None:
    """The service (None when disabled), its EXEC and LOGS served on the console endpoint."""
    if not config.enabled:
        return None
    service = SessionService(config, guestinfo_store(config), metrics=consoles.metrics)
    consoles.session_requests = partial(serve_request, SessionsApi(service))
    return service
