"""Starts VMware's public asyncio vSPC (PyPI ``vmware-vspc`` 0.0.3) on today's Python.

Run by the peer's own virtualenv (``.cache/bench-peers/vmware-vspc/bin/python -I``, see
bench/_vmware_vspc.py), never by the project's: it imports only the standard library
and that package's ``vspc`` (which would otherwise clash with this project's ``vspc``).

The package was written for Python 3.5. Two names it uses are gone from asyncio since
3.10/3.11; this restores them and changes nothing else of its code:

- ``@asyncio.coroutine``: for a generator function it was ``types.coroutine`` (what
  3.5-3.10 did outside asyncio's debug mode);
- ``asyncio.start_server(..., loop=loop)``: the ``loop`` argument is dropped (it was
  the running loop anyway).

It also raises the soft open-files limit to the hard one, as a deployer would
(``LimitNOFILE=``) for thousands of VMs: one file descriptor per VM.

    python -I bench/_vmware_vspc_serve.py --config-file vspc.conf   # serve
    python -I bench/_vmware_vspc_serve.py --check                   # exit 0 if it can
"""

from __future__ import annotations

import asyncio
import importlib
import resource
import sys
import types
from typing import Any


def restore_removed_asyncio_names() -> None:
    if not hasattr(asyncio, "coroutine"):
        setattr(asyncio, "coroutine", types.coroutine)  # noqa: B010 (gone from the stubs too)
    original = asyncio.start_server

    async def start_server(*args: Any, loop: Any = None, **kwargs: Any) -> asyncio.Server:
        del loop
        return await original(*args, **kwargs)

    setattr(asyncio, "start_server", start_server)  # noqa: B010


def raise_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> int:
    raise_nofile()
    restore_removed_asyncio_names()
    server = importlib.import_module("vspc.server")  # VMware's, from the peer's virtualenv
    if sys.argv[1:] == ["--check"]:
        print(f"vmware-vspc importable from {server.__file__}")
        return 0
    sys.argv[0] = "vmware-vspc"
    server.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
