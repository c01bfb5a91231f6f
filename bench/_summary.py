"""The README's benchmark table from bench/results/*.json (markdown).

python bench/_summary.py [RESULTS_DIR]                    # print it
python bench/_summary.py [RESULTS_DIR] --write README.md  # put it between the markers

``--write`` replaces what stands between ``<!-- bench-table -->`` and
``<!-- /bench-table -->`` in the file, leaving the rest as it was.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def load(d: Path, name: str) -> dict[str, Any] | None:
    p = d / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None


def get(d: dict[str, Any] | None, *path: str) -> Any:
    for k in path:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def x(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}x"


def load_of(d: dict[str, Any] | None) -> str:
    steal = None
    for path in (
        ("environment", "cpu_steal"),
        ("cpu_steal",),
        ("summary", "cpu_steal_during_vmotions"),
    ):
        v = get(d, *path)
        if isinstance(v, float):
            steal = f", steal {v:.0%}"
            break
    for path in (
        ("environment", "loadavg_start"),
        ("environment", "loadavg"),
        ("host", "load"),
        ("loadavg_start",),
    ):
        v = get(d, *path)
        if isinstance(v, list) and v:
            end = get(d, "environment", "loadavg_end")
            to = f" -> {end[0]:.1f}" if isinstance(end, list) and end else ""
            return f"{v[0]:.1f}{to}{steal or ''}"
    return "?"


Row = tuple[str, str, str, str]


def rows(d: Path) -> list[Row]:
    """The table's rows, one bench's results after another."""
    out: list[Row] = []
    for part in (
        _vspc_throughput,
        _vspc_scale,
        _relay_throughput,
        _relay_latency,
        _relay_idle,
        _mesh_two_hop,
        _agent,
        _session_core,
        _session_exec,
        _docker_endpoint,
    ):
        out += part(d)
    return out


def _vspc_throughput(d: Path) -> list[Row]:
    out: list[Row] = []
    v = load(d, "vspc_throughput")
    for kind in ("text", "binary"):
        r = get(v, "summary", kind, "vspc_vs_socat")
        if r is not None:
            out.append(
                (
                    f"vSPC console throughput, {kind}",
                    f"{x(r)} socat",
                    ">= 1.0x" if kind == "text" else ">= 0.8x",
                    load_of(v),
                )
            )
    return out


def _vspc_scale(d: Path) -> list[Row]:
    out: list[Row] = []
    for name, label in (
        ("vspc_scale", "with console traffic"),
        ("vspc_scale_idle_9000", "idle consoles"),
    ):
        s = load(d, name)
        if s is None:
            continue
        sm = s["summary"]
        out.append(
            (
                f"vSPC {s.get('vms', 16000):,} VMs, {label}: RSS per VM",
                f"{sm['rss_kib_per_vm']:.2f} KiB",
                "<= 7 KiB",
                load_of(s),
            )
        )
        base = sm.get("p99_vs_direct")
        direct = (
            f"; a bare trio server, same run: p99 {sm['begin_goahead_p99_ms'] / base:.2f} ms"
            if base
            else ""
        )
        out.append(
            (
                f"vSPC {s.get('vms', 16000):,} VMs, {label}: BEGIN->GOAHEAD p50 / p99",
                f"{sm['begin_goahead_p50_ms']:.2f} / {sm['begin_goahead_p99_ms']:.2f} ms "
                f"({sm.get('vmotion_failures', 0)} failed{direct})",
                "p99 <= 2 ms",
                load_of(s),
            )
        )
        if sm.get("begin_goahead_kernel_p99_ms") is not None:
            bare = sm.get("direct_kernel_p99_ms")
            out.append(
                (
                    f"vSPC {s.get('vms', 16000):,} VMs, {label}: "
                    "BEGIN->GOAHEAD at the probing host's kernel",
                    f"{sm['begin_goahead_kernel_p50_ms']:.2f} / "
                    f"{sm['begin_goahead_kernel_p99_ms']:.2f} ms"
                    + (f" (bare trio server: p99 {bare:.2f} ms)" if bare else ""),
                    "p99 <= 2 ms and <= 2x the bare server's",
                    load_of(s),
                )
            )
        vmware = s.get("runs", {}).get("vmware")
        if vmware:
            out.append(_vmware_row(s, vmware, label))
    return out


def _vmware_row(s: dict[str, Any], vmware: dict[str, Any], label: str) -> Row:
    """VMware's vSPC under the same probes, in the same run."""
    w, sm = vmware["begin_goahead_ms"], s["summary"]
    return (
        f"VMware's vSPC, {s.get('vms', 16000):,} VMs, {label}: BEGIN->GOAHEAD p50 / p99, RSS",
        f"{w['p50']:.2f} / {w['p99']:.2f} ms ({w.get('failed', 0)} failed), "
        f"{vmware['rss_kib_per_vm']:.2f} KiB/VM; ours / VMware's: "
        f"p50 {sm.get('p50_vs_vmware', 0):.2f}x, p99 {sm.get('p99_vs_vmware', 0):.2f}x",
        "ours below VMware's",
        load_of(s),
    )


