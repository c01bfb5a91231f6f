"""Issue 11, items 4, 5, 6: what a relayed stream's origin header may name.

The endpoint is attacked directly (its Unix socket, as anything on the
appliance could) and through mutual TLS with a real relay certificate (a
compromised or confused relay): a header may not name a file outside the log
directory, may not merge two VMs into one console, and may speak only for the
host its certificate names. An honest relayed stream carries on byte-exact.
"""

from __future__ import annotations

import functools
import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from common.link.route import Route, Router
from common.link.tls import TlsFiles, client_context
from tests.hostile.appliance import (
    Baseline,
    RawVm,
    Vspc,
    check_logged,
    closed_by_peer,
    endpoint_stream,
    origin_header,
    raw_vm,
    start_vspc,
)
from tests.relay.pki_helpers import Pki
from tests.relay.relayfix import pattern
from tests.support.daemons import free_port
from tests.support.waiting import wait_until, wait_until_async

REJECTED = "vspc_relayed_streams_total"
APPLIANCE_NAME = "vch.test"  # the DNS name in the endpoint's certificate
FD_SLACK = 5


async def rejected(vspc: Vspc) -> float:
    return await vspc.daemon.metric(REJECTED, result="rejected")


async def refused_and_closed(vspc: Vspc, stream: trio.abc.Stream, before: float) -> None:
    """The daemon counted one more rejected stream and closed this one."""
    await wait_until_async(lambda: _more(vspc, before), 10, "one more rejected stream")
    await closed_by_peer(stream)
    await stream.aclose()


async def _more(vspc: Vspc, before: float) -> bool:
    return await rejected(vspc) > before


def escapes(log_dir: Path, vm: str, tag: str) -> list[Path]:
    """Paths outside ``log_dir`` that the header's ``vm`` would have named."""
    found = []
    for candidate in (log_dir / vm, log_dir / f"{vm}_serial0.log", log_dir / vm / tag):
        p = candidate.resolve()
        if not p.is_relative_to(log_dir.resolve()):
            found += [q for q in (p, p.parent) if q.exists() and tag in str(q)]
    return found


# ---- item 4: path traversal


def traversal_names(tag: str) -> list[str]:
    return [
        f"../../../{tag}/x",
        f"../{tag}",
        f"/tmp/{tag}/abs",
        f"a/../../../../{tag}/y",
        "..",
        ".",
        f"{tag}/../../../../etc/x",
    ]


async def handled(vspc: Vspc) -> float:
    """Relayed streams the endpoint has decided on (accepted or rejected)."""
    return await vspc.daemon.metric(REJECTED)


async def _try_traversals(vspc: Vspc, tag: str, **connect: Any) -> None:
    honest = await raw_vm(vspc, "honest-raw", **connect)
    await honest.send(4096)
    fds = vspc.daemon.sockets()
    before = await rejected(vspc)
    attacks = []
    for vm in traversal_names(tag):
        seen = await handled(vspc)
        s = await endpoint_stream(vspc, origin_header("esx-a", vm) + b"EVIL" * 1024, **connect)
        await wait_until_async(
            functools.partial(_more_handled, vspc, seen), 10, f"the stream for {vm!r}"
        )
        attacks.append(s)
        await honest.send(1024)
    await honest.check(vspc)  # the log writer has flushed past every attack
    for vm in traversal_names(tag):
        outside = escapes(vspc.log_dir, vm, tag)
        for p in outside:  # (leave nothing behind even when the defect is there)
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        assert not outside, f"{vm!r} created files outside the log dir: {outside}"
    assert not [p for p in vspc.log_dir.rglob("*") if tag in p.name]
    listed = await vspc.consoles()
    names = {c.get("uuid") for c in listed} | {c.get("display") for c in listed}
    assert not names & set(traversal_names(tag)), names
    assert await rejected(vspc) == before + len(attacks)
    for s in attacks:
        await closed_by_peer(s)
        await s.aclose()
    await wait_until(lambda: vspc.daemon.sockets() <= fds + FD_SLACK, 10, "fds back")
    await honest.stream.aclose()


