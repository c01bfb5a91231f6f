"""The agent's tether as a process of its own, as ``_session_tether.py``, with its
main-process attach handed out (``MainAttach.enabled``, what the agent does when it
runs the main process): the appliance then sees the VM's main process running, so
docker sees the container running, as for a VM whose main process is quiet.

    python _docker_tether.py PIPE GUESTINFO_FILE MAX_EXECS
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


async def main(pipe: str, store: str, max_execs: int) -> None:
    async with trio.open_nursery() as nursery:
        reaper = Reaper()
        await nursery.start(reaper.run)
        tether = Tether(
            SessionSection(enabled=True, transport="unix", max_execs=max_execs),
            unix_connector(pipe),
            backend=FileGuestBackend(FileStore(Path(store))),
            reaper=reaper,
        )
        tether.main.enabled = True  # a main process that writes nothing
        await tether.run()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
