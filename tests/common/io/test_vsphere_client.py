"""The one vSphere client (common.io.vsphere) against govmomi's vcsim: targets from URLs,
and a session that vCenter has ended is replaced on the next call."""

from __future__ import annotations

from typing import Any

import pytest

from common.io.vsphere import VSphereConn, VSphereError, VSphereTarget
from tests.relay.test_vsphere_route import VM, vcsim  # noqa: F401 (the fixture)


def test_target_from_url_unquotes_credentials_and_defaults_the_port() -> None:
    t = VSphereTarget.from_url("https://a%40b:p%3Aw@vc.example.com/sdk")
    assert (t.host, t.port, t.user, t.password, t.protocol, t.path, t.verify_tls) == (
        "vc.example.com",
        443,
        "a@b",
        "p:w",
        "https",
        "/sdk",
        False,
    )
    assert VSphereTarget.from_url("http://127.0.0.1").port == 80
    assert VSphereTarget.from_url("http://127.0.0.1", verify_tls=True).verify_tls
    with pytest.raises(ValueError, match="not an http"):
        VSphereTarget.from_url("ftp://vc.example.com/sdk")


async def test_a_dead_session_is_replaced(vcsim: VSphereTarget) -> None:  # noqa: F811
    conn = VSphereConn(vcsim)
    vm: Any = await conn.call(conn.find_vm, VM)
    assert vm.name == VM
    first = conn.si
    await conn.call(lambda: conn.si.content.sessionManager.Logout())
    other = VM[:-1] + "1"  # not cached: vCenter is asked, with the logged-out session
    with pytest.raises(Exception) as failed:
        await conn.call(conn.find_vm, other)
    assert type(failed.value).__name__.endswith("NotAuthenticated")
    assert conn.si is None
    assert (await conn.call(conn.find_vm, other)).name == other
    assert conn.si is not None and conn.si is not first
    await conn.call(conn.disconnect)


async def test_an_unknown_vm_and_a_wrong_password_are_vsphere_errors(vcsim: VSphereTarget) -> None:  # noqa: F811
    conn = VSphereConn(vcsim)
    with pytest.raises(VSphereError, match="no VM named 'nope'"):
        await conn.call(conn.find_vm, "nope")
    await conn.call(conn.disconnect)
    bad = VSphereConn(VSphereTarget(vcsim.host, vcsim.port, "vic", "", "http", vcsim.path))
    with pytest.raises(VSphereError, match="vSphere connect"):
        await bad.call(lambda: None)
    assert bad.si is None
