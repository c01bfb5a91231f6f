"""A client's queue of chunks: bounded by bytes, no copies, sends of at most SEND_CHUNK."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vspc.console.chunks import coalesce
from vspc.console.clientqueue import MAX_PARTS, SEND_CHUNK, Client


async def drain(c: Client) -> list[bytes]:
    out: list[bytes] = []
    while True:
        chunk = await c.next_chunk()
        if not chunk:
            return out
        assert len(chunk) <= SEND_CHUNK
        out.append(bytes(chunk))


async def test_small_chunks_are_joined_and_large_ones_sliced() -> None:
    c = Client("ro", "peer", b"status\n")
    parts: list[bytes | memoryview] = [
        b"a" * 10,
        b"b" * 20,
        b"c" * (2 * SEND_CHUNK + 5),
        memoryview(b"d" * 7)[2:],
        b"e",
    ]
    for p in parts:
        assert c.push(p, limit=10 * SEND_CHUNK)
    assert c.queued == 7 + sum(len(p) for p in parts)
    c.close()
    sends = await drain(c)
    assert b"".join(sends) == b"status\n" + b"".join(bytes(p) for p in parts)
    assert [len(s) for s in sends] == [37, SEND_CHUNK, SEND_CHUNK, 5 + 5 + 1]
    assert c.queued == 0 and c.sent == sum(len(s) for s in sends)


async def test_bytes_are_queued_without_a_copy_and_mutable_input_is_copied() -> None:
    c = Client("ro", "peer", b"")
    big = b"x" * 1000
    buf = bytearray(b"y" * 10)
    assert c.push(big, limit=4096) and c.push(buf, limit=4096)
    buf[:] = b"z" * 10  # the caller reuses its buffer: the queued copy is unchanged
    first = await c.next_chunk()
    assert bytes(first) == big + b"y" * 10
    c2 = Client("ro", "peer", b"")
    c2.push(big, limit=4096)
    assert await c2.next_chunk() is big


async def test_overflow_is_refused_whole_and_credit_covers_the_replay() -> None:
    c = Client("ro", "peer", b"r" * 100)  # replay beyond the live limit, once
    assert c.push(b"1" * 50, limit=60)  # 150 <= 60 + credit 100
    assert not c.push(b"2" * 20, limit=60)  # would be 170: refused, nothing queued
    assert c.queued == 150
    await c.next_chunk()  # everything sent: the credit is used up
    assert c.credit == 0 and c.queued == 0
    assert c.push(b"3" * 60, limit=60)
    assert not c.push(b"4", limit=60)


async def test_close_with_a_notice_discards_what_is_queued() -> None:
    c = Client("ro", "peer", b"")
    c.push(b"old" * 100, limit=1 << 20)
    c.close(b"bye")
    assert c.push(b"late", limit=1 << 20)  # closed: accepted and ignored
    assert await drain(c) == [b"bye"]


def test_coalesce_keeps_big_chunks_and_joins_runs_of_small_ones() -> None:
    big1, big2 = b"B" * 70_000, b"C" * 65_536
    chunks = [b"a", b"b", big1, big2, b"c", b"d", b"e", big1, b"f"]
    out = list(coalesce(chunks))
    assert out == [b"ab", big1, big2, b"cde", big1, b"f"]
    assert out[1] is big1 and out[2] is big2  # not copied
    assert list(coalesce([])) == [] and list(coalesce([b"x"])) == [b"x"]


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 3 * SEND_CHUNK // 2), max_size=12),
    views=st.lists(st.booleans(), max_size=12),
)
async def test_parts_are_the_queued_bytes_in_order_within_the_send_limit(
    sizes: list[int], views: list[bool]
) -> None:
    c = Client("ro", "peer", b"status\n")
    want = bytearray(b"status\n")
    for i, n in enumerate(sizes):
        data = bytes([i % 256]) * (n + 1)
        piece: bytes | memoryview = (
            memoryview(data)[1:] if i < len(views) and views[i] else data[1:]
        )
        assert c.push(piece, limit=1 << 30)
        want += bytes(piece)
    c.close()
    got = bytearray()
    while parts := await c.next_parts():
        assert 0 < sum(map(len, parts)) <= SEND_CHUNK and len(parts) <= MAX_PARTS
        assert all(isinstance(p, bytes) or type(p.obj) is bytes for p in parts)  # no copies
        for p in parts:
            got += p
    assert bytes(got) == bytes(want) and c.queued == 0 and c.sent == len(want)
