from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from common.proto.console.ring import Ring


@given(
    cap=st.integers(0, 64),
    chunks=st.lists(st.binary(max_size=100), max_size=30),
    asks=st.lists(st.integers(0, 200), min_size=1, max_size=5),
)
def test_ring_keeps_exactly_the_last_bytes(cap: int, chunks: list[bytes], asks: list[int]) -> None:
    ring = Ring(cap)
    everything = b""
    for c in chunks:
        ring.append(c)
        everything += c
        assert len(ring) == min(cap, len(everything))
        for n in asks:
            want = everything[-min(n, cap) :] if min(n, cap) else b""
            assert ring.last(n) == want
    assert ring.total == len(everything)


@given(
    cap=st.integers(0, 50),
    new_cap=st.integers(0, 50),
    before=st.binary(max_size=120),
    after=st.binary(max_size=120),
)
def test_ring_resize_keeps_newest(cap: int, new_cap: int, before: bytes, after: bytes) -> None:
    ring = Ring(cap)
    ring.append(before)
    kept = before[-cap:] if cap else b""
    ring.resize(new_cap)
    kept = kept[-new_cap:] if new_cap else b""
    assert ring.last(1000) == kept
    ring.append(after)
    both = kept + after
    assert ring.last(1000) == (both[-new_cap:] if new_cap else b"")
    assert ring.total == len(before) + len(after)


def test_ring_memory_grows_with_data_only() -> None:
    ring = Ring(1 << 20)
    ring.append(b"x" * 10)
    assert len(ring._buf) == 10  # a quiet VM does not cost a full ring
    ring.append(b"y" * (2 << 20))
    assert len(ring) == 1 << 20
    ring.append(b"z" * 5)
    assert len(ring._buf) == 1 << 20
    assert ring.last(6) == b"yzzzzz"


@given(
    cap=st.integers(0, 64),
    chunks=st.lists(
        st.tuples(st.binary(max_size=300), st.sampled_from(["bytes", "view", "bytearray"])),
        max_size=30,
    ),
)
def test_ring_exact_whatever_the_chunk_type_and_size(
    cap: int, chunks: list[tuple[bytes, str]]
) -> None:
    """Big immutable chunks are kept by reference, mutable ones copied: same content."""
    ring = Ring(cap)
    everything = b""
    for raw, kind in chunks:
        buf = bytearray(raw)
        data: bytes | bytearray | memoryview = (
            raw if kind == "bytes" else memoryview(raw)[0:] if kind == "view" else buf
        )
        ring.append(data)
        buf[:] = b"\x00" * len(buf)  # the caller reuses its buffer
        everything += raw
        assert len(ring) == min(cap, len(everything))
        assert ring.last(cap) == (everything[-cap:] if cap else b"")
        assert ring.last(7) == (everything[-min(7, cap) :] if min(7, cap) else b"")


def test_a_bulk_chunk_is_not_copied() -> None:
    ring = Ring(1024)
    chunk = bytes(range(256)) * 16  # 4 KiB, up to 4x the ring: kept by reference
    ring.append(chunk)
    assert ring._tail is chunk and ring.last(3) == chunk[-3:]
    ring.append(b"abc")  # a small one: the tail is copied in, then the ring goes circular
    assert ring._tail is None and ring.last(1024) == (chunk + b"abc")[-1024:]


@given(
    cap=st.integers(0, 50),
    older=st.binary(max_size=120),
    chunks=st.lists(st.binary(max_size=40), max_size=4),
    after=st.binary(max_size=60),
)
def test_ring_prepend_puts_history_in_front(
    cap: int, older: bytes, chunks: list[bytes], after: bytes
) -> None:
    ring = Ring(cap)
    for c in chunks:
        ring.append(c)
    total = ring.total
    ring.prepend(older)
    everything = older + b"".join(chunks)
    assert ring.last(1000) == (everything[-cap:] if cap else b"")
    assert ring.total == total  # history is not "from the VM since the start"
    ring.append(after)
    assert ring.last(1000) == ((everything + after)[-cap:] if cap else b"")
