"""The guest moving its session from the serial line to vsock (issue 13): ``[session]
transports`` lists them preferred first; the tether tries them in order on every
(re)connect. A session up over socat's pty pair and the relay's serial ingress streams
an ``exec -i cat``; the hybrid-vsock listener starts, the serial line breaks, the tether
resumes over vsock: every byte once both ways, the exit status once. Bad lists of
transports exit 2 naming the key."""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path

import pytest
import trio
import trio.testing

from common.io.guestinfo.filestore import FileStore
from common.io.sealedsession_conn import ConnectionEnd
from common.ops import config as config_mod
from common.proto.session.messages import ExecSpec, ExitStatus, Stream
from guestagent.backends.file import FileGuestBackend
from guestagent.channels import Channel, hybrid_vsock_connector, serial_connector, unix_connector
from guestagent.config import AgentConfig, ConsoleConfig, SessionSection, TransportTable
from guestagent.reaper import Reaper
from guestagent.session_transport import NoTransport, SessionTransport, Transports
from guestagent.tether import Tether
from tests.guestagent.serial_line import RelayedAppliance, relay_hvsock, relay_serial, socat_pair
from tests.guestagent.tether_helpers import Appliance, write_secrets
from tests.support.vic_cli import assert_one_line, run_vic
from vic.lab.agent_processes import start_agent, stop

T = 60  # safety net only
SECRET = b"t" * 32
PORT = 1024
LINES = 96 * 1024  # 768 KiB through cat, numbered lines: a loss or a repeat shows


def numbered(first: int, n: int) -> bytes:
    return b"".join(b"%07d\n" % i for i in range(first, first + n))


def unplug(socat: trio.Process, *links: Path) -> None:
    """The serial line breaks: its device names go first (a pty number freed by socat
    may soon name someone else's terminal), then socat dies."""
    for link in links:
        link.unlink()
    socat.kill()


async def live_over(app: RelayedAppliance, kind: str) -> None:
    """Until a connection over the newest relayed stream, of ``kind``, carries the session."""
    while not (app.endpoint.live and app.headers[-1].kind == kind):
        await app.endpoint.wait_changed()


async def feed(app: RelayedAppliance, ch: int, halfway: trio.Event) -> None:
    """``LINES`` numbered lines into the exec's stdin, 1024 at a time, then EOF."""
    for first in range(0, LINES, 1024):
        if first == LINES // 4:
            halfway.set()
        assert await app.endpoint.send_all(ch, Stream.STDIN, numbered(first, 1024))
    app.endpoint.close_stdin(ch)