def size(t: dict[str, Any] | None) -> str:
    """A transfer's size: ``1 GiB``, ``256 MiB``."""
    n = get(t, "size_bytes") or 1 << 30
    return f"{n / (1 << 30):g} GiB" if n >= 1 << 30 else f"{n / (1 << 20):g} MiB"


def _relay_throughput(d: Path) -> list[Row]:
    out: list[Row] = []
    t = load(d, "relay_throughput")
    for kind in ("tcp", "unix"):
        r = get(t, "summary", kind, "ratios")
        if r:
            floor = ""
            if "floor_vs_socat_throughput" in r:
                fl = r["floor_vs_socat_throughput"], r["floor_vs_socat_cpu_per_gib"]
                floor = (
                    f" (splice floor, no Python: {x(fl[0])}, CPU {x(fl[1])}; "
                    f"pump/floor, of medians {x(r['pump_vs_socat_throughput'] / fl[0])} at "
                    f"{x(r['pump_vs_socat_cpu_per_gib'] / fl[1])} its CPU)"
                )
            pp = get(t, "summary", kind, "paired")
            if pp:  # the goal's figure: median of the per-round pump/floor ratios
                floor += (
                    f"; pump/floor, median of {pp['rounds']} paired rounds: "
                    f"{x(pp['pump_vs_floor_throughput'])} at "
                    f"{x(pp['pump_vs_floor_cpu_per_gib'])} its CPU"
                )
            out.append(
                (
                    f"relay one hop, {size(t)} {kind.upper()}",
                    f"{x(r['pump_vs_socat_throughput'])} socat, CPU/GiB "
                    f"{x(r['pump_vs_socat_cpu_per_gib'])}{floor}",
                    "pump >= 0.97x the splice floor at <= 1.05x its CPU (paired median)",
                    load_of(t),
                )
            )
    return out


def _relay_latency(d: Path) -> list[Row]:
    out: list[Row] = []
    lat = load(d, "relay_latency")
    for kind in ("tcp", "unix"):
        r = get(lat, "summary", kind, "ratios", "pump_vs_socat_added_p50")
        if r is not None:
            out.append(
                (
                    f"relay one hop, 64 B ping-pong {kind.upper()}: added p50",
                    f"{x(r)} socat's",
                    "<= 1.2x",
                    load_of(lat),
                )
            )
    return out


def _relay_idle(d: Path) -> list[Row]:
    out: list[Row] = []
    idle = load(d, "relay_idle")
    if idle:
        out.append(
            (
                f"relay, {idle['streams']:,} idle streams: memory per stream",
                f"{idle['relay']['per_stream_bytes_median'] / 1024:.1f} KiB "
                f"(socat: {idle['socat']['per_stream_pss_bytes_median'] / 1024:.0f} KiB PSS)",
                "<= 10 KiB",
                load_of(idle),
            )
        )
    return out


def _mesh_two_hop(d: Path) -> list[Row]:
    out: list[Row] = []
    m = load(d, "mesh_two_hop")
    if m:
        r = m.get("ratios", {})
        pr = m.get("paired_ratios", {})

        def both(key: str) -> str:
            if key not in pr:
                return x(r.get(key))
            return f"{x(pr[key])} (paired median; ratio of medians {x(r.get(key))})"

        out.append(
            (
                "mesh two hops, mTLS link",
                f"{both('tls_ours_over_socat_tls')} socat TLS",
                ">= 0.8x",
                load_of(m),
            )
        )
        out.append(
            (
                "mesh two hops, plaintext link",
                f"{both('plain_ours_over_socat_plain')} socat",
                ">= 1.0x",
                load_of(m),
            )
        )
        st = m.get("streams", {})
        if st:
            out.append(
                (
                    f"mesh, {st['streams']:,} streams on one link: fairness",
                    f"{st['fairness_slowest_over_fastest']:.2f} "
                    f"({st['aggregate_mb_s']:.0f} MB/s in all)",
                    ">= 0.5",
                    load_of(m),
                )
            )
        k = m.get("kill", {})
        if k:
            ratio = k["killed"]["mb_s"] / k["undisturbed"]["mb_s"]
            out.append(
                (
                    "mesh, link killed every second",
                    f"intact: {k['killed']['intact']}, {ratio:.0%} of undisturbed",
                    "zero loss, >= 50%",
                    load_of(m),
                )
            )
    return out


def _agent(d: Path) -> list[Row]:
    out: list[Row] = []
    a = load(d, "agent_console")
    for kind in ("hybrid", "pty"):
        r = get(a, "paths", kind, "agent_over_socat")
        if r is not None:
            out.append((f"agent console over {kind}", f"{x(r)} socat", "-", load_of(a)))
    e = load(d, "agent_exit_latency")
    if e:
        s = e["summary"]["agent"]
        out.append(
            (
                "agent: exit -> appliance sees status",
                f"p50 {s['p50_us'] / 1000:.1f} ms, p99 {s['p99_us'] / 1000:.1f} ms",
                "-",
                load_of(e),
            )
        )
    return out


