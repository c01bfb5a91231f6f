"""ConsoleLink over in-memory streams: any write sizes and any drop points deliver the
output at least once, in order (each connection carries a contiguous piece that starts
no later than where the previous one ended); back-pressure instead of loss; errors in
components are published and the agent carries on."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import guestagent.netwatch as netwatch
from common.proto import guestinfo as gi
from guestagent.agent import Agent
from guestagent.channels import Channel
from guestagent.console import ConsoleLink
from vspc.guestinfo_watch import FileStoreWatcher, VMState, wait_for

from .agent_helpers import agent_config


async def _run_link(writes: list[bytes], drops: list[int], buffer_limit: int) -> list[bytes]:
    """Feed ``writes`` through a link whose peer hangs up after ``drops[i]`` bytes on
    connection i; return what each connection delivered."""
    pieces: list[bytearray] = []
    peers: list[trio.abc.Stream] = []
    new_peer = trio.lowlevel.ParkingLot()

    async def connector() -> Channel:
        a, b = trio.testing.memory_stream_pair()
        peers.append(b)
        new_peer.unpark_all()
        return Channel(a, f"mem{len(peers)}")

    link = ConsoleLink(connector, buffer_limit=buffer_limit, backoff_min=0.001)

    async def appliance() -> None:
        i = 0
        while True:
            while len(peers) <= i:
                await new_peer.park()
            peer, piece = peers[i], bytearray()
            pieces.append(piece)
            limit = drops[i] if i < len(drops) else None
            while limit is None or len(piece) < limit:
                data = await peer.receive_some(limit - len(piece) if limit else 65536)
                if not data:
                    break
                piece += data
            await peer.aclose()
            i += 1

    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            n.start_soon(appliance)
            await n.start(link.run)
            for w in writes:
                await link.write(w)
                assert link.buffered <= buffer_limit + len(w)
            # settle: connected, nothing buffered, every task blocked -> final state
            while True:
                assert await link.flush()
                await trio.testing.wait_all_tasks_blocked()
                if link.channel is not None and link.buffered == 0:
                    break
                await link.wait_connected()
            n.cancel_scope.cancel()
    return [bytes(p) for p in pieces]


def _check_at_least_once(original: bytes, pieces: list[bytes]) -> None:
    end = 0
    for piece in pieces:
        if not piece:
            continue
        pos = original.find(piece)
        assert 0 <= pos <= end, f"gap or reorder: piece at {pos}, previous ended at {end}"
        end = max(end, pos + len(piece))
    assert end == len(original)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    writes=st.lists(st.binary(min_size=1, max_size=5000), min_size=1, max_size=30),
    drops=st.lists(st.integers(min_value=1, max_value=20000), max_size=4),
    buffer_limit=st.integers(min_value=1, max_value=50000),
)
async def test_any_drops_deliver_at_least_once(
    writes: list[bytes], drops: list[int], buffer_limit: int
) -> None:
    # numbered so that every position in the output is unique
    stamped = [b"%06d:" % i + w for i, w in enumerate(writes)]
    pieces = await _run_link(stamped, drops, buffer_limit)
    _check_at_least_once(b"".join(stamped), pieces)


async def test_component_failure_is_published_and_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0

    def broken(**_: object) -> dict[str, list[gi.IPAddress]]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("netlink: permission denied")
        return {"eth9": [gi.decode_ip(gi.encode_ip("192.0.2.9"))]}  # type: ignore[list-item]

    monkeypatch.setattr(netwatch, "dump_addresses", broken)
    w = FileStoreWatcher(tmp_path)
    w.store("vm1").update({"guestinfo.x": "1"})
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            await n.start(Agent(agent_config(tmp_path, console="none", publish_net=True)).run)

            def published(
                st: VMState,
            ) -> tuple[dict[str, str], dict[str, list[gi.IPAddress]]] | None:
                errs, nets = st.errors(), st.networks()
                return (errs, nets) if "network" in errs and "eth9" in nets else None

            errs, nets = await wait_for(w, "vm1", published, 20)
            n.cancel_scope.cancel()
    assert "netlink: permission denied" in errs["network"]
    assert [str(a) for a in nets["eth9"]] == ["192.0.2.9"]
