"""The guest agent (tether): sessions, console link, address publisher, reaper.

Components run under a supervisor: a component that fails is reported at
``guestinfo.vice..errors|<component>`` and restarted with backoff; the agent
itself stays up (it is PID 1 in a containerVM).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import trio

from common.io.guestinfo.base import BackendError, GuestBackend
from common.io.guestinfo.filestore import FileStore
from common.ops.wiretext import wire
from common.proto import guestinfo as gi
from common.proto.session.messages import ExitStatus as SessionExit
from guestagent.backends.file import FileGuestBackend
from guestagent.backends.rpctool import RpctoolBackend
from guestagent.channels import (
    Connector,
    hybrid_vsock_connector,
    serial_connector,
    tcp_connector,
    unix_connector,
    vsock_connector,
)
from guestagent.config import AgentConfig, ConsoleConfig, GuestinfoConfig
from guestagent.console import ConsoleLink
from guestagent.netwatch import NetWatcher
from guestagent.publisher import Publisher
from guestagent.reaper import Child, ExitStatus, Reaper, set_child_subreaper
from guestagent.session import SessionOptions, SessionRunner
from guestagent.session_transport import SessionTransport, Transports
from guestagent.tether import Tether

log = logging.getLogger(__name__)


def make_backend(cfg: GuestinfoConfig, reaper: Reaper) -> GuestBackend:
    ledger = gi.SizeLedger(cfg.max_value, cfg.max_total)
    be: GuestBackend
    if cfg.backend == "file":
        be = FileGuestBackend(
            FileStore(cfg.path, max_value=cfg.max_value, max_total=cfg.max_total), ledger
        )
    elif cfg.backend == "vsphere":
        from guestagent.backends.vsphere import VSphereGuestBackend

        be = VSphereGuestBackend(cfg.url, cfg.vm, ledger, cfg.poll_interval)
    else:
        be = RpctoolBackend(cfg.tool, runner=reaper.run_capture, ledger=ledger)
    be.poll_interval = cfg.poll_interval
    return be


def make_connector(cfg: ConsoleConfig) -> Connector | None:
    t = cfg.transport
    if t == "serial":
        return serial_connector(cfg.path, cfg.baud)
    if t == "vsock":
        return vsock_connector(cfg.cid, cfg.port)
    if t == "hybrid":
        return hybrid_vsock_connector(cfg.path, cfg.port)
    if t == "unix":
        return unix_connector(cfg.path)
    if t == "tcp":
        return tcp_connector(cfg.host, cfg.port)
    return None


class Agent:
    def __init__(
        self,
        cfg: AgentConfig,
        *,
        backend: GuestBackend | None = None,
        reaper: Reaper | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.reaper = reaper or Reaper()
        self.backend = backend or make_backend(cfg.guestinfo, self.reaper)
        self.publisher = Publisher(self.backend, clock)
        self.tether = self._make_tether(cfg)
        connector = None if self._tether_takes_console() else make_connector(cfg.console)
        self.console: ConsoleLink | None = None
        if connector is not None:
            self.console = ConsoleLink(
                connector,
                buffer_limit=cfg.console.buffer_bytes,
                backoff_min=cfg.console.backoff_min,
                backoff_max=cfg.console.backoff_max,
            )
        elif self.tether is not None:  # no raw console: the main process is attached over
            self.console = self.tether.main  # the session instead
            self.tether.main.enabled = True
            self.tether.main.on_signal = self._signal_main
        self.session_options = SessionOptions(
            drain_grace=cfg.agent.drain_grace,
            flush_timeout=cfg.console.flush_timeout,
            signal_group=cfg.agent.signal_group,
        )
        self.sessions: dict[str, SessionRunner] = {}
        self.results: dict[str, ExitStatus | None] = {}
        self.all_done = trio.Event()
        self._console_owner: str | None = None
        self._pending_ids: set[str] = set()
        self.ready = trio.Event()
        self.metrics_port: int | None = None

    def _tether_takes_console(self) -> bool:
        return self.tether is not None and "console" in self.cfg.session.kinds()

    def _make_tether(self, cfg: AgentConfig) -> Tether | None:
        """The sealed session service if ``[session] enabled`` (issue 13)."""
        if not cfg.session.enabled:
            return None
        transports = [
            SessionTransport(ch.transport, connector)
            for ch in cfg.session.channels(cfg.console)
            if (connector := make_connector(ch)) is not None
        ]
        if not transports:  # pragma: no cover - the config's validate() excludes it
            return None
        return Tether(
            cfg.session,
            Transports(transports),
            backend=self.backend,
            reaper=self.reaper,
            container_pid=self.main_pid,
        )

    def _main_child(self) -> Child | None:
        """The container's main process, if one runs: the console's session's, else the
        first running."""
        owner = self.sessions.get(self._console_owner or self.cfg.agent.console_session)
        runners = [owner] if owner is not None else list(self.sessions.values())
        for runner in runners:
            if runner.child is not None and runner.status is None:
                return runner.child
        return None

    def main_pid(self) -> int | None:
        """The main process's pid: execs join its namespaces."""
        child = self._main_child()
        return None if child is None else child.pid

    def _signal_main(self, signo: int) -> None:
        if (child := self._main_child()) is not None:
            child.send_signal(signo)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        if self.cfg.agent.subreaper and os.getpid() != 1:
            set_child_subreaper()
        async with trio.open_nursery() as n:
            await n.start(self.reaper.run)
            if self.cfg.metrics.enabled:
                self.metrics_port = await n.start(self._serve_metrics)
            if self.console is not None:
                await n.start(self.console.run)
            if self.tether is not None:
                n.start_soon(self._supervise, "tether", self.tether.run)
            if self.cfg.network.publish:
                n.start_soon(self._supervise, "network", self._network)
            n.start_soon(self._supervise, "sessions", functools.partial(self._sessions, n))
            self.ready.set()
            task_status.started()
            if self.cfg.agent.exit_when_done:
                await self.all_done.wait()
                n.cancel_scope.cancel()

    async def _serve_metrics(self, *, task_status: Any) -> None:
        """``[metrics]``: a port that cannot be bound (or a server that breaks) costs the
        metrics, not the agent (it may be PID 1): one error line, the agent runs on."""
        from common.ops.metrics_http import serve_metrics  # prometheus_client: only if on
        from guestagent.metrics import agent_registry

        mc = self.cfg.metrics
        stats = self.tether.endpoint.stats if self.tether is not None else None
        registry = agent_registry(self.console, self.publisher, stats)
        bound: list[int] = []

        def started(port: int) -> None:
            bound.append(port)
            task_status.started(port)

        try:
            await serve_metrics(
                registry,
                mc.host,
                mc.port,
                ready=lambda: None if self.ready.is_set() else "starting",
                task_status=SimpleNamespace(started=started),
            )
        except OSError as e:
            log.error("metrics on %s:%s: %s; running without", mc.host, mc.port, e)
            if not bound:
                task_status.started(None)

    async def _supervise(self, name: str, fn: Callable[[], Awaitable[None]]) -> None:
        delay = 0.1
        while True:
            try:
                await fn()
                return
            except (BackendError, gi.GuestinfoError, OSError, ValueError, RuntimeError) as e:
                text = f"{name} failed: {type(e).__name__}: {e}"
                log.error("%s; restarting in %.1fs", wire(text), delay)
                await self.publisher.error(name, text)
            await trio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _network(self) -> None:
        net = self.cfg.network
        watcher = NetWatcher(
            self.publisher.networks,
            exclude=net.exclude,
            names=net.names,
            include_link_local=net.include_link_local,
        )
        await watcher.run()

    async def _sessions(self, nursery: trio.Nursery) -> None:
        """Start every session the appliance lists, as it lists them. Runners live in
        the agent's nursery: a guestinfo hiccup here never touches running sessions."""
        keys = [gi.sessions_key(), gi.common_id_key()]
        vals: dict[str, str | None] | None = None
        delay = 0.1
        while True:
            try:
                if vals is None:
                    vals = await self.backend.get_many(keys)
                else:
                    vals = await self.backend.wait_changed(keys, vals)
            except (BackendError, gi.GuestinfoError, OSError) as e:
                log.error("reading the session list: %s; retrying in %.1fs", wire(str(e)), delay)
                await self.publisher.error("sessions", f"reading the session list: {e}")
                vals = None
                await trio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            delay = 0.1
            ids = gi.decode_map_keys(vals.get(gi.sessions_key()))
            self._pending_ids = set(ids)
            for sid in ids:
                if sid in self.sessions or sid in self.results:
                    continue
                await self._start_session(nursery, sid, vals.get(gi.common_id_key()))

    async def _start_session(self, nursery: trio.Nursery, sid: str, common_id: str | None) -> None:
        try:
            gi.check_name(sid, "session id")
        except gi.GuestinfoError as e:
            log.error("ignoring session: %s", wire(str(e)))
            self.results[sid] = None
            return
        try:
            values = await self.backend.get_many(gi.session_keys(sid))
            cfg = gi.decode_session(sid, values)
        except gi.SessionConfigError as e:
            await self._start_failed(sid, str(e))
            return
        except (BackendError, gi.GuestinfoError, OSError) as e:
            await self._start_failed(sid, f"session {sid}: cannot read session config: {e}")
            return
        # the console goes to [agent] console-session if set, else to the container's
        # own session (/common/id) or, failing that, the first session started
        console = None
        if self.console is not None and self._console_owner is None:
            want = self.cfg.agent.console_session or gi.decode_str(common_id)
            if want is None or want == sid or want not in self._pending_ids:
                console = self.console
                self._console_owner = sid
        runner = SessionRunner(
            cfg,
            reaper=self.reaper,
            publisher=self.publisher,
            backend=self.backend,
            console=console,
            options=self.session_options,
        )
        self.sessions[sid] = runner
        nursery.start_soon(self._run_session, sid, runner)

    async def _start_failed(self, sid: str, text: str) -> None:
        log.error("%s", wire(text))
        self.results[sid] = None
        await self.publisher.start_failed(sid, text)
        self._check_done()

    async def _run_session(self, sid: str, runner: SessionRunner) -> None:
        try:
            self.results[sid] = st = await runner.run()
            if st is not None and self.tether is not None and runner.console is self.tether.main:
                # the wire says the signal, not the shell's 128+N
                wire_st = SessionExit(signal=st.signal) if st.signal else SessionExit(code=st.code)
                self.tether.main.main_exited(wire_st)
        finally:
            self.sessions.pop(sid, None)
            self.results.setdefault(sid, None)
            if self._console_owner == sid:
                self._console_owner = None
            self._check_done()

    def _check_done(self) -> None:
        if not self.sessions and self.results:
            self.all_done.set()
