"""Sessions over a serial line (issue 13): socat's pty pair as the null-modem cable, the
guest's serial transport on one end, ``vic relay``'s serial-device ingress on the other,
an appliance-side ``SessionEndpoint`` behind the relay. Every byte value crosses the line
both ways; a tether that opens its end after the appliance's first handshake timed out
(the relay must reopen the line) serves exec."""

from __future__ import annotations

import os
import termios
from pathlib import Path

import trio

from common.io.guestinfo.filestore import FileStore
from common.io.rawtty import IFLAG_OFF, LFLAG_OFF, OFLAG_OFF
from common.io.sealedsession_conn import EndKind
from common.proto.session.messages import ExecSpec, ExitStatus, Stream
from guestagent.backends.file import FileGuestBackend
from guestagent.channels import serial_connector
from guestagent.config import SessionSection
from guestagent.reaper import Reaper
from guestagent.tether import Tether
from relay.config import EgressConfig, SerialListener
from tests.guestagent.serial_line import RelayedAppliance, relay_serial, socat_pair
from tests.guestagent.tether_helpers import write_secrets
from tests.relay.relayfix import Appliance as EchoAppliance
from tests.relay.relayfix import relay_config, start_relay

T = 60  # safety net only
SECRET = bytes(range(32))
EVERY_BYTE = bytes(range(256))  # NUL, ^C, ^Q, ^S, ^Z, CR, LF, DEL, 0xFF among them


async def test_the_guest_serial_transport_is_raw_8_bit() -> None:
    """A tty starts cooked; the agent's serial connector leaves no flag that would map,
    eat, echo or signal a byte, and no flow control."""
    master, slave = os.openpty()
    try:
        assert termios.tcgetattr(slave)[3] & termios.ICANON  # cooked to begin with
        ch = await serial_connector(os.ttyname(slave))()
        try:
            fd = ch.stream.fileno()  # type: ignore[attr-defined]
            iflag, oflag, cflag, lflag, _i, _o, cc = termios.tcgetattr(fd)
            assert iflag & IFLAG_OFF == 0
            assert oflag & OFLAG_OFF == 0
            assert lflag & LFLAG_OFF == 0
            assert cflag & termios.CSIZE == termios.CS8
            assert not cflag & (termios.PARENB | termios.CRTSCTS)
            assert (cc[termios.VMIN], cc[termios.VTIME]) == (1, 0)
        finally:
            await ch.aclose()
    finally:
        os.close(master)
        os.close(slave)


async def test_every_byte_value_crosses_the_socat_line_both_ways(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Guest (the agent's serial transport) -> socat -> relay -> appliance, which echoes
    it back the same way: each of the 256 byte values, many times, exactly."""
    app = EchoAppliance(echo=True)
    await app.serve_unix(nursery, tmp_path / "app.sock")
    async with socat_pair(tmp_path) as (_socat, guest, host):
        serial = (SerialListener(name="tty", vm="vm1", device=host),)
        egress = EgressConfig(kind="unix", path=tmp_path / "app.sock")
        await start_relay(nursery, relay_config(egress, serial=serial))
        with trio.fail_after(T):
            (rec,) = await app.wait_streams(1)
        ch = await serial_connector(str(guest))()
        data = EVERY_BYTE * 256
        back = bytearray()
        with trio.fail_after(T):
            async with trio.open_nursery() as n:
                n.start_soon(ch.stream.send_all, data)
                while len(back) < len(data):
                    back += await ch.stream.receive_some(65536)
        await ch.aclose()
    assert bytes(rec.data) == data  # guest -> host
    assert bytes(back) == data  # host -> guest


async def test_a_tether_on_the_socat_line_serves_exec(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The appliance's first handshake goes out before the tether opened its end and times
    out; the appliance closes that relayed stream, the relay reopens the line and the
    next handshake reaches the tether. exec then carries every byte value both ways."""
    store = str(tmp_path / "guestinfo.json")
    write_secrets(store, SECRET)
    app = RelayedAppliance(str(tmp_path / "app.sock"), SECRET, handshake_timeout=1.0)
    await nursery.start(app.serve)
    async with socat_pair(tmp_path) as (_socat, guest, host):
        await relay_serial(nursery, host, app)
        with trio.fail_after(T):
            await app.wait_ends(1)  # no tether on the line yet
        assert app.ends[0].kind is EndKind.TIMEOUT  # type: ignore[attr-defined]
        reaper = Reaper()
        await nursery.start(reaper.run)
        cfg = SessionSection(enabled=True, transport="serial", path=str(guest))
        backend = FileGuestBackend(FileStore(store))
        tether = Tether(cfg, serial_connector(str(guest)), backend=backend, reaper=reaper)
        await nursery.start(tether.run)
        data = EVERY_BYTE * 1024
        spec = ExecSpec(("sh", "-c", "cat; printf '\\003\\023\\377' >&2; exit 5"))
        with trio.fail_after(T):
            await app.endpoint.wait_live()
            r = await app.exec(spec, data)
    assert r.text(Stream.STDOUT) == data
    assert r.text(Stream.STDERR) == b"\x03\x13\xff"
    assert r.status == ExitStatus(code=5)
    assert len(app.headers) >= 2  # the relay reopened the line after the first stream
    assert {h.kind for h in app.headers} == {"serial"}
