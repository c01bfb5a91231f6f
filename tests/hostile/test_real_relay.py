"""Issue 11, items 3 and 6 through a real `vic relay` process.

The relay runs from its own TOML (a `[[tcp]]` network serial port, the egress
to the appliance's endpoint) as an operator would deploy it: a relay whose
certificate is for another host than the one it claims is refused; two
connections to one serial port (ESX reconnecting while the old one lingers)
leave the operator's input with the connection that is live.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from common.link.tls import TlsFiles
from tests.hostile.appliance import Vspc, check_logged, closed_by_peer, start_vspc
from tests.hostile.test_console_input import listed, recorded
from tests.hostile.test_relayed_identity import APPLIANCE_NAME, rejected, tls_vspc
from tests.relay.relayfix import pattern
from tests.support.daemons import free_port, run_daemon
from tests.support.waiting import wait_until_async


def relay_config(host: str, egress: dict[str, Any], vm: str, vm_port: int) -> dict[str, Any]:
    return {
        "host": host,
        "egress": {"default": egress},
        "metrics": {"host": "127.0.0.1", "port": free_port()},
        "timeouts": {"retry-min": 0.05, "retry-max": 0.5},
        "tcp": [{"name": f"{vm}-com1", "vm": vm, "port": vm_port, "host": "127.0.0.1"}],
    }


def tls_egress(port: int, files: TlsFiles) -> dict[str, Any]:
    return {
        "kind": "tcp",
        "host": "127.0.0.1",
        "port": port,
        "tls": {
            "ca": str(files.ca),
            "cert": str(files.cert),
            "key": str(files.key),
            "server-name": APPLIANCE_NAME,
        },
    }


async def operator_types(vspc: Vspc, vm: str, text: bytes, to: trio.abc.Stream) -> None:
    client = await vspc.attach(vm, "rw")
    async with client:
        await client.send_all(text)
        got = bytearray()
        with trio.move_on_after(10):
            while len(got) < len(text):
                chunk = await to.receive_some(65536)
                if not chunk:
                    break
                got += chunk
    assert bytes(got) == text, f"the live VM connection got {bytes(got)!r}, not {text!r}"


async def test_relay_with_another_hosts_certificate_is_refused(tmp_path: Path) -> None:
    """Relay "esx-b" presents esx-a's certificate: its streams are refused at the
    appliance (counted), no console appears for its VM; relay esx-a with the
    same certificate carries its VM byte-exact alongside."""
    async with tls_vspc(tmp_path) as (vspc, pki, port):
        a_files = pki.issue("host", "esx-a")
        honest_port, forged_port = free_port(), free_port()
        cfg_a = relay_config("esx-a", tls_egress(port, a_files), "vm-of-a", honest_port)
        cfg_b = relay_config("esx-b", tls_egress(port, a_files), "vm-of-b", forged_port)
        async with (
            run_daemon("relay", tmp_path / "a", cfg_a, name="relay-a"),
            run_daemon("relay", tmp_path / "b", cfg_b, name="relay-b"),
        ):
            data = pattern(64 << 10, 6)
            honest = await trio.open_tcp_stream("127.0.0.1", honest_port)
            await honest.send_all(data[:4096])
            before = await rejected(vspc)
            forged = await trio.open_tcp_stream("127.0.0.1", forged_port)
            await forged.send_all(b"typed as vm-of-b\r\n" * 10)

            async def refused() -> bool:
                return await rejected(vspc) > before

            await wait_until_async(refused, 10, "the forged relay's stream rejected")
            await closed_by_peer(forged, timeout=15)
            await forged.aclose()
            assert await listed(vspc, "vm-of-b") is None
            await honest.send_all(data[4096:])
            await check_logged(vspc, "vm-of-a", data)
            await operator_types(vspc, "vm-of-a", b"for vm-of-a\r", honest)
            await honest.aclose()


async def test_second_connection_to_a_relayed_port_leaves_input_with_the_live_one(
    tmp_path: Path,
) -> None:
    """Two ESX connections to one relayed serial port: the second is short and
    ends; the operator's input still reaches the first, and `vic console list`
    shows the VM connected (item 3 through the real relay)."""
    async with start_vspc(tmp_path / "app") as vspc:
        vm_port = free_port()
        egress = {"kind": "unix", "path": str(vspc.endpoint_unix)}
        cfg = relay_config("esx-a", egress, "vm-relayed", vm_port)
        async with run_daemon("relay", tmp_path / "relay", cfg, name="relay"):
            live = await trio.open_tcp_stream("127.0.0.1", vm_port)
            await live.send_all(b"live VM boot log\r\n")
            await recorded(vspc, "vm-relayed", "connect", 1)
            short = await trio.open_tcp_stream("127.0.0.1", vm_port)
            await short.send_all(b"a short reconnect\r\n")
            await recorded(vspc, "vm-relayed", "connect", 2)
            await short.aclose()
            await recorded(vspc, "vm-relayed", "disconnect", 1)
            await operator_types(vspc, "vm-relayed", b"after the short one\r", live)
            entry = await listed(vspc, "vm-relayed")
            assert entry is not None and entry["connected"], entry
            await live.aclose()
