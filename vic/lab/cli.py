"""`vic lab`: the local lab on an embedded default (no vSphere needed).

Starts the appliance (vSPC, endpoint, consoles) in this process with a
throw-away config, runs each scenario against it, prints what every console
received and whether every byte arrived once and in order. Exit 0 when all do.
``vic lab up`` / ``vic lab down`` leave the lab's topology running, then stop it
(:mod:`vic.lab.lab_up`).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from vic.lab import report
from vic.lab.appliance_config import lab_config

if TYPE_CHECKING:
    from vspc.endpoint import Endpoint
    from vspc.service import VspcService

SCENARIOS = ("vspc", "relay", "mesh", "agent", "sessions", "docker")  # sessions: ~5 s more
OPTIONAL = ("realvm",)  # not in "all": boots a VM under QEMU (about a minute)
SCENARIO_HELP = {
    "vspc": "simulated ESX hosts speak Telnet and extension 232 to the vSPC, with vMotions",
    "relay": "VMs on every ingress kind through relays to the appliance's endpoint",
    "mesh": "three relays over TLS peer links; a link cut, then the appliance moves hosts",
    "agent": "real vic agent processes: guestinfo and their consoles (one VM in a netns)",
    "sessions": "a tethered VM: vic console exec/logs across a relay restart and a vMotion",
    "docker": "the docker client against the Docker endpoint (skipped without one)",
    "realvm": "QEMU boots a VM with vic agent as PID 1 (skipped where it cannot boot)",
}
EPILOG = "scenarios:\n" + "".join(f"  {k:<9} {v}\n" for k, v in SCENARIO_HELP.items())
EPILOG += """
ports:
  Every TCP listener (vSPC, endpoint, metrics, relays, simulated hosts) binds 127.0.0.1
  with port 0: the kernel picks a free ephemeral port, so labs and tests run side by side;
  the first lines printed name the appliance's. Unix sockets go in the workdir. The agent
  scenario puts one VM in two network namespaces of its own joined by a veth pair
  (10.213.91.0/24, dnsmasq); --no-netns skips that VM, and so does running without root,
  ip, dnsmasq or busybox.

output:
  Every line fits 100 columns: long cells wrap. Exit status 0 when every check passed."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "action",
        nargs="?",
        choices=("up", "down"),
        help="up: start the lab and leave it running; down: stop it (default: one-shot check)",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        help="up/down: the running lab's directory (default $XDG_RUNTIME_DIR/vic-lab, "
        "else .lab in the repository)",
    )
    parser.add_argument("--workdir", type=Path, help="where logs and sockets go (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the workdir afterwards")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--lines", type=int, default=150, help="console lines per VM")
    parser.add_argument(
        "--scenario",
        choices=(*SCENARIOS, *OPTIONAL, "all"),
        default="all",
        metavar="NAME",
        help="one scenario (below), or all (the default): every one but realvm",
    )
    parser.add_argument(
        "--no-netns",
        action="store_true",
        help="agent scenario: no VM in a network namespace of its own",
    )
    parser.add_argument("-v", "--verbose", action="store_true")


def run(args: argparse.Namespace) -> int:
    if args.action is not None:
        from vic.lab import lab_up

        return lab_up.run(args)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vic-lab-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        ok = trio.run(main, workdir, args)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"lab files kept in {workdir}")
    return 0 if ok else 1


async def main(workdir: Path, args: argparse.Namespace) -> bool:
    from vic.lab import vspc_scenario
    from vspc.endpoint import Endpoint
    from vspc.service import VspcService

    selected = SCENARIOS if args.scenario == "all" else (args.scenario,)
    all_ok = True
    async with trio.open_nursery() as nursery:
        service: VspcService = await nursery.start(VspcService(lab_config(workdir)).run)
        endpoint: Endpoint = await nursery.start(Endpoint(service).run)
        _print_appliance(service, endpoint, workdir)
        if "vspc" in selected:
            checks = await vspc_scenario.run(service, seed=args.seed, lines=args.lines)
            print(report.render("ESX hosts -> vSPC (Telnet + VMware extension 232)", checks))
            all_ok &= all(c.ok for c in checks)
        if "relay" in selected:
            from vic.lab import relay_scenario

            checks = await relay_scenario.run(
                service, endpoint, workdir, seed=args.seed, lines=args.lines
            )
            print(report.render("VMs -> relays -> appliance endpoint (every ingress kind)", checks))
            all_ok &= all(c.ok for c in checks if c.sent or c.typed)
        if "mesh" in selected:
            from vic.lab import mesh_scenario

            checks = await mesh_scenario.run(
                service, endpoint, workdir, seed=args.seed, lines=args.lines
            )
            print(report.render("Relay mesh: a link cut, then the appliance moves hosts", checks))
            all_ok &= all(c.ok for c in checks)
        if "agent" in selected:
            all_ok &= await _agent(service, endpoint, workdir, args)
        if "sessions" in selected:
            all_ok &= await _sessions(service, endpoint, workdir)
        if "docker" in selected:
            all_ok &= await _docker(service, workdir)
        if "realvm" in selected:
            all_ok &= await _realvm(service, workdir)
        _print_metrics(service)
        nursery.cancel_scope.cancel()
    print("LAB RESULT:", "all consoles byte-exact" if all_ok else "FAILED", file=sys.stdout)
    return all_ok


