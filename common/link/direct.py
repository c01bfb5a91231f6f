"""Payloads straight from a plaintext peer link's socket to their destination.

The link's reader (common.link.linkreader) splices a large DATA payload from
the link socket into a pipe (``splice_in``) when its resumable stream may take
it directly (``ResumableStream.direct_ready``: the application waits in
``receive_some`` holding nothing, and gave the socket it writes to); the stream
splices it on into that socket (``splice_out``), and what the socket does not
take at once leaves the pipe as received bytes (``drain``), for the application
to write as usual. No payload byte is copied through Python on the direct path.
"""

from __future__ import annotations

import fcntl
import os

from common.io.pipepool import Pipe

FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
PIPE_SIZE = 1 << 20


def new_pipe() -> Pipe:
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        size = fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:  # over pipe-max-size or the user's pipe budget: the default
        size = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
    return Pipe(r, w, size)


def splice_in(src: int, pipe: Pipe, n: int) -> int:
    """Up to ``n`` bytes from ``src`` into the (empty) pipe; 0 at EOF; raises
    BlockingIOError when ``src`` has nothing now."""
    return os.splice(src, pipe.w, min(n, pipe.size), flags=FLAGS)


def splice_out(pipe: Pipe, dst: int, n: int) -> int:
    """Move up to the ``n`` bytes in the pipe into ``dst`` without waiting; returns
    how many went (-1 if ``dst`` failed: nothing more goes there)."""
    done = 0
    while done < n:
        try:
            k = os.splice(pipe.r, dst, n - done, flags=FLAGS)
        except BlockingIOError:
            break
        except OSError:
            return -1 if not done else done
        if not k:
            break
        done += k
    return done


def drain(pipe: Pipe, n: int) -> bytes:
    """The ``n`` bytes left in the pipe, read out (the pipe is then empty)."""
    parts = []
    while n > 0:
        b = os.read(pipe.r, n)
        if not b:
            raise RuntimeError("pipe shorter than expected")
        parts.append(b)
        n -= len(b)
    return parts[0] if len(parts) == 1 else b"".join(parts)
