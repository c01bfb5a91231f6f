"""The agent's tether (``guestagent.tether.Tether``) as a process of its own, for
bench/session_exec.py: ``python _session_tether.py PIPE GUESTINFO_FILE``.

It connects to a `vic relay` pipe ingress (``PIPE``, labelled ``session``), reads its
secret from the file store the appliance writes, and runs execs as real processes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.io.guestinfo.filestore import FileStore
from guestagent.backends.file import FileGuestBackend
from guestagent.channels import unix_connector
from guestagent.config import SessionSection
from guestagent.reaper import Reaper
from guestagent.tether import Tether


async def main(pipe: str, store: str) -> None:
    async with trio.open_nursery() as nursery:
        reaper = Reaper()
        await nursery.start(reaper.run)
        tether = Tether(
            SessionSection(enabled=True, transport="unix"),
            unix_connector(pipe),
            backend=FileGuestBackend(FileStore(Path(store))),
            reaper=reaper,
        )
        await tether.run()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2])
