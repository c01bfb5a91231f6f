"""The session service: one ``SessionEndpoint`` per tethered VM, kept across connections.

Per VM (``prepare(vm)``, or the first relayed stream labelled ``session`` that
names it) the service makes a secret (``secret-bytes`` from the injectable
``random_bytes``), writes it to the VM's guestinfo (the read-only key
``guestinfo.vice./tether/secrets``, ``common.proto.guestinfo.keys``; the file store
or vSphere's extraConfig, ``vspc.sessions.guestinfo``) and keeps a
``SessionEndpoint`` (the appliance end, the sealed transport's initiator) and a
``VmSession`` (``vspc.sessions.channel``) consuming its events. A secret already
in guestinfo (an appliance restart) is kept. ``rotate(vm)`` writes a new secret
and the previous one (the tether accepts both while it settles); new
connections use the new one. A relayed stream is handed to the VM's endpoint
(``serve_stream``); the newest one carries the session, the older is replaced.

When the tether lost the session (it restarted: the core reports
``SESSION_MISMATCH`` on the first connection), the service starts a new one:
open execs end with ``ExecRefused``, the main process is attached again. Nothing
else starts a new session: connections that are sealed and then cut before they
resume (a link flapping, a VM moving twice in a row) only ever resume it, so no
exec is lost to a count of them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import trio

from common.io.guestinfo.base import BackendError
from common.io.sealedsession import SessionEndpoint
from common.ops.wiretext import wire
from common.proto.guestinfo import keys as gik
from common.proto.guestinfo.errors import GuestinfoError
from common.proto.identity import IdentityError
from common.proto.link.header import OriginHeader
from common.proto.session import channels as chs
from common.proto.session.channels import Role
from common.proto.session.messages import SESSION_ID_LEN, ErrorCode
from common.proto.session.session import Session, SessionConfig
from vspc.config import SessionsConfig
from vspc.containerlogs.store import ContainerLogs, ContainerLogSettings
from vspc.core.identity import vm_key
from vspc.guestinfo_watch import GuestinfoWatcher
from vspc.metrics import VspcMetrics
from vspc.sessions.channel import VmSession
from vspc.sessions.guestinfo import scrubbed
from vspc.sessions.metrics import SessionMetrics

log = logging.getLogger("vspc.sessions")

LABEL = "session"
SECRETS_KEY = gik.session_secrets_key()


class SessionsDisabled(Exception):
    """Sessions are off, or this appliance holds ``max-vms`` of them already."""


class _Vm:
    def __init__(self, vm: str, secrets: tuple[bytes, ...], ep: SessionEndpoint) -> None:
        self.vm = vm
        self.secrets = secrets  # current first
        self.ep = ep
        self.session: VmSession | None = None


class SessionService:
    def __init__(
        self,
        config: SessionsConfig,
        guestinfo: GuestinfoWatcher | None,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
        clock: Callable[[], float] = time.time,
        metrics: VspcMetrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = SessionMetrics(metrics)
        if metrics is not None:
            metrics.sessions_connected.set_function(self.connected_count)
        self.guestinfo = guestinfo
        self.random_bytes = random_bytes
        self.clock = clock
        self.logs = ContainerLogs(
            ContainerLogSettings(
                config.logs_dir, max_bytes=config.log_max_bytes, keep=config.log_keep
            )
        )
        self._vms: dict[str, _Vm] = {}
        self._locks: dict[str, trio.Lock] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self.logs.run)
                task_status.started(self)
        finally:
            if self.guestinfo is not None:
                with trio.CancelScope(shield=True):
                    await self.guestinfo.aclose()  # a vSphere session, say

    def connected_count(self) -> int:
        return sum(1 for v in self._vms.values() if v.ep.live)

    def find(self, vm: str) -> VmSession | None:
        v = self._vms.get(vm_key(vm))
        return None if v is None else v.session

    def secrets(self, vm: str) -> tuple[bytes, ...]:
        v = self._vms.get(vm_key(vm))
        return () if v is None else v.secrets

    async def prepare(self, vm: str) -> VmSession:
        """The VM's session, made (secret written to its guestinfo) if it has none."""
        if not self.config.enabled:
            raise SessionsDisabled("sessions are disabled ([sessions] enabled = false)")
        key = vm_key(vm)
        async with self._locks.setdefault(key, trio.Lock()):
            v = self._vms.get(key)
            if v is None:
                if len(self._vms) >= self.config.max_vms:
                    raise SessionsDisabled(
                        f"{len(self._vms)} sessions already ([sessions] max-vms)"
                    )
                v = await self._create(key)
            assert v.session is not None
            return v.session

    async def _create(self, key: str) -> _Vm:
        secrets = await self._existing(key)
        if not secrets:
            secrets = (self.random_bytes(self.config.secret_bytes),)
            await self._write(key, secrets)
        v = _Vm(key, secrets, self._endpoint(key, lambda: v.secrets))
        self._vms[key] = v
        self._start(v)
        return v

    def _endpoint(self, key: str, secrets: Callable[[], tuple[bytes, ...]]) -> SessionEndpoint:
        return SessionEndpoint(
            Role.APPLIANCE, self._session(), secrets, name=f"session {key}", ack_on_consume=True
        )

    def _session(self) -> Session:
        cfg = SessionConfig(replay_limit=self.config.replay_limit)
        return Session(Role.APPLIANCE, self.random_bytes(SESSION_ID_LEN), cfg)

    def _start(self, v: _Vm) -> None:
        assert self._nursery is not None, "run() first"
        v.session = VmSession(v.vm, v.ep, self.logs, clock=self.clock, metrics=self.metrics)
        v.session.open_main()
        self._nursery.start_soon(self._consume, v)

    async def _consume(self, v: _Vm) -> None:
        async for ev in v.ep.events():
            s = v.session
            assert s is not None
            if isinstance(ev, chs.ProtocolError) and ev.code is ErrorCode.SESSION_MISMATCH:
                self._renew(v, "the tether holds no such session")
                continue
            s.dispatch(ev)

    def _renew(self, v: _Vm, why: str) -> None:
        """The tether lost the session (it restarted): a new one, the main attached again."""
        old = v.session
        assert old is not None
        log.warning("%s: %s: starting a new session", wire(v.vm), why)
        old.fail_all("the tether lost the session")
        v.ep.replace_session(self._session())
        v.session = VmSession(v.vm, v.ep, self.logs, clock=self.clock, metrics=self.metrics)
        v.session.connections = old.connections
        v.session.open_main(old.main_size)  # a pty as the attached client last had it
        old.notify()  # whoever waits on the old one looks again

    async def _existing(self, key: str) -> tuple[bytes, ...]:
        if self.guestinfo is None:
            return ()
        try:
            state = await self.guestinfo.state(key)
            return gik.decode_session_secrets(state.values.get(SECRETS_KEY))
        except (GuestinfoError, OSError, BackendError) as e:
            log.warning("%s: session secrets in guestinfo unusable: %s", wire(key), wire(str(e)))
            return ()

    async def _write(self, key: str, secrets: tuple[bytes, ...]) -> None:
        if self.guestinfo is None:
            log.warning(
                "%s: no guestinfo store ([sessions] guestinfo-dir): secret kept here", wire(key)
            )
            return
        value = gik.encode_session_secrets(secrets)
        try:
            await self.guestinfo.write(key, {SECRETS_KEY: value})
        except (GuestinfoError, OSError, BackendError) as e:  # never the value in a log line
            raise GuestinfoError(f"{key}: secrets not written: {scrubbed(str(e), value)}") from None

    async def rotate(self, vm: str) -> None:
        """A new secret: written with the previous one; new connections use it."""
        await self.prepare(vm)
        key = vm_key(vm)
        async with self._locks[key]:
            v = self._vms[key]
            new = (self.random_bytes(self.config.secret_bytes), v.secrets[0])
            await self._write(key, new)
            v.secrets = new

    async def serve_stream(self, stream: trio.abc.Stream, header: OriginHeader) -> None:
        """A relayed stream labelled ``session`` for ``header.vm``: carry its session."""
        try:
            await self.prepare(header.vm)
        except (SessionsDisabled, OSError, GuestinfoError, IdentityError) as e:
            log.warning("session stream for %s refused: %s", wire(header.vm), wire(str(e)))
            await trio.aclose_forcefully(stream)
            return
        v = self._vms[vm_key(header.vm)]

        async def watch() -> None:
            while v.ep.live:  # an older connection, being replaced
                await v.ep.wait_changed()
            await v.ep.wait_live()
            self.metrics.established()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            end = await v.ep.run_connection(stream, handshake_timeout=self.config.handshake_timeout)
            nursery.cancel_scope.cancel()
        self.metrics.ended(end)
