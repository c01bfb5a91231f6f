"""`vic console list|attach` as a real subprocess against a real service."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import trio

from .test_console_support import KEY, UUID_RAW, make_config, short_dir, start

__all__ = ["short_dir"]

ROOT = Path(__file__).resolve().parents[2]


async def discard(data: bytes) -> None:
    """A VM input sink that drops what it gets."""


def vic(*args: str) -> list[str]:
    return [sys.executable, "-m", "vic.cli", "console", *args]


async def run(*args: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(60):
        return await trio.run_process(
            vic(*args), capture_stdout=True, capture_stderr=True, check=False, cwd=ROOT
        )


async def test_list_table_and_json(short_dir: Path, nursery: trio.Nursery) -> None:
    svc = await start(nursery, make_config(short_dir))
    con = svc.open(KEY, "web-1")
    link = con.connect(discard, "esx-07")
    await con.from_vm(b"hello")
    watcher = con.attach("ro", 0, "unix uid=0 pid=42")
    sock = str(short_dir / "c.sock")
    p = await run("list", "--socket", sock, "--json")
    assert p.returncode == 0, p.stderr
    (obj,) = json.loads(p.stdout)
    assert obj["display"] == "web-1" and obj["origin"] == "esx-07"
    assert obj["attached"] == [{"peer": "unix uid=0 pid=42", "mode": "ro"}]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", obj["last_seen"])
    p = await run("list", "--socket", sock)
    lines = p.stdout.decode().splitlines()
    assert lines[0].split() == [
        *("UUID", "LABEL", "DISPLAY", "CONNECTED", "ORIGIN", "LAST-SEEN", "BYTES", "CLIENTS"),
        "ATTACHED",
    ]
    row = [KEY.uuid, "serial0", "web-1", "yes", "esx-07", "now", "5", "1", "ro:unix/uid=0/pid=42"]
    assert lines[1].split() == row
    con.detach(watcher)
    con.disconnect(link)
    (obj,) = json.loads((await run("list", "--socket", sock, "--json")).stdout)
    assert obj["connected"] is False and obj["origin"] == "esx-07" and obj["attached"] == []
    row = (await run("list", "--socket", sock)).stdout.decode().splitlines()[1].split()
    assert row[3:6] == ["no", "esx-07", obj["last_seen"]] and row[-1] == "-"


async def test_attach_no_follow_prints_the_replay_exactly(
    short_dir: Path, nursery: trio.Nursery
) -> None:
    svc = await start(nursery, make_config(short_dir))
    con = svc.open(KEY, UUID_RAW)
    data = bytes(range(256)) * 8
    await con.from_vm(data)
    sock = str(short_dir / "c.sock")
    p = await run(
        "attach", "421d2a3b", "--socket", sock, "--replay", "1000", "--no-follow", "--mode", "ro"
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout == data[-1000:]
    p = await run("attach", "nope", "--socket", sock, "--no-follow")
    assert p.returncode == 1
    assert b"no console matches" in p.stderr
    p = await run("attach", "x", "--socket", sock, "--replay", "-5")
    assert p.returncode == 2


async def test_attach_follow_pipes_both_ways(short_dir: Path, nursery: trio.Nursery) -> None:
    svc = await start(nursery, make_config(short_dir))
    con = svc.open(KEY, "vm")
    await con.from_vm(b"old\n")
    got_input = bytearray()
    input_done = trio.Event()

    async def sink(data: bytes) -> None:
        got_input.extend(data)
        if b"\n" in got_input:
            input_done.set()

    con.connect(sink)
    proc = await trio.lowlevel.open_process(
        vic("attach", "vm", "--socket", str(short_dir / "c.sock"), "--replay", "4"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        out = bytearray()
        with trio.fail_after(60):
            while len(out) < 4:
                out += await proc.stdout.receive_some(1000)
            assert bytes(out) == b"old\n"
            await proc.stdin.send_all(b"uname -a\n")
            await input_done.wait()
            assert bytes(got_input) == b"uname -a\n"
            await con.from_vm(b"Linux\n")
            while len(out) < 10:
                out += await proc.stdout.receive_some(1000)
            assert bytes(out) == b"old\nLinux\n"
            # stdin EOF: input stops, output carries on
            await proc.stdin.aclose()
            await con.from_vm(b"more\n")
            while len(out) < 15:
                out += await proc.stdout.receive_some(1000)
            assert bytes(out) == b"old\nLinux\nmore\n"
    finally:
        proc.terminate()
        with trio.fail_after(30):
            await proc.wait()


async def test_attach_on_a_tty_is_raw_and_ctrl_bracket_detaches(
    short_dir: Path, nursery: trio.Nursery
) -> None:
    svc = await start(nursery, make_config(short_dir))
    con = svc.open(KEY, "vm")
    await con.from_vm(b"replayed")
    got_input = bytearray()
    three = trio.Event()

    async def sink(data: bytes) -> None:
        got_input.extend(data)
        if len(got_input) >= 3:
            three.set()

    con.connect(sink)
    master, slave = os.openpty()
    proc = await trio.lowlevel.open_process(
        vic("attach", "vm", "--socket", str(short_dir / "c.sock"), "--replay", "8"),
        stdin=slave,
        stdout=slave,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    os.close(slave)
    reader = trio.lowlevel.FdStream(master)
    try:
        out = bytearray()
        with trio.fail_after(60):
            while b"replayed" not in out:
                out += await reader.receive_some(1000)
            # raw mode: Ctrl-C is a byte for the VM, not a signal for the client
            await reader.send_all(b"a\x03b")
            await three.wait()
            assert bytes(got_input) == b"a\x03b"
            await reader.send_all(b"\x1d")
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await reader.aclose()


async def test_endpoint_from_the_vspc_config_file(short_dir: Path, nursery: trio.Nursery) -> None:
    svc = await start(nursery, make_config(short_dir))
    svc.open(KEY, "from-config")
    conf = short_dir / "vspc.toml"
    conf.write_text(f'[console]\nsocket = "{short_dir / "c.sock"}"\nlog-keep = 2\n')
    p = await run("list", "--config", str(conf), "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)[0]["display"] == "from-config"
    conf.write_text("[console]\nlog-keep = -1\n")
    p = await run("list", "--config", str(conf))
    assert p.returncode == 2
    assert p.stderr.decode().strip().endswith("console.log-keep: must be >= 0")


def test_table_shows_consoles_known_only_from_their_logs() -> None:
    from vspc.console_cli import format_table

    rows = format_table(
        [
            {
                "uuid": "a" * 32,
                "label": "com1",
                "display": "old",
                "connected": False,
                "bytes": 0,
                "clients": 0,
                "logged": 1234,
            },
            {
                "uuid": "b" * 32,
                "label": "com1",
                "display": "new",
                "connected": False,
                "bytes": 7,
                "clients": 1,
            },
        ]
    ).splitlines()
    # an older service's reply: no origin, last-seen or attached
    assert rows[1].split() == ["a" * 32, "com1", "old", "gone", "-", "-", "1234", "0", "-"]
    assert rows[2].split() == ["b" * 32, "com1", "new", "no", "-", "-", "7", "1", "-"]