async def _agent(
    service: VspcService, endpoint: Endpoint, workdir: Path, args: argparse.Namespace
) -> bool:
    from vic.lab import agent_scenario

    agents = await agent_scenario.run(
        service, endpoint, workdir, seed=args.seed, lines=args.lines, netns=not args.no_netns
    )
    title = "VMs running the guest agent (guestinfo: file store; console: relay esx-c)"
    print(agent_scenario.render(title, agents))
    return all(c.ok for c in agents if not c.skipped)


async def _sessions(service: VspcService, endpoint: Endpoint, workdir: Path) -> bool:
    from vic.lab import sessions_scenario

    checks = await sessions_scenario.run(service, workdir, endpoint)
    title = "A tethered VM: vic console exec / logs, an exec across a relay restart, a vMotion"
    print(sessions_scenario.render(title, checks))
    return all(c.ok for c in checks)


async def _docker(service: VspcService, workdir: Path) -> bool:
    from vic.lab import docker_scenario, sessions_scenario

    title = "The docker client against the appliance's Docker endpoint (tethered VMs)"
    why = docker_scenario.unavailable()
    if why:
        _print_skipped(title, why)
        return True
    checks = await docker_scenario.run(service, workdir)
    print(sessions_scenario.render(title, checks))
    return all(c.ok for c in checks)


async def _realvm(service: VspcService, workdir: Path) -> bool:
    from vic.lab import realvm

    why = realvm.unavailable()
    if why:
        _print_skipped("A real VM (QEMU)", why)
        return True
    from vic.lab import realvm_checks, realvm_scenario

    checks = await realvm_checks.run(service, workdir)
    title = "A real VM: QEMU, vic agent as PID 1, its UART -> relay esx-qemu -> appliance"
    print(realvm_checks.render(title, realvm_scenario.VM, checks))
    return all(c.ok for c in checks)


def _print_skipped(title: str, why: str) -> None:
    lines = report.paragraph(f"== {title}", indent=3)
    lines += report.paragraph(f"   skipped: {why}", indent=12)
    print("\n".join(lines))


def _print_metrics(service: object) -> None:
    reg = service.metrics.registry  # type: ignore[attr-defined]
    parts = []
    for name, labels in [
        ("vspc_vmotions_total", {"outcome": "complete"}),
        ("vspc_vmotions_total", {"outcome": "abort"}),
        ("vspc_vmotion_begin_to_goahead_seconds_count", {}),
        ("vspc_bytes_total", {"direction": "vm_to_appliance"}),
        ("vspc_bytes_total", {"direction": "appliance_to_vm"}),
    ]:
        v = reg.get_sample_value(name, labels)
        if v is not None:
            tags = ",".join(f'{k}="{val}"' for k, val in labels.items())
            value = f"{v:.0f}" if v.is_integer() else f"{v:g}"
            parts.append(f"{name}{{{tags}}} {value}" if tags else f"{name} {value}")
    print("metrics: " + "\n         ".join(parts))


def _print_appliance(service: VspcService, endpoint: Endpoint, workdir: Path) -> None:
    head = "appliance: "
    for i, line in enumerate(
        (
            f"vSPC (ESX network serial ports) on 127.0.0.1:{service.esx_port}",
            f"endpoint (relays) on 127.0.0.1:{endpoint.tcp_port} and {workdir / 'endpoint.sock'}",
            f"metrics on http://127.0.0.1:{service.metrics_port}/metrics",
        )
    ):
        text = (head if i == 0 else " " * len(head)) + line
        print("\n".join(report.paragraph(text, indent=len(head))))
