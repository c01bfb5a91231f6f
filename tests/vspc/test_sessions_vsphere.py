"""Session secrets in vSphere guestinfo (``[sessions] guestinfo = "vsphere"``), against
govmomi's vCenter simulator (skipped when scripts/build-vcsim has not built it): the
appliance writes a VM's secret to its extraConfig, the agent's tether reads it there
through the vSphere API (its guestinfo) and the session seals with it; rotation writes
(new, old) and the tether accepts either while it settles; an appliance restarted on the
same vCenter keeps the secret. No secret ever reaches a log line. And the config
errors of ``[sessions.vsphere]``, each naming its key (exit 2)."""

from __future__ import annotations

import logging
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio

from common.io.sealedsession import SessionEndpoint
from common.io.sealedsession_conn import ConnectionEnd
from common.io.vsphere import VSphereTarget
from common.proto.guestinfo import keys as gik
from common.proto.guestinfo.errors import GuestinfoError
from common.proto.link.header import OriginHeader
from common.proto.session.channels import Role
from common.proto.session.session import Session
from guestagent.backends.vsphere import VSphereGuestBackend
from guestagent.channels import unix_connector
from guestagent.config import SessionSection
from guestagent.reaper import Reaper
from guestagent.tether import Tether
from tests.relay.test_vsphere_route import VM, vcsim  # noqa: F401 (the fixture)
from tests.support.vic_cli import assert_one_line, run_vic
from tests.vspc.test_vspc_ops import toml_config
from vspc.config import SessionsConfig, SessionsVSphere
from vspc.sessions.api import SessionsApi
from vspc.sessions.guestinfo import guestinfo_store
from vspc.sessions.service import SessionService

T = 60  # safety net only
KEY = gik.session_secrets_key()


def _url(t: VSphereTarget, password: str = "vic") -> str:
    return f"http://{t.user}:{password}@{t.host}:{t.port}{t.path}"


def _service(url: str, secret: int = 1) -> SessionService:
    cfg = SessionsConfig(guestinfo="vsphere", vsphere=SessionsVSphere(url=url))
    n = iter(range(secret, 1000))
    return SessionService(cfg, guestinfo_store(cfg), random_bytes=lambda k: bytes([next(n)]) * k)