async def test_the_session_moves_from_serial_to_vsock(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    store = str(tmp_path / "guestinfo.json")
    write_secrets(store, SECRET)
    app = RelayedAppliance(str(tmp_path / "app.sock"), SECRET, handshake_timeout=1.0)
    await nursery.start(app.serve)
    uds = tmp_path / "vm1.vsock"
    async with socat_pair(tmp_path) as (socat, guest, host):
        await relay_serial(nursery, host, app)
        reaper = Reaper()
        await nursery.start(reaper.run)
        transports = Transports(
            [
                SessionTransport("hybrid", hybrid_vsock_connector(str(uds), PORT)),
                SessionTransport("serial", serial_connector(str(guest))),
            ]
        )
        cfg = SessionSection(enabled=True, backoff_max=0.2, handshake_timeout=2.0)
        backend = FileGuestBackend(FileStore(store))
        await nursery.start(Tether(cfg, transports, backend=backend, reaper=reaper).run)
        with trio.fail_after(T):
            await app.endpoint.wait_live()  # over the line: vsock is not there yet
            assert app.headers[-1].kind == "serial"
            ch, r = app.open_exec(ExecSpec(("cat",)))
            halfway = trio.Event()
            nursery.start_soon(feed, app, ch, halfway)
            await halfway.wait()
            await r.wait_for(Stream.STDOUT, b"0010000\n")  # output flows over the line
            await relay_hvsock(nursery, uds, PORT, app)  # the VMM offers vsock now
            unplug(socat, guest, host)  # and the serial line breaks mid-stream
            await r.done.wait()
    assert r.text(Stream.STDOUT) == numbered(0, LINES)  # no loss, no repeat, both ways
    assert r.status == ExitStatus(code=0) and app.exits == {ch: 1}
    assert app.headers[-1].kind == "hvsock"  # the session ended over vsock
    over_serial = [e for e, h in zip(app.ends, app.headers, strict=False) if h.kind == "serial"]
    assert any(isinstance(e, ConnectionEnd) and e.established for e in over_serial)


async def test_a_line_that_still_works_is_left_for_vsock(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The appliance ends the relayed line's stream (its side restarted) once vsock is
    there: the tether's next connect prefers vsock to the line, which still works."""
    store = str(tmp_path / "guestinfo.json")
    write_secrets(store, SECRET)
    app = RelayedAppliance(str(tmp_path / "app.sock"), SECRET, handshake_timeout=1.0)
    await nursery.start(app.serve)
    uds = tmp_path / "vm1.vsock"
    async with socat_pair(tmp_path) as (_socat, guest, host):
        await relay_serial(nursery, host, app)
        reaper = Reaper()
        await nursery.start(reaper.run)
        transports = Transports(
            [
                SessionTransport("hybrid", hybrid_vsock_connector(str(uds), PORT)),
                SessionTransport("serial", serial_connector(str(guest))),
            ]
        )
        cfg = SessionSection(enabled=True, backoff_max=0.2, handshake_timeout=2.0)
        backend = FileGuestBackend(FileStore(store))
        await nursery.start(Tether(cfg, transports, backend=backend, reaper=reaper).run)
        with trio.fail_after(T):
            await app.endpoint.wait_live()
            r = await app.exec(ExecSpec(("cat",)), numbered(0, 100))
            assert r.text(Stream.STDOUT) == numbered(0, 100)
            assert app.headers[-1].kind == "serial"
            await relay_hvsock(nursery, uds, PORT, app)
            await app.cut()  # the line's relayed stream; the line itself stays up
            await live_over(app, "hvsock")
            r = await app.exec(ExecSpec(("cat",)), numbered(100, 100))
    assert r.text(Stream.STDOUT) == numbered(100, 100)
    assert app.headers[-1].kind == "hvsock"


async def test_vic_agent_moves_its_session_from_serial_to_vsock(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The same move with ``vic agent`` as a process, configured by TOML alone."""
    store = tmp_path / "guestinfo.json"
    write_secrets(str(store), SECRET)
    app = RelayedAppliance(str(tmp_path / "app.sock"), SECRET, handshake_timeout=1.0)
    await nursery.start(app.serve)
    uds = tmp_path / "vm1.vsock"
    async with socat_pair(tmp_path) as (socat, guest, host):
        conf = tmp_path / "agent.toml"
        conf.write_text(
            f'[guestinfo]\nbackend = "file"\npath = "{store}"\n'
            "[network]\npublish = false\n[agent]\nsubreaper = false\n"
            "[session]\nenabled = true\nbackoff-max = 0.2\nhandshake-timeout = 2.0\n"
            'transports = ["hybrid", "serial"]\n'
            f'[session.hybrid]\npath = "{uds}"\nport = {PORT}\n'
            f'[session.serial]\npath = "{guest}"\n'
        )
        await relay_serial(nursery, host, app)
        agent = await start_agent(conf)
        try:
            with trio.fail_after(T):
                await app.endpoint.wait_live()
                r = await app.exec(ExecSpec(("sh", "-c", "cat; exit 6")), numbered(0, 50))
                assert (r.text(Stream.STDOUT), r.status) == (numbered(0, 50), ExitStatus(6))
                assert app.headers[-1].kind == "serial"
                await relay_hvsock(nursery, uds, PORT, app)
                unplug(socat, guest, host)
                await live_over(app, "hvsock")
                r = await app.exec(ExecSpec(("sh", "-c", "cat; exit 7")), numbered(50, 50))
        finally:
            await stop(agent)
    assert (r.text(Stream.STDOUT), r.status) == (numbered(50, 50), ExitStatus(7))


async def test_a_transport_that_never_carries_the_session_goes_to_the_back(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The preferred transport connects but nothing behind it answers (a listener with no
    appliance): after its handshake times out the tether tries the next one first."""
    store = str(tmp_path / "guestinfo.json")
    write_secrets(store, SECRET)
    app = Appliance(str(tmp_path / "good.sock"), SECRET)
    await nursery.start(app.serve)
    silent = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await silent.bind(str(tmp_path / "silent.sock"))
    silent.listen(8)  # accepts (in the kernel's backlog), never answers
    reaper = Reaper()
    await nursery.start(reaper.run)
    transports = Transports(
        [
            SessionTransport("unix", unix_connector(str(tmp_path / "silent.sock"))),
            SessionTransport("unix", unix_connector(app.path)),
        ]
    )
    cfg = SessionSection(enabled=True, backoff_max=0.2, handshake_timeout=1.0)
    backend = FileGuestBackend(FileStore(store))
    await nursery.start(Tether(cfg, transports, backend=backend, reaper=reaper).run)
    with trio.fail_after(T):
        r = await app.exec(ExecSpec(("echo", "via the second")))
    assert r.text(Stream.STDOUT) == b"via the second\n"
    silent.close()


async def test_transports_are_tried_in_order(autojump_clock: trio.testing.MockClock) -> None:
    """The first that connects wins; one that hangs counts as failed after the timeout;
    ``preferred`` looks only above the one in use; none: every failure named."""
    tried: list[str] = []

    def transport(kind: str, how: str) -> SessionTransport:
        async def connect() -> Channel:
            tried.append(kind)
            if how == "hang":
                await trio.sleep_forever()
            if how == "fail":
                raise ConnectionRefusedError(f"{kind} refused")
            return Channel(trio.testing.memory_stream_pair()[0], kind)

        return SessionTransport(kind, connect)

    ts = Transports(
        [transport("tcp", "hang"), transport("hybrid", "fail"), transport("serial", "ok")],
        connect_timeout=3,
    )
    index, ch = await ts.connect()
    assert (index, ch.name, tried) == (2, "serial", ["tcp", "hybrid", "serial"])
    tried.clear()
    assert await ts.preferred(1) is None and tried == ["tcp"]
    tried.clear()
    assert (await ts.connect(start=2))[0] == 2 and tried == ["serial"]
    none = Transports([transport("tcp", "hang"), transport("hybrid", "fail")], connect_timeout=3)
    with pytest.raises(NoTransport, match=r"tcp: no connection in 3s; hybrid: .*refused"):
        await none.connect()


def test_transports_in_order_and_the_single_transport_still_valid() -> None:
    cfg = config_mod.loads(
        AgentConfig,
        textwrap.dedent("""
            [console]
            transport = "serial"
            path = "/dev/ttyS0"
            [session]
            enabled = true
            transports = ["hybrid", "serial", "console"]
            [session.hybrid]
            path = "/run/vm.vsock"
            port = 1024
            [session.serial]
            path = "/dev/ttyS1"
            baud = 9600
        """),
    )
    chans = cfg.session.channels(cfg.console)
    assert [(c.transport, c.path, c.port, c.baud) for c in chans] == [
        ("hybrid", "/run/vm.vsock", 1024, 115200),
        ("serial", "/dev/ttyS1", 0, 9600),
        ("serial", "/dev/ttyS0", 0, 115200),  # "console": [console]'s channel
    ]
    single = SessionSection(enabled=True, transport="unix", path="/run/s.sock")
    single.validate()
    assert [c.transport for c in single.channels(ConsoleConfig())] == ["unix"]
    assert single.kinds() == ("unix",)
    assert TransportTable(path="/x").channel("serial").path == "/x"


BAD = {
    "a listed transport without its table": (
        'transports = ["hybrid"]\n',
        "session.transports[0]",
    ),
    "a transport listed twice": (
        'transports = ["serial", "serial"]\n[session.serial]\npath = "/dev/ttyS1"\n',
        "session.transports[1]",
    ),
    "a table for a transport not listed": (
        'transports = ["serial"]\n[session.serial]\npath = "/dev/ttyS1"\n'
        "[session.vsock]\nport = 5\n",
        "session.vsock",
    ),
    "a table missing what its transport needs": (
        'transports = ["hybrid"]\n[session.hybrid]\nport = 1024\n',
        "session.hybrid.path",
    ),
    "transport and transports both": (
        'transport = "unix"\npath = "/s"\ntransports = ["vsock"]\n[session.vsock]\nport = 5\n',
        "session.transports",
    ),
    "an unknown transport": ('transports = ["pigeon"]\n', "session.transports[0]"),
    "console with no [console]": ('transports = ["console"]\n', "session.transports"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_transports_name_the_key(case: str) -> None:
    body, key = BAD[case]
    with pytest.raises(config_mod.ConfigError) as e:
        config_mod.loads(AgentConfig, "[session]\nenabled = true\n" + body)
    assert e.value.key == key, str(e.value)


def test_vic_agent_exits_2_naming_the_key(tmp_path: Path) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text('[session]\nenabled = true\ntransports = ["serial", "hybrid"]\n')
    line = assert_one_line(run_vic("agent", conf), "session.transports[0]")
    assert "[session.serial]" in line
