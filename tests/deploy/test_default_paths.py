"""Default config paths: ``vic relay|vspc|agent`` read ``/etc/vic/<daemon>.toml``
(``$VIC_CONFIG_DIR`` here) without ``--config``; ``vic vspc`` with no file at all
runs on its built-in defaults (loopback listeners, sockets and logs in the
directories systemd or the user's session provide)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from common.ops import config as cfgmod
from tests.support.vic_cli import REPO, VIC
from vic.config_examples import EXAMPLES
from vspc.defaults import builtin_config, load_vspc_config

DIRS = ("VIC_CONFIG_DIR", "RUNTIME_DIRECTORY", "LOGS_DIRECTORY", "STATE_DIRECTORY")


def vic_env(tmp: Path) -> dict[str, str]:
    env = {**os.environ, "VIC_CONFIG_DIR": str(tmp / "etc")}
    env.update(RUNTIME_DIRECTORY=str(tmp / "run"), LOGS_DIRECTORY=str(tmp / "log"))
    env["STATE_DIRECTORY"] = str(tmp / "lib")
    env.pop("NOTIFY_SOCKET", None)
    return env


def vic(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = [str(VIC)] if VIC.exists() else [sys.executable, "-m", "vic.cli"]
    return subprocess.run(
        [*exe, *args], capture_output=True, text=True, timeout=60, cwd=REPO, env=vic_env(tmp)
    )


def test_default_config_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("VIC_CONFIG_DIR", raising=False)
    assert cfgmod.default_config_path("relay") == Path("/etc/vic/relay.toml")
    assert cfgmod.config_path(None, "agent") == Path("/etc/vic/agent.toml")
    assert cfgmod.config_path("x.toml", "agent") == Path("x.toml")
    monkeypatch.setenv("VIC_CONFIG_DIR", str(tmp_path))
    assert cfgmod.default_config_path("vspc") == tmp_path / "vspc.toml"


def test_state_directories(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in (*DIRS, "XDG_RUNTIME_DIR", "XDG_STATE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert (cfgmod.runtime_dir(), cfgmod.logs_dir(), cfgmod.state_dir()) == (
        Path("/run/vic"),
        Path("/var/log/vic"),
        Path("/var/lib/vic"),
    )
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cfgmod.runtime_dir() == Path("/tmp/vic-1000")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert cfgmod.runtime_dir() == Path("/run/user/1000/vic")
    assert (cfgmod.logs_dir(), cfgmod.state_dir()) == (tmp_path / "vic/log", tmp_path / "vic")
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/vic:/run/other")  # systemd's, first wins
    monkeypatch.setenv("LOGS_DIRECTORY", "/var/log/vic")
    assert (cfgmod.runtime_dir(), cfgmod.logs_dir()) == (Path("/run/vic"), Path("/var/log/vic"))


def test_builtin_vspc_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var, env in vic_env(tmp_path).items():
        if var in DIRS:
            monkeypatch.setenv(var, env)
    path, cfg = load_vspc_config(None)
    assert path is None and cfg == builtin_config()
    assert (cfg.listen.host, cfg.endpoint.host, cfg.metrics.host) == ("127.0.0.1",) * 3
    assert cfg.console.socket == tmp_path / "run/console.sock"
    assert cfg.console.log_dir == tmp_path / "log/consoles"
    assert cfg.sessions.guestinfo_dir == tmp_path / "lib/guestinfo"
    (tmp_path / "etc").mkdir()
    bad = tmp_path / "etc/vspc.toml/console.sock"  # its directory is a file: refused
    (tmp_path / "etc/vspc.toml").write_text(f'[console]\nsocket = "{bad}"\n')
    with pytest.raises(cfgmod.ConfigError, match=r"console\.socket"):  # the file wins, checked
        load_vspc_config(None)


def test_relay_reads_the_default_file(tmp_path: Path) -> None:
    r = vic(tmp_path, "relay", "--check")
    assert r.returncode == 2
    assert r.stderr.strip().endswith(f"config file not found: {tmp_path}/etc/relay.toml")
    (tmp_path / "etc").mkdir()
    text = EXAMPLES["relay"][1].split("[peer]")[0].replace('"peer"', '"tcp"')
    text = text.replace('route = "appliance"', 'host = "127.0.0.1"\nport = 13371')
    (tmp_path / "etc/relay.toml").write_text(text)
    r = vic(tmp_path, "relay", "--check")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{tmp_path}/etc/relay.toml: ok")


def test_agent_reads_the_default_file(tmp_path: Path) -> None:
    r = vic(tmp_path, "agent")
    assert r.returncode == 2
    assert f"config file not found: {tmp_path}/etc/agent.toml" in r.stderr


def test_vspc_check_without_any_file(tmp_path: Path) -> None:
    r = vic(tmp_path, "vspc", "--check")
    assert (r.returncode, r.stdout) == (0, "built-in defaults: ok\n"), r.stderr


NOBODY = 65534
UNPRIVILEGED = [
    "setpriv",
    f"--reuid={NOBODY}",
    f"--regid={NOBODY}",
    "--clear-groups",
    "--no-new-privs",
    "--inh-caps=-all",
    "--bounding-set=-all",
]


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A tmp dir another user may enter (pytest's own are root's, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="vic-deploy-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.netns
@pytest.mark.skipif(
    os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("setpriv")),
    reason="needs root, unshare and setpriv",
)
async def test_vspc_starts_without_any_config(open_tmp: Path) -> None:
    """As the systemd unit runs it: another user, no capabilities, no new privileges,
    writing only in its runtime, logs and state directories; in its own network
    namespace (the built-in ports are fixed). READY=1 on the loopback defaults, the
    console socket where RuntimeDirectory= says, serving ``vic console list``."""
    tmp = open_tmp
    for sub in ("run", "log", "lib"):  # what systemd creates and hands over
        (tmp / sub).mkdir()
        os.chown(tmp / sub, NOBODY, NOBODY)
    notify = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await notify.bind(str(tmp / "notify"))
    (tmp / "notify").chmod(0o777)
    env = {**vic_env(tmp), "NOTIFY_SOCKET": str(tmp / "notify")}
    exe = [str(VIC)] if VIC.exists() else [sys.executable, "-m", "vic.cli"]
    shell = 'ip link set lo up && exec "$@"'
    argv = ["unshare", "--net", "--", "sh", "-c", shell, "sh", *UNPRIVILEGED, *exe, "vspc"]
    with (tmp / "out.log").open("wb") as out:
        proc = await trio.lowlevel.open_process(argv, env=env, stdout=out, stderr=out, cwd=REPO)
    try:
        with trio.fail_after(30):
            msg = (await notify.recv(4096)).decode()
        assert "READY=1" in msg, (tmp / "out.log").read_text()
        assert "STATUS=esx=127.0.0.1:13370 metrics=9470" in msg
        sock = tmp / "run/console.sock"
        assert sock.is_socket() and sock.stat().st_uid == NOBODY
        assert (tmp / "log/consoles").is_dir()
        r = vic(tmp, "console", "list", "--socket", str(sock), "--json")
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "[]"
    finally:
        proc.terminate()
        with trio.fail_after(30):
            await proc.wait()
        notify.close()
    assert proc.returncode == 0, (tmp / "out.log").read_text()