async def _more_handled(vspc: Vspc, before: float) -> bool:
    return await handled(vspc) > before


async def test_path_traversal_in_a_relayed_header_is_refused(tmp_path: Path) -> None:
    """`vm = "../../../x"` (and friends) straight to the endpoint: refused and
    counted, nothing created outside the log directory, the honest stream intact."""
    tag = f"hostile-{uuid.uuid4().hex}"
    async with start_vspc(tmp_path / "app") as vspc:
        await _try_traversals(vspc, tag)


@asynccontextmanager
async def tls_vspc(tmp_path: Path) -> AsyncIterator[tuple[Vspc, Pki, int]]:
    """The endpoint on loopback TCP with mutual TLS (client certificates from our CA)."""
    pki = Pki(tmp_path / "pki")
    server = pki.issue("appliance", "vch", dns_names=(APPLIANCE_NAME,))
    port = free_port()
    endpoint = {
        "host": "127.0.0.1",
        "port": port,
        "tls": {"cert": str(server.cert), "key": str(server.key), "client-ca": str(server.ca)},
    }
    async with start_vspc(tmp_path / "app", endpoint=endpoint) as vspc:
        yield vspc, pki, port


def relay_tls(pki: Pki, host: str) -> dict[str, Any]:
    files: TlsFiles = pki.issue("host", host)
    return {"ssl_context": client_context(files)}


async def test_path_traversal_through_an_authenticated_relay_is_refused(tmp_path: Path) -> None:
    """The same headers from a relay with a valid certificate for its own host
    (the header's host checks out; its `vm` must be checked too)."""
    tag = f"hostile-{uuid.uuid4().hex}"
    async with tls_vspc(tmp_path) as (vspc, pki, port):
        await _try_traversals(vspc, tag, tcp=("127.0.0.1", port), **relay_tls(pki, "esx-a"))


# ---- item 5: different VMs, different consoles


async def test_similar_names_get_separate_consoles(vspc: Vspc) -> None:
    """`ab-cd` and `abcd`, `Web Server` and `web server` are four VMs: four
    consoles, four logs, each holding exactly its own bytes."""
    names = ["ab-cd", "abcd", "Web Server", "web server"]
    base = Baseline.of(vspc)
    vms: list[RawVm] = []
    for k, name in enumerate(names):
        vm = await raw_vm(vspc, name, seed=20 + k)
        vm.payload = name.encode() + b":" + pattern(8192, k)
        await vm.send(len(vm.payload))
        vms.append(vm)
    want = sorted(vm.payload for vm in vms)

    def contents() -> list[bytes]:
        return sorted(p.read_bytes() for p in vspc.log_files())

    try:
        await wait_until(lambda: contents() == want, 10, "four logs")
    except AssertionError:
        got = [c[:16] for c in contents()]
        raise AssertionError(f"{len(vspc.log_files())} logs for 4 VMs, starting {got}") from None
    listed = [c for c in await vspc.consoles() if c.get("connected")]
    assert len(listed) == 4, listed
    for vm in vms:
        await vm.stream.aclose()
    await base.back(vspc)


async def test_one_uuid_in_two_spellings_is_one_console(vspc: Vspc) -> None:
    """Only a real VC UUID is canonicalised (a guard for item 5's fix): ESX's
    spelling and the bare hex name one console."""
    hex32 = uuid.uuid4().hex
    spaced = (
        " ".join(hex32[i : i + 2] for i in range(0, 16, 2))
        + "-"
        + " ".join(hex32[i : i + 2] for i in range(16, 32, 2))
    )
    a = await raw_vm(vspc, spaced.upper(), label="serial0")
    await a.send(100)
    await a.stream.aclose()
    b = await raw_vm(vspc, hex32, label="serial0", seed=6)
    await b.send(100)
    await wait_until(
        lambda: len(vspc.log_files()) == 1 and vspc.log_files()[0].stat().st_size == 200,
        10,
        "one log with both streams",
    )
    assert vspc.log_files()[0].read_bytes() == a.payload[:100] + b.payload[:100]
    await b.stream.aclose()