async def _appliance(
    service: SessionService, path: str, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """The appliance's end of the tether's connections (a relay's part, in the lab)."""
    lst = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await lst.bind(path)
    lst.listen(4)
    header = OriginHeader(host="esx1", vm=VM, kind="pipe", label="session")
    async with trio.open_nursery() as n:
        task_status.started()
        while True:
            sock, _ = await lst.accept()
            n.start_soon(service.serve_stream, trio.SocketStream(sock), header)


async def _sealed_with(guest_secrets: tuple[bytes, ...], appliance_secret: bytes) -> int | None:
    """Which of the guest's secrets a connection from an appliance holding only
    ``appliance_secret`` sealed with (the tether tries each it holds); None: refused."""
    a, b = trio.socket.socketpair()
    sid = bytes(range(16))
    app = SessionEndpoint(Role.APPLIANCE, Session(Role.APPLIANCE, sid), lambda: [appliance_secret])
    tet = SessionEndpoint(Role.TETHER, Session(Role.TETHER), lambda: guest_secrets)
    ends: list[ConnectionEnd] = []

    async def tether_side() -> None:
        ends.append(await tet.run_connection(trio.SocketStream(b), handshake_timeout=10))
        n.cancel_scope.cancel()  # refused: the connection ended

    async def live() -> None:
        await tet.wait_live()
        n.cancel_scope.cancel()

    async with trio.open_nursery() as n:
        n.start_soon(lambda: app.run_connection(trio.SocketStream(a), handshake_timeout=10))
        n.start_soon(tether_side)
        n.start_soon(live)
    if ends and not ends[0].established:
        return None
    assert tet.last_established is not None
    return tet.last_established.secret_index


@pytest.mark.trio
async def test_secrets_in_vsphere_guestinfo_seal_rotate_and_survive_a_restart(
    vcsim: VSphereTarget,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    url = _url(vcsim)
    guest = VSphereGuestBackend(url, VM, poll_interval=0.05)  # what the agent reads
    service = _service(url)
    path = str(tmp_path / "appliance.sock")
    async with trio.open_nursery() as n:
        await n.start(service.run)
        await n.start(_appliance, service, path)
        with trio.fail_after(T):
            await service.prepare(VM)
            first = service.secrets(VM)
            assert gik.decode_session_secrets(await guest.get(KEY)) == first == (b"\x01" * 32,)

            # the agent's tether, its guestinfo the vSphere API: the session seals
            reaper = Reaper()
            await n.start(reaper.run)
            cfg = SessionSection(enabled=True, transport="unix", path=path)
            tether = Tether(cfg, unix_connector(path), backend=guest, reaper=reaper)
            await n.start(tether.run)
            out: list[bytes] = []

            async def sink(data: bytes) -> None:
                out.append(data)

            st = await SessionsApi(service).exec(VM, ["sh", "-c", "echo sealed"], stdout=sink)
            assert (st.code, b"".join(out)) == (0, b"sealed\n")

            await service.rotate(VM)
            rotated = gik.decode_session_secrets(await guest.get(KEY))
            assert rotated == service.secrets(VM) and rotated[1:] == first != rotated[:1]
            # while the tether settles, a connection with either secret seals
            assert await _sealed_with(rotated, first[0]) == 1
            assert await _sealed_with(rotated, rotated[0]) == 0
            assert await _sealed_with(rotated, b"\x09" * 32) is None  # neither: refused

        # an appliance restarted on the same vCenter keeps what guestinfo holds
        again = _service(url, secret=7)
        await n.start(again.run)
        with trio.fail_after(T):
            await again.prepare(VM)
        assert again.secrets(VM) == rotated
        await guest.aclose()
        n.cancel_scope.cancel()

    text = caplog.text
    for s in (*rotated, b"\x09" * 32):
        assert s.hex() not in text and gik.encode_session_secrets([s])[3:] not in text
    assert gik.encode_session_secrets(rotated) not in text


@pytest.mark.trio
async def test_a_vcenter_that_refuses_costs_that_vm_alone(
    vcsim: VSphereTarget,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A wrong password or an unknown VM: a GuestinfoError naming the VM, never a
    secret; the service carries on."""
    caplog.set_level(logging.DEBUG)
    for service, vm in ((_service(_url(vcsim, "wrong")), VM), (_service(_url(vcsim)), "nope")):
        async with trio.open_nursery() as n:
            await n.start(service.run)
            with trio.fail_after(T), pytest.raises(GuestinfoError, match=vm):
                await service.prepare(vm)
            assert service.find(vm) is None
            n.cancel_scope.cancel()
    assert gik.encode_session_secrets([b"\x01" * 32])[3:] not in caplog.text


def test_the_vsphere_target_takes_user_and_password_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    v = SessionsVSphere(
        url="https://u:p@vc.example.com/sdk", user="ops", password_file=tmp_path / "pw"
    )
    t = v.target()
    assert (t.host, t.user, t.password, t.verify_tls) == ("vc.example.com", "ops", "s3cret", True)
    assert replace(v, verify_tls=False, password_file=None).target().password == "p"
    assert not replace(v, verify_tls=False).target().verify_tls


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ('guestinfo = "nfs"', "sessions.guestinfo"),
        ('guestinfo = "vsphere"', "sessions.vsphere"),
        ('[sessions.vsphere]\nurl = "http://127.0.0.1/sdk"', "sessions.vsphere"),
        ('guestinfo = "vsphere"\n[sessions.vsphere]\nurl = "ftp://vc/sdk"', "sessions.vsphere.url"),
        ('guestinfo = "vsphere"\n[sessions.vsphere]\nuser = "x"', "sessions.vsphere.url"),
        (
            'guestinfo = "vsphere"\n[sessions.vsphere]\nurl = "https://vc/sdk"\n'
            'password-file = "/no/such/file"',
            "sessions.vsphere.password-file",
        ),
        (
            'guestinfo = "vsphere"\nguestinfo-dir = "/tmp"\n'
            '[sessions.vsphere]\nurl = "https://vc/sdk"',
            "sessions.guestinfo-dir",
        ),
    ],
)
def test_bad_vsphere_sessions_config_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], table: str, key: str
) -> None:
    from vic.cli import main

    path = tmp_path / "vspc.toml"
    path.write_text(toml_config(tmp_path) + f"[sessions]\n{table}\n")
    assert main(["vspc", "--config", str(path), "--check"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and f"config error: {key}:" in err[0], err


def test_a_vsphere_sessions_config_without_its_table_exits_2_as_a_process(tmp_path: Path) -> None:
    path = tmp_path / "vspc.toml"
    path.write_text(toml_config(tmp_path) + '[sessions]\nguestinfo = "vsphere"\n')
    assert_one_line(run_vic("vspc", path), "sessions.vsphere")