def _session_core(d: Path) -> list[Row]:
    s = load(d, "session_core")
    if not s:
        return []
    m, h, i, w = s["median"], s["handshake"], s["idle"], load_of(s)
    return [
        (
            "session cores in one process: sealed records",
            f"{m['sealed']['cpu_s_per_gib']:.2f} CPU s/GiB ({m['sealed']['mb_s']:.0f} MB/s)",
            "-",
            w,
        ),
        (
            "session cores in one process: session layer + sealed",
            f"{m['session']['cpu_s_per_gib']:.2f} CPU s/GiB ({m['session']['mb_s']:.0f} MB/s)",
            "-",
            w,
        ),
        (
            "session handshake CPU (both ends)",
            f"p50 {h['p50_ms']:.2f} ms, p99 {h['p99_ms']:.2f} ms",
            "-",
            w,
        ),
        (
            f"idle session, both ends' cores, at {i['sessions']:,}",
            f"{i['bytes_per_session'] / 1024:.1f} KiB per session",
            "-",
            w,
        ),
    ]


def _session_exec(d: Path) -> list[Row]:
    s = load(d, "session_exec")
    if not s:
        return []
    t, k, i, w = s["throughput"], s["echo"], s["idle"], load_of(s)
    ses, raw, soc = t["session"], t["raw"], t["socat"]
    return [
        (
            f"session exec, cat {s['mib']} MiB: tether + relay + vSPC",
            f"{ses['MBps']:.1f} MB/s, {ses['cpu_s_per_gib_total']:.1f} CPU s/GiB"
            f" ({t['session_vs_raw']['throughput']:.3f}x raw console, "
            f"{t['session_vs_socat']['throughput']:.3f}x socat)",
            "-",
            w,
        ),
        (
            "raw console path / socat, same bytes",
            f"{raw['MBps']:.0f} MB/s, {raw['cpu_s_per_gib_total']:.2f} CPU s/GiB / "
            f"{soc['MBps']:.0f} MB/s, {soc['cpu_s_per_gib_total']:.2f} CPU s/GiB",
            "-",
            w,
        ),
        (
            "session keystroke echo p50 / p99",
            f"{k['session']['p50_ms']:.2f} / {k['session']['p99_ms']:.2f} ms "
            f"(raw console: {k['raw']['p50_ms']:.2f} / {k['raw']['p99_ms']:.2f} ms)",
            "-",
            w,
        ),
        (
            "session handshake, reconnect to live (timed at the tether end)",
            f"p50 {i['handshake']['p50_ms']:.2f} ms, p99 {i['handshake']['p99_ms']:.2f} ms",
            "-",
            w,
        ),
        (
            f"vSPC, {i['sessions']:,} idle sessions: RSS per session",
            f"{i['kib_per_session']:.1f} KiB",
            "-",
            w,
        ),
    ]


def _docker_endpoint(d: Path) -> list[Row]:
    s = load(d, "docker_endpoint")
    if not s:
        return []
    lt, ex, cc = s["logs_tail"], s["exec_cat"], s["concurrent_exec"]
    de, ce, raw = ex["docker_exec"], ex["console_exec"], ex["raw"]
    gib = s["history_bytes"] / (1 << 30)
    return [
        (
            f"docker logs --tail 100 with {gib:.1f} GiB of history",
            f"{lt['median_s']['docker_logs_tail'] * 1e3:.0f} ms (docker ps: "
            f"{lt['median_s']['docker_ps'] * 1e3:.0f} ms; the HTTP request alone: "
            f"{lt['median_s']['http_logs_tail'] * 1e3:.0f} ms)",
            "-",
            load_of(lt),
        ),
        (
            f"docker exec cat {s['mib']} MiB / vic console exec / raw console",
            f"{de['MBps']:.0f} / {ce['MBps']:.0f} / {raw['MBps']:.0f} MB/s; CPU s/GiB "
            f"{de['cpu_s_per_gib_total']:.1f} / {ce['cpu_s_per_gib_total']:.1f} / "
            f"{raw['cpu_s_per_gib_total']:.1f}",
            "-",
            load_of(ex),
        ),
        (
            f"{cc['n']} concurrent docker exec",
            f"all done in {cc['total_s']:.1f} s, {cc['failed']} failed",
            "-",
            load_of(cc),
        ),
    ]


START, END = "<!-- bench-table -->", "<!-- /bench-table -->"


def table(d: Path) -> str:
    """The markdown table, a line a row, ending in a newline."""
    lines = ["| measure | result | target | load (start -> end), CPU steal |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows(d)]
    return "\n".join(lines) + "\n"


def replace_table(text: str, new: str) -> str:
    """``text`` with what stands between the markers replaced by ``new``."""
    i = text.index(START) + len(START)
    j = text.index(END, i)
    return text[:i] + "\n" + new + text[j:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="?", type=Path, default=RESULTS)
    ap.add_argument("--write", type=Path, help="a file with the markers (README.md)")
    args = ap.parse_args()
    new = table(args.results)
    if args.write is None:
        print(new, end="")
        return
    args.write.write_text(replace_table(args.write.read_text(), new))
    print(f"wrote the table into {args.write}")


if __name__ == "__main__":
    main()
