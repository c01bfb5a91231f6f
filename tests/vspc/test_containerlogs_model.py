"""Properties: whole-line rotation, and the store against a model of its lines."""

from __future__ import annotations

import itertools
from pathlib import Path

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vspc.console.logfile import RotatingFile, rotated
from vspc.containerlogs import ContainerLogs, ContainerLogSettings, LogLine, Stream
from vspc.containerlogs.files import lines_backwards
from vspc.core.linelog import LineFramer, to_ns

_dirs = itertools.count()
T0 = 1_796_000_000.0
SLOW = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def fresh(tmp_path: Path) -> Path:
    d = tmp_path / f"run{next(_dirs)}"
    d.mkdir()
    return d


line = st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"") + b"\n")


@SLOW
@given(
    st.lists(st.lists(line, min_size=1, max_size=6).map(b"".join), max_size=30),
    st.integers(16, 200),
)
def test_whole_line_rotation_keeps_lines_and_bounds(
    tmp_path: Path, writes: list[bytes], max_bytes: int
) -> None:
    path = fresh(tmp_path) / "x.log"
    f = RotatingFile(path)
    for data in writes:
        f.write(data, max_bytes, keep=1000, whole_lines=True)
    f.close()
    files = [path] if path.exists() else []
    n = 1
    while rotated(path, n).exists():
        files.append(rotated(path, n))
        n += 1
    contents = [p.read_bytes() for p in reversed(files)]
    assert b"".join(contents) == b"".join(writes)  # in order, nothing lost or repeated
    for c in contents:
        assert c.endswith(b"\n") or not c  # rotated between lines only
        assert len(c) <= max_bytes or c.count(b"\n") == 1  # (a longer line, alone)


op = st.tuples(
    st.sampled_from(list(Stream)),
    st.binary(max_size=40).map(lambda b: b.replace(b"\x00", b"\n")),
    st.floats(0, 5),
    st.booleans(),  # flush after it
)


@SLOW
@given(st.lists(op, max_size=40), st.integers(0, 50), st.floats(0, 100))
async def test_reads_match_a_model(
    tmp_path: Path, ops: list[tuple[Stream, bytes, float, bool]], tail: int, since: float
) -> None:
    store = ContainerLogs(
        ContainerLogSettings(fresh(tmp_path), max_bytes=300, keep=1000, max_line=24)
    )
    async with trio.open_nursery() as nursery:  # run, then stopped: its thread ends
        nursery.start_soon(store.run)
        framers = {s: LineFramer(s, 24) for s in Stream}
        model: list[LogLine] = []
        now = T0
        for stream, data, dt, flush in ops:
            now += dt
            store.append("vm", stream, data, now)
            model += framers[stream].feed(data, now)
            if flush:
                await store.flush()
        now += 1
        store.close("vm", now)
        for s in Stream:
            model += framers[s].eof(now)
        assert await store.read("vm") == model
        assert await store.read("vm", tail=tail) == (model[-tail:] if tail else [])
        since_ns = to_ns(T0 + since)
        assert await store.read("vm", since=T0 + since) == [x for x in model if x.ns >= since_ns]
        only_err = frozenset({Stream.STDERR})
        want = [x for x in model if x.stream is Stream.STDERR]
        assert await store.read("vm", streams=only_err, tail=tail) == (want[-tail:] if tail else [])
        await store.flush()
        assert await store.read("vm") == model  # all in the files now
        nursery.cancel_scope.cancel()


@SLOW
@given(st.binary(max_size=200).map(lambda b: b.replace(b"\x00", b"\n")), st.integers(1, 12))
def test_lines_backwards_in_any_block_size(tmp_path: Path, data: bytes, block: int) -> None:
    path = fresh(tmp_path) / "f.log"
    path.write_bytes(data)
    want = [x for x in data.split(b"\n") if x]
    assert list(lines_backwards(path, block)) == want[::-1]