# ---- item 6: a relay speaks only for its own host


async def test_relay_certificate_cannot_speak_for_another_host(tmp_path: Path) -> None:
    """With mutual TLS, a relay whose certificate says host A sends a header for
    host B: refused (counted, logged), no console for B's VM; A's own stream works."""
    async with tls_vspc(tmp_path) as (vspc, pki, port):
        connect: dict[str, Any] = {"tcp": ("127.0.0.1", port), **relay_tls(pki, "esx-a")}
        honest = await raw_vm(vspc, "vm-of-a", host="esx-a", **connect)
        await honest.send(4096)
        before = await rejected(vspc)
        forged = await endpoint_stream(
            vspc, origin_header("esx-b", "vm-of-b") + b"x" * 100, **connect
        )
        await refused_and_closed(vspc, forged, before)
        names = {c.get("uuid") for c in await vspc.consoles()}
        assert "vm-of-b" not in names, names
        assert any("esx-b" in ln for ln in vspc.daemon.log_lines()), "no log line names esx-b"
        await honest.send(1024)
        await honest.check(vspc)
        text = b"keys for vm-of-a\r"
        client = await vspc.attach("vm-of-a", "rw")
        async with client:
            await client.send_all(text)
            assert await honest.receive_exactly(len(text)) == text
        await honest.stream.aclose()


# ---- items 4 and 6 over the mesh: a relay's peer link into `[[endpoint.link]]`


async def reset_by_appliance(st: trio.abc.Stream, timeout: float = 10.0) -> None:
    """The appliance refuses a resumable stream by ending or failing it."""
    with trio.fail_after(timeout):
        try:
            while await st.receive_some(65536):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def test_headers_over_a_peer_link_are_checked(tmp_path: Path) -> None:
    """A relay authenticated on a peer link (certificate for esx-a, in
    `allowed-peers`) sends traversal names and a header for esx-b: each stream
    is refused and creates nothing, the link and an honest stream on it carry on."""
    tag = f"hostile-{uuid.uuid4().hex}"
    pki = Pki(tmp_path / "pki")
    app = pki.issue("appliance", "vch")
    port = free_port()
    endpoint = {
        "link": [{"address": f"tcp:127.0.0.1:{port}", "allowed-peers": ["vic://host/esx-a"]}],
        "link-tls": {"cert": str(app.cert), "key": str(app.key), "ca": str(app.ca)},
    }
    async with start_vspc(tmp_path / "app", endpoint=endpoint) as vspc, trio.open_nursery() as n:
        router = Router(
            Route(f"tcp:127.0.0.1:{port}", identity="vic://appliance/vch"),
            n,
            tls_files=pki.issue("host", "esx-a"),
        )
        honest = await router.open_stream(origin_header("esx-a", "honest-link"))
        data = pattern(16384, 3)
        await honest.send_all(data[:4096])
        attacks = []
        for host, vm in [("esx-a", v) for v in traversal_names(tag)] + [("esx-b", "vm-of-b")]:
            st = await router.open_stream(origin_header(host, vm))
            await st.send_all(b"EVIL" * 256)
            attacks.append(st)
        await honest.send_all(data[4096:])
        await check_logged(vspc, "honest-link", data)
        for vm in traversal_names(tag):
            outside = escapes(vspc.log_dir, vm, tag)
            for p in outside:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            assert not outside, f"{vm!r} over the peer link created {outside}"
        listed = {c.get("uuid") for c in await vspc.consoles()}
        assert listed == {"honest-link"}, listed
        for st in attacks:
            await reset_by_appliance(st)
        assert router.link is not None and router.link.alive
        router.close()
        n.cancel_scope.cancel()
