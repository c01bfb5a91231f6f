"""AF_VSOCK ingress. Bind and listen work here; there is no vsock loopback (no
guest can connect), so the accept path is driven with an accepted-socket
stand-in (a Unix socketpair) and a given peer CID: what the relay decides from
the CID and carries after it is the same code. Byte transport over a vsock-like
socket is covered through hybrid vsock (test_ingress_hvsock)."""

from __future__ import annotations

import errno
import os
import socket

import pytest
import trio

from relay.config import VsockListener
from relay.ingress.vsock import REFUSE_UNKNOWN_CID, bind_vsock, handle_accepted, identify
from tests.relay.relayfix import Appliance, relay_config, roundtrip, start_relay, tcp_egress


def _vsock_available() -> str | None:
    if not hasattr(socket, "AF_VSOCK"):
        return "no AF_VSOCK in this Python"
    try:
        s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    except OSError as e:
        return f"AF_VSOCK sockets unavailable: {e}"
    s.close()
    return None


needs_vsock = pytest.mark.skipif(_vsock_available() is not None, reason=str(_vsock_available()))


def test_identify() -> None:
    cids = {3: "vm-a", 4: "vm-b"}
    assert identify(cids, False, 3) == "vm-a"
    assert identify(cids, True, 4) == "vm-b"  # the map wins over allow-unknown
    assert identify(cids, False, 99) is None
    assert identify(cids, True, 99) == "cid-99"
    assert identify({}, False, 3) is None


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@needs_vsock
async def test_bind_to_a_cid_not_ours_fails_without_leaking() -> None:
    """A listener bound to a CID this host does not have (a typo in bind-cid)
    fails at bind with EADDRNOTAVAIL; the socket is closed, not leaked."""
    before = _open_fds()
    with pytest.raises(OSError) as e:
        await bind_vsock(987_654, 40125)
    assert e.value.errno == errno.EADDRNOTAVAIL
    assert _open_fds() == before


@needs_vsock
async def test_bound_socket_is_listening() -> None:
    sock = await bind_vsock(socket.VMADDR_CID_ANY, 40126)
    with sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert sock.getsockname() == (socket.VMADDR_CID_ANY, 40126)


@needs_vsock
async def test_listener_binds_and_stops() -> None:
    app = Appliance()
    async with trio.open_nursery() as n:
        port = await app.serve_tcp(n)
        cfg = relay_config(
            tcp_egress(port), vsock=(VsockListener(name="g", port=40123, cids={"3": "vm-a"}),)
        )
        d = await start_relay(n, cfg)
        _cid, bport = d.bound["g"]
        assert bport == 40123
        # Bound and listening: a second bind on the same port fails.
        with pytest.raises(OSError):
            await bind_vsock(socket.VMADDR_CID_ANY, 40123)
        await d.reload(relay_config(tcp_egress(port)))  # listener removed
        again = await bind_vsock(socket.VMADDR_CID_ANY, 40123)  # port free again
        again.close()
        n.cancel_scope.cancel()


async def test_accept_known_and_refuse_unknown_cid() -> None:
    app = Appliance()
    cfg_l = VsockListener(name="g", port=40124, cids={"3": "vm-a"})
    async with trio.open_nursery() as n:
        port = await app.serve_tcp(n)
        d = await start_relay(n, relay_config(tcp_egress(port)))
        # Known CID 3: relayed with the VM named by the map, not by the guest.
        a, b = trio.socket.socketpair()
        await handle_accepted(cfg_l, cfg_l.cid_map(), d, a, (3, 1025))
        guest = trio.SocketStream(b)
        assert await roundtrip(guest, b"from cid 3") == b"from cid 3"
        (rec,) = await app.wait_streams(1)
        assert (rec.header.vm, rec.header.kind, rec.header.label) == ("vm-a", "vsock", "vsock")
        # Unknown CID 7: closed, logged and counted as refused.
        c, e = trio.socket.socketpair()
        await handle_accepted(cfg_l, cfg_l.cid_map(), d, c, (7, 1026))
        intruder = trio.SocketStream(e)
        with trio.fail_after(5):
            assert await intruder.receive_some(10) == b""
        assert d.metrics.refused.labels("g", REFUSE_UNKNOWN_CID)._value.get() == 1
        assert len(app.streams) == 1
        n.cancel_scope.cancel()


async def test_allow_unknown_names_the_vm_by_its_cid() -> None:
    """allow-unknown: a CID outside the map is carried, named ``cid-N`` (never by
    anything the guest says), and nothing is counted as refused."""
    app = Appliance()
    cfg_l = VsockListener(name="g", port=40127, cids={"3": "vm-a"}, allow_unknown=True)
    async with trio.open_nursery() as n:
        port = await app.serve_tcp(n)
        d = await start_relay(n, relay_config(tcp_egress(port)))
        a, b = trio.socket.socketpair()
        await handle_accepted(cfg_l, cfg_l.cid_map(), d, a, (7, 1027))
        guest = trio.SocketStream(b)
        with trio.fail_after(10):
            assert await roundtrip(guest, b"from cid 7") == b"from cid 7"
            (rec,) = await app.wait_streams(1)
        assert (rec.header.vm, rec.header.kind) == ("cid-7", "vsock")
        assert d.metrics.refused.labels("g", REFUSE_UNKNOWN_CID)._value.get() == 0
        n.cancel_scope.cancel()
