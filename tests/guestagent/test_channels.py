"""Console connectors that cannot be exercised end to end here still behave."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import trio
import trio.testing

from guestagent.channels import hybrid_vsock_connector, vsock_connector
from guestagent.console import ConsoleLink


async def test_vsock_connect_failure_is_an_oserror() -> None:
    if not hasattr(socket, "AF_VSOCK"):
        pytest.skip("no AF_VSOCK in this Python/kernel")
    try:
        s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        s.close()
    except OSError as e:
        pytest.skip(f"AF_VSOCK sockets unavailable: {e}")
    # no hypervisor host here: the connect fails with an OSError the link retries
    with pytest.raises(OSError):
        await vsock_connector(2, 1024)()


async def test_link_retries_until_the_host_side_appears(tmp_path: Path) -> None:
    uds = str(tmp_path / "vm.vsock")
    link = ConsoleLink(hybrid_vsock_connector(uds, 52), backoff_min=0.01, backoff_max=0.05)
    async with trio.open_nursery() as n:
        await n.start(link.run)
        await link.write(b"early output\n")  # buffered while nobody listens
        lst = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await lst.bind(f"{uds}_52")
        lst.listen(1)
        with trio.fail_after(10):
            conn, _ = await lst.accept()
            async with trio.SocketStream(conn) as s:
                got = b""
                while not got.endswith(b"\n"):
                    got += await s.receive_some(100)
        assert got == b"early output\n"
        n.cancel_scope.cancel()
