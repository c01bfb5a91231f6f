"""The console's mTLS endpoint when its CA file is replaced (the new CA written over
the old one, the server certificate re-issued by it): after the reload an operator
whose certificate only the old CA signed is refused, one from the new CA is let in,
and an attach made before carries on byte-exact."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest
import trio

from common.io import certs, tlsrefresh
from common.proto.console.protocol import AttachRequest
from vspc.console.client import ConsoleClientError, attach, list_consoles

from .test_console_operator_tls import Ca, refused, serve
from .test_console_support import KEY, pattern, read_exactly, short_dir

__all__ = ["short_dir"]


def replace_ca(ca: Ca, new: Ca) -> None:
    """The server's pair re-issued by ``new``, then the CA file written over."""
    for name in ("appliance-vch.key", "appliance-vch.crt", certs.CA_CERT):
        tmp = ca.root / (name + ".tmp")
        shutil.copy(new.root / name, tmp)
        os.replace(tmp, ca.root / name)


async def test_operator_of_a_replaced_ca_is_refused(short_dir: Path, nursery: trio.Nursery) -> None:
    ca, new = Ca(short_dir / "ca"), Ca(short_dir / "new")
    svc = await serve(nursery, short_dir, ca)
    con = svc._consoles[KEY]
    alice = ca.endpoint(svc, "operator/alice")
    bob = new.endpoint(svc, "operator/bob")
    with trio.fail_after(20):
        stream, _status, rest = await attach(alice, AttachRequest("tls-vm"))
        buf = bytearray(rest)
        one, two = pattern(0, 3000), pattern(3000, 3000)
        await con.from_vm(one)
        assert await read_exactly(stream, buf, len(one)) == one
        old_ca = (ca.root / certs.CA_CERT).read_bytes()
        replace_ca(ca, new)
        assert tlsrefresh.refresh() >= 1  # what SIGHUP and the file watcher run
        both = short_dir / "both.crt"  # alice trusts both: the server is the one to refuse
        both.write_bytes(old_ca + (new.root / certs.CA_CERT).read_bytes())
        with pytest.raises(ConsoleClientError):
            await list_consoles(dataclasses.replace(alice, ca=both))
        assert refused(svc, "unknown_ca") == 1
        assert len(await list_consoles(dataclasses.replace(bob, ca=ca.root / certs.CA_CERT))) == 1
        await con.from_vm(two)  # the attach made under the old CA is untouched
        assert await read_exactly(stream, buf, len(two)) == two
        await stream.aclose()
