"""Many VMs at once through one vSPC: each writes its own pattern (0xFF, NUL and
CR included) while some of them migrate, and each console receives exactly its
bytes, once, in order; what consoles type reaches the right VM, also across the
vMotions."""

from __future__ import annotations

import random
from pathlib import Path

import trio

from tests.support.waiting import wait_until
from vic.lab.esx_sim import EsxConnection, SimVM, random_seq
from vspc.core.identity import DEFAULT_LABEL, PortKey
from vspc.service import VspcService

from .conftest import attach_console, metric, read_exactly, start_vspc

HOST = "127.0.0.1"
N_VMS = 200
MIGRATING = set(range(0, N_VMS, 10))  # 20 of them
CHUNKS = 6


def pattern(i: int) -> list[bytes]:
    """VM ``i``'s console output, in chunks: unique, and rich in 0xFF, NUL, CR."""
    rng = random.Random(1000 + i)
    out = []
    for c in range(CHUNKS):
        body = bytes(rng.choice(b"\xff\x00\r\nabcxyz") for _ in range(rng.randrange(50, 700)))
        out.append(b"<vm%03d.%d>" % (i, c) + body)
    return out


class _Run:
    """One run: the service, the VMs, what each console read and who got its typing."""

    def __init__(self, service: VspcService, vms: list[SimVM]) -> None:
        self.service = service
        assert service.esx_port is not None
        self.port = service.esx_port
        self.vms = vms
        self.results: dict[int, bytes] = {}
        self.typed_ok: set[int] = set()

    async def one(self, i: int, conns: trio.Nursery) -> None:
        """VM ``i`` writes its pattern (migrating if chosen) while a client reads and types."""
        vm = self.vms[i]
        key = PortKey(vm.canonical_uuid, DEFAULT_LABEL)
        chunks = pattern(i)
        one_byte = i % 40 == 0
        src = await EsxConnection.open(conns, HOST, self.port, vm=vm, one_byte_segments=one_byte)
        await src.send_console(chunks[0])
        await wait_until(lambda: self.service.consoles.get(key) is not None, 15)
        client = await attach_console(self.service, vm.canonical_uuid, "rw")
        want = b"".join(chunks)
        reader_done = trio.Event()

        async def read() -> None:
            self.results[i] = await read_exactly(client, len(want))
            reader_done.set()

        conns.start_soon(read)
        await src.send_console(chunks[1])
        await src.send_console(chunks[2])
        token = b"key-%03d\xff" % i
        if i in MIGRATING:
            vm_side = await self._migrate(i, src, client, token, conns, one_byte)
        else:
            await client.send_all(token)
            for chunk in chunks[3:]:
                await src.send_console(chunk)
            vm_side = src
        assert await vm_side.receive_console_exactly(len(token)) == token
        self.typed_ok.add(i)
        await reader_done.wait()
        assert not src.violations and not vm_side.violations
        await client.aclose()
        await vm_side.aclose()

    async def _migrate(
        self,
        i: int,
        src: EsxConnection,
        client: trio.abc.Stream,
        token: bytes,
        conns: trio.Nursery,
        one_byte: bool,
    ) -> EsxConnection:
        """VM ``i`` moves from ``src`` while its client types ``token``; the destination."""
        chunks = pattern(i)
        seq = random_seq(random.Random(i), with_ff=True)
        secret = await src.vmotion_begin(seq)
        await client.send_all(token)  # held while the VM is paused
        await src.send_console(chunks[3])
        dest = await EsxConnection.open(
            conns, HOST, self.port, vm=self.vms[i], do_proxy=False, one_byte_segments=one_byte
        )
        await dest.vmotion_peer(seq, secret)
        await src.send_console(chunks[4])
        await dest.vmotion_complete(seq)
        await dest.send_console(chunks[5])
        await src.aclose()
        return dest


async def test_many_vms_some_migrating(tmp_path: Path) -> None:
    rng = random.Random(7)
    vms = [SimVM.random(rng, name=f"vm{i:03d}") for i in range(N_VMS)]
    async with trio.open_nursery() as nursery:
        # every simulated host connects from 127.0.0.1: one source for all vMotions
        service = await start_vspc(tmp_path, nursery, max_per_source=N_VMS)
        run = _Run(service, vms)
        with trio.fail_after(60):
            async with trio.open_nursery() as conns:
                for i in range(N_VMS):
                    conns.start_soon(run.one, i, conns)
        assert metric(service, "vspc_vmotions_total", outcome="complete") == len(MIGRATING)
        nursery.cancel_scope.cancel()
    bad = [i for i in range(N_VMS) if run.results.get(i) != b"".join(pattern(i))]
    assert not bad, f"consoles with wrong bytes: {bad[:10]}"
    assert run.typed_ok == set(range(N_VMS))
