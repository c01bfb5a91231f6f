"""VMware's vSPC as vspc_scale.py's ``vmware`` mode (bench/_vmware_vspc.py).

The peer is installed only by bench/fetch-peers (into .cache/bench-peers/, outside the
project's .venv): without it the smoke run is skipped, saying so, and the bench
records a note instead of failing.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from vic.lab import telnet_wire as tw

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "bench") not in sys.path:  # bench/ runs as scripts, its helpers top-level
    sys.path.insert(0, str(ROOT / "bench"))

from _vmware_vspc import VmwareProbes  # noqa: E402

PEER = ROOT / "bench" / "_vmware_vspc.py"
SCALE = ROOT / "bench" / "vspc_scale.py"


def _run(script: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def _peer_status() -> str:
    return _run(PEER, env=dict(os.environ)).stdout.strip()


def test_missing_peer_is_a_note_not_a_failure(tmp_path: Path) -> None:
    env = dict(
        os.environ,
        MPLBACKEND="Agg",
        VIC_BENCH_RESULTS=str(tmp_path),
        VIC_BENCH_PEERS=str(tmp_path / "no-peers"),
    )
    status = _run(PEER, env=env)
    assert status.returncode == 0
    assert "not installed" in status.stdout and "bench/fetch-peers" in status.stdout
    proc = _run(SCALE, "--smoke", "--modes", "direct,vmware", env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads((tmp_path / "vspc_scale.json").read_text())
    assert list(data["runs"]) == ["direct"]
    assert any(n.startswith("vmware not measured:") for n in data["notes"]), data["notes"]


def test_vmware_mode_answers_begin_with_goahead(tmp_path: Path) -> None:
    status = _peer_status()
    if not status.startswith("VMware's vSPC ready"):
        pytest.skip(f"VMware's vSPC peer unavailable: {status}")
    env = dict(os.environ, MPLBACKEND="Agg", VIC_BENCH_RESULTS=str(tmp_path))
    proc = _run(SCALE, "--smoke", "--modes", "vmware", env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    run = json.loads((tmp_path / "vspc_scale.json").read_text())["runs"]["vmware"]
    assert run["connected"] == 50
    lat = run["begin_goahead_ms"]
    # every timed vMotion got its GOAHEAD (a broken one would count in "failed")
    assert lat["n"] + lat["failed"] == 5 and lat["n"] >= 4
    assert 0 < lat["p50"] <= lat["p99"]
    assert run["rss_kib_after_connect"] > 0
    assert run["vmware_peer"]["peer_ok_with_secret"] >= lat["n"]


class _VmwareLike:
    """Answers as vmware-vspc 0.0.3 does, without it: GOAHEAD and PEER-OK unescaped,
    PEER-OK(seq + secret); the first GOAHEAD's secret carries a bare 0xFF."""

    def __init__(self) -> None:
        self.seqs: list[bytes] = []

    async def handle(self, stream: trio.SocketStream) -> None:
        decoder = tw.Decoder()
        try:
            async for chunk in stream:
                out = b"".join(self._answer(ev) for ev in decoder.feed(bytes(chunk)))
                if out:
                    await stream.send_all(out)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def _answer(self, ev: tw.Event) -> bytes:
        if isinstance(ev, tw.Negotiation):
            ok = ev.option in (tw.BINARY, tw.SGA) or (
                ev.option == tw.VMWARE_EXT and ev.verb == tw.WILL
            )
            verb = {tw.WILL: tw.DO if ok else tw.DONT, tw.DO: tw.WILL if ok else tw.WONT}
            return tw.negotiation(verb[ev.verb], ev.option) if ev.verb in verb else b""
        if not isinstance(ev, tw.Subnegotiation) or ev.option != tw.VMWARE_EXT:
            return b""
        cmd, body = ev.payload[0], ev.payload[1:]
        if cmd == tw.KNOWN_SUBOPTIONS_1:
            known = bytes((tw.VMOTION_BEGIN, tw.VMOTION_PEER, tw.DO_PROXY, tw.VM_VC_UUID))
            return tw.ext(tw.KNOWN_SUBOPTIONS_2, known) + tw.ext(tw.GET_VM_VC_UUID)
        if cmd == tw.DO_PROXY:
            return tw.ext(tw.WILL_PROXY)
        if cmd == tw.VMOTION_BEGIN:
            self.seqs.append(body)
            secret = b"\x01\xff\x91\x02" if len(self.seqs) == 1 else b"\x01\x02\x03\x04"
            return tw.ext(tw.VMOTION_GOAHEAD, body + secret, escaped=False)
        if cmd == tw.VMOTION_PEER:
            return tw.ext(tw.VMOTION_PEER_OK, body, escaped=False)
        return b""


async def test_broken_goahead_fails_one_vmotion_and_replaces_its_probe() -> None:
    server = _VmwareLike()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        probes = VmwareProbes(port, nursery, vmotion_gap=0.0)
        await probes.open(2)
        with trio.fail_after(20):
            await probes.vmotions(4, record=True)
        lat = probes.begin_goahead_ms()
        assert (lat["n"], lat["failed"]) == (3, 1)
        assert probes.failures == {"ConnectionClosed": 1}
        assert probes.peer_notes() == {"peer_ok_with_secret": 3, "probes_replaced": 1}
        # the first vMotion's sequence had a 0xFF (every 7th does): none reached it
        assert len(server.seqs) == 4 and not any(0xFF in s for s in server.seqs)
        await probes.aclose()
        nursery.cancel_scope.cancel()
