"""Start-up tuning of the daemons (vspc and relay): best effort, never fatal.

Each case runs in a child process."""

from __future__ import annotations

import subprocess
import sys


def test_tuning_applies_on_glibc_and_never_raises() -> None:
    code = (
        "import gc, platform\n"
        "from common.ops import runtime_tuning as r\n"
        "ok = r.tune_allocator()\n"
        "assert ok == (platform.libc_ver()[0] == 'glibc'), ok\n"
        "r.freeze_startup_objects()\n"
        "assert gc.get_freeze_count() > 0\n"
        "data = [bytes(256 * 1024) for _ in range(64)]\n"  # still allocates fine
        "del data\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
