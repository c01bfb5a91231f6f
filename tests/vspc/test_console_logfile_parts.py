"""A batch of console bytes written to its log file with vectored writes: the same
files as one write per chunk (rotation included), and partial writes and errors
counted byte for byte."""

from __future__ import annotations

import errno
import itertools
import os
import random
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vspc.console import logfile
from vspc.console.logfile import RotatingFile

_dirs = itertools.count()
Buffers = Sequence[bytes | memoryview]


def files_of(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())} if d.exists() else {}


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batches=st.lists(st.lists(st.integers(0, 300), max_size=12), max_size=6),
    max_bytes=st.sampled_from([1, 7, 100, 1000, 1 << 30]),
    keep=st.integers(0, 3),
)
def test_parts_make_the_same_files_as_one_write_each(
    tmp_path: Path, batches: list[list[int]], max_bytes: int, keep: int
) -> None:
    run = next(_dirs)
    one, many = tmp_path / f"one{run}", tmp_path / f"many{run}"
    rng = random.Random(run)
    a, b = RotatingFile(one / "x.log"), RotatingFile(many / "x.log")
    for sizes in batches:
        parts = [rng.randbytes(n) for n in sizes]
        for p in parts:
            a.write(p, max_bytes, keep)
        b.write_parts(parts, max_bytes, keep)
        assert b.written == a.written and b.size == a.size
    a.close()
    b.close()
    assert files_of(many) == files_of(one)


def test_a_batch_is_one_vectored_write_per_iov_max_parts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = os.writev

    def counted(fd: int, bufs: Buffers) -> int:
        calls.append(len(bufs))
        return real(fd, bufs)

    monkeypatch.setattr(os, "writev", counted)
    parts = [bytes([i % 256]) * (1 + i % 5) for i in range(logfile.IOV_MAX + 10)]
    f = RotatingFile(tmp_path / "x.log")
    f.write_parts(parts, 1 << 30, 2)
    f.close()
    assert calls == [logfile.IOV_MAX, 10]
    assert (tmp_path / "x.log").read_bytes() == b"".join(parts)


def test_partial_vectored_writes_are_finished_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def dribble(fd: int, bufs: Buffers) -> int:  # at most 5 bytes of the first buffer
        return os.write(fd, bytes(bufs[0][:5]))

    monkeypatch.setattr(os, "writev", dribble)
    parts = [b"abcdefgh", b"", b"ij", b"klmnopqrstu"]
    f = RotatingFile(tmp_path / "x.log")
    f.write_parts(parts, 1 << 30, 2)
    f.close()
    assert (tmp_path / "x.log").read_bytes() == b"abcdefghijklmnopqrstu"
    assert f.written == f.size == 21


def test_an_error_mid_batch_counts_the_bytes_written_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = itertools.count()

    def full_after_ten(fd: int, bufs: Buffers) -> int:
        if next(calls):
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, b"".join(bytes(b) for b in bufs)[:10])

    monkeypatch.setattr(os, "writev", full_after_ten)
    f = RotatingFile(tmp_path / "x.log")
    with pytest.raises(OSError) as e:
        f.write_parts([b"0123456", b"789abcdef"], 1 << 30, 2)
    f.close()
    assert e.value.errno == errno.ENOSPC
    assert f.written == 10 and (tmp_path / "x.log").read_bytes() == b"0123456789"
