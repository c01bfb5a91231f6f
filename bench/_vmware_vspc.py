"""VMware's public asyncio vSPC as a bench peer: fetch it, start it, probe it like ESX.

The peer is PyPI's ``vmware-vspc`` 0.0.3 (OpenStack's "Virtual Serial Port Concentrator
for VMware instances", asyncio, oslo.config/oslo.log). It lives in its own virtualenv
under ``.cache/bench-peers/`` (``$VIC_BENCH_PEERS``; git ignores it), never in the project's
``.venv``::

    bench/fetch-peers                      # = .venv/bin/python bench/_vmware_vspc.py --fetch

``bench/vspc_scale.py --modes vspc,direct,vmware`` then runs it as the mode ``vmware``
(``VmwareVspc``) with the same simulated ESX hosts, and times its BEGIN->GOAHEAD with
``VmwareProbes``; when the peer is not installed the mode is skipped with a note
(``unavailable()``), so the bench, and run-all's goal, say "not measured".

What it takes to run it here, and what it does that ESX would not accept (each counted
in the results, none fixed: it is measured as published):

- it targets Python 3.5: bench/_vmware_vspc_serve.py restores two asyncio names that
  3.11 no longer has (``asyncio.coroutine``, ``start_server(loop=)``);
- it accepts a VM only with DO-PROXY to its configured ``uri``: set to what the
  simulated ESX sends (``EsxBehaviour.service_uri``);
- it answers PEER with PEER-OK(seq + secret) where ESX expects PEER-OK(seq);
- it writes GOAHEAD(seq + secret) without doubling 0xFF: a sequence or (1 in 65) a random
  secret with 0xFF in it breaks the Telnet stream (the connection fails, or the GOAHEAD
  never ends: ESX's 5 s give-up). The probes therefore use sequences without 0xFF, and
  a probe whose GOAHEAD broke counts as a failed vMotion (``begin_goahead_ms.failed``;
  ``p99`` is over the answered ones) and is replaced by a new connection.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
import venv
from pathlib import Path
from typing import Any

import _vspc_benchlib as bl
from _common import free_port
from _scale_probes import Probes

from vic.lab.esx_sim import EsxBehaviour, EsxConnection, ProtocolViolation, SimError, SimVM

ROOT = Path(__file__).resolve().parents[1]
PEERS = Path(os.environ.get("VIC_BENCH_PEERS") or ROOT / ".cache" / "bench-peers")
VENV = PEERS / "vmware-vspc"
PACKAGE = "vmware-vspc==0.0.3"
SERVE = Path(__file__).resolve().parent / "_vmware_vspc_serve.py"
FETCH_HINT = "bench/fetch-peers"


def python() -> Path:
    return VENV / "bin" / "python"


def unavailable() -> str | None:
    """None if VMware's vSPC can run here, else why not (and how to fetch it)."""
    if not python().exists():
        return f"VMware's vSPC is not installed (run {FETCH_HINT}: {PACKAGE} into {VENV})"
    try:
        check = subprocess.run(
            [str(python()), "-I", str(SERVE), "--check"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"VMware's vSPC in {VENV} does not start ({e!r}); rerun {FETCH_HINT}"
    if check.returncode != 0:
        err = check.stderr.strip().splitlines()[-1:] or ["?"]
        return f"VMware's vSPC in {VENV} does not start ({err[0]}); rerun {FETCH_HINT}"
    return None


def fetch() -> int:
    """Create the peer's virtualenv and install the package into it (about a minute)."""
    PEERS.mkdir(parents=True, exist_ok=True)
    (PEERS / ".gitignore").write_text("*\n")
    if not python().exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    pip = [str(python()), "-m", "pip", "install", "--disable-pip-version-check", "-q", PACKAGE]
    print(" ".join(pip), flush=True)
    if subprocess.run(pip).returncode != 0:
        print(f"could not install {PACKAGE}: vspc_scale.py will skip the vmware mode")
        return 1
    reason = unavailable()
    print(reason or f"VMware's vSPC ready in {VENV}")
    return 0 if reason is None else 1


class VmwareVspc:
    """VMware's vSPC on a free loopback port, its serial logs and stderr in ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        conf = workdir / "vmware-vspc.conf"
        conf.write_text(
            "[DEFAULT]\n"
            "host = 127.0.0.1\n"
            f"port = {self.port}\n"
            f"uri = {EsxBehaviour.service_uri}\n"
            f"serial_log_dir = {workdir / 'serial'}\n"
            "debug = false\n"
        )
        self.stderr_path = workdir / "vmware-vspc.stderr"
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [str(python()), "-I", str(SERVE), "--config-file", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                cwd=workdir,
            )
        self.pid = self.proc.pid
        try:
            bl.wait_for(lambda: bl.tcp_listening(self.port), "VMware's vSPC", proc=self.proc)
        except BaseException:
            self.stop({})
            raise

    def stop(self, result: dict[str, Any]) -> None:
        bl.stop(self.proc)
        result["vmware_stderr_tail"] = bl.tail(self.stderr_path, 1500)


class _DropPeerOkWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "PEER-OK for" not in record.getMessage()


class VmwareProbes(Probes):
    """The probes of vspc mode, with a whole vMotion that VMware's answers do not break.

    BEGIN->GOAHEAD is timed exactly as in vspc mode (the simulated ESX's reader, and
    the kernel's receive timestamp). PEER-OK(seq + secret) is taken as PEER-OK.
    """

    def __init__(self, port: int, nursery: Any, vmotion_gap: float) -> None:
        super().__init__("vspc", port, nursery, vmotion_gap)
        self.peer_ok_with_secret = 0  # PEER-OKs that carried the secret too
        self.replaced = 0  # probe connections whose GOAHEAD broke the stream
        # the simulator logs each PEER-OK(seq + secret) as a violation: counted instead
        self._quiet = _DropPeerOkWarnings()
        logging.getLogger("vic.lab.esx_sim").addFilter(self._quiet)

    async def aclose(self) -> None:
        logging.getLogger("vic.lab.esx_sim").removeFilter(self._quiet)
        await super().aclose()

    async def _migrate(self, i: int, seq: bytes, record: bool) -> None:
        src = self.conns[i]
        seq = seq.replace(b"\xff", b"\xfe")  # its GOAHEAD would carry 0xFF unescaped
        try:
            secret = await src.vmotion_begin(seq)
        except SimError as e:
            key = type(e).__name__
            self.failures[key] = self.failures.get(key, 0) + 1
            # closed, or left inside a subnegotiation that the 0xFF never ended
            # (then ESX's 5 s give-up): either way the stream is lost
            await src.aclose()
            self.conns[i] = await self._replacement(i)
            return
        if record:
            self.lat.append(src.stats.begin_receipt_latencies[-1])
            self.lat_waiter.append(src.stats.begin_latencies[-1])
            if src.stats.begin_kernel_latencies:
                self.lat_kernel.append(src.stats.begin_kernel_latencies[-1])
            self.lat_at.append(time.time())
        self.conns[i] = await self._finish(src, seq, secret)

    async def _finish(self, src: EsxConnection, seq: bytes, secret: bytes) -> EsxConnection:
        """The rest of the vMotion: destination, PEER, PEER-OK, COMPLETE; source closes."""
        dest = await EsxConnection.open(
            self.nursery, "127.0.0.1", self.port, vm=src.vm, do_proxy=False
        )
        try:
            await dest.vmotion_peer(seq, secret)
        except ProtocolViolation:  # PEER-OK(seq + secret)
            self.peer_ok_with_secret += 1
        await dest.vmotion_complete(seq)
        await src.aclose()
        return dest

    async def _replacement(self, i: int) -> EsxConnection:
        self.replaced += 1
        vm = SimVM.random(self.rng, name=f"probe-{i}-{self.replaced}")
        return await EsxConnection.open(
            self.nursery, "127.0.0.1", self.port, vm=vm, kernel_timestamps=True
        )

    def peer_notes(self) -> dict[str, Any]:
        return {"peer_ok_with_secret": self.peer_ok_with_secret, "probes_replaced": self.replaced}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fetch", action="store_true", help=f"install {PACKAGE} into {VENV}")
    args = ap.parse_args()
    if args.fetch:
        return fetch()
    print(unavailable() or f"VMware's vSPC ready in {VENV}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
