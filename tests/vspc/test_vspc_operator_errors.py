"""`vic vspc` as a real process: a mistake in vspc.toml is one stderr line naming the
TOML key and exit status 2, from ``--check`` where it can be found without binding
and from the daemon at start where it cannot (a port in use)."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from tests.relay.pki_helpers import Pki
from tests.support.vic_cli import assert_one_line, run_vic

UNRESOLVABLE = "no-such-host.invalid"


def base(
    tmp: Path, *, listen: str = "", endpoint: str = "", console: str = "", metrics: str = "port = 0"
) -> str:
    return f"""log-level = "warning"
[listen]
host = "127.0.0.1"
port = 0
{listen}
[endpoint]
{endpoint}
[console]
socket = "{tmp / "console.sock"}"
{console or f'log-dir = "{tmp / "logs"}"'}
[metrics]
host = "127.0.0.1"
{metrics}
"""


def vic_vspc(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_vic("vspc", config, *args)


def _cases(tmp: Path) -> dict[str, tuple[str, str]]:
    (tmp / "a-file").write_text("")
    return {
        "metrics-port": (base(tmp, metrics="port = 70000"), "metrics.port"),
        "log-dir-file": (base(tmp, console=f'log-dir = "{tmp / "a-file"}"'), "console.log-dir"),
        "log-dir-uncreatable": (
            base(tmp, console=f'log-dir = "{tmp / "a-file" / "logs"}"'),
            "console.log-dir",
        ),
        "listen-host": (
            base(tmp).replace(
                'host = "127.0.0.1"\nport = 0\n',
                f'host = "{UNRESOLVABLE}"\nport = 0\nallowed-sources = ["10.0.0.0/8"]\n',
                1,
            ),
            "listen.host",
        ),
        "endpoint-host": (
            base(tmp, endpoint=f'host = "{UNRESOLVABLE}"\nport = 0\ninsecure = true'),
            "endpoint.host",
        ),
    }


CASES = ["metrics-port", "log-dir-file", "log-dir-uncreatable", "listen-host", "endpoint-host"]


@pytest.mark.parametrize("case", CASES)
def test_check_names_the_key(tmp_path: Path, case: str) -> None:
    text, key = _cases(tmp_path)[case]
    cfg = tmp_path / "vspc.toml"
    cfg.write_text(text)
    assert_one_line(vic_vspc(cfg, "--check"), key)


@pytest.mark.parametrize("case", ["listen-host", "endpoint-host"])
def test_unresolvable_host_at_start_names_the_host(tmp_path: Path, case: str) -> None:
    text, key = _cases(tmp_path)[case]
    cfg = tmp_path / "vspc.toml"
    cfg.write_text(text)
    line = assert_one_line(vic_vspc(cfg), key)
    assert "cannot resolve" in line and "Traceback" not in line


@pytest.mark.parametrize("which", ["endpoint", "link", "metrics"])
def test_port_in_use_at_start_names_the_key(tmp_path: Path, which: str) -> None:
    cfg = tmp_path / "vspc.toml"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        text = {
            "endpoint": base(tmp_path, endpoint=f'host = "127.0.0.1"\nport = {port}'),
            "link": base(
                tmp_path,
                endpoint=f'[[endpoint.link]]\naddress = "tcp:127.0.0.1:{port}"\ntls = false',
            ),
            "metrics": base(tmp_path, metrics=f"port = {port}"),
        }[which]
        cfg.write_text(text)
        assert vic_vspc(cfg, "--check").returncode == 0  # --check never binds the port
        r = vic_vspc(cfg)
    key = {
        "endpoint": "endpoint.port",
        "link": "endpoint.link[0].address",
        "metrics": "metrics.port",
    }[which]
    assert "in use" in assert_one_line(r, key)


def test_expired_own_certificate_is_a_warning_in_check(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "ca")
    files = pki.expired("appliance", "vch")
    cfg = tmp_path / "vspc.toml"
    cfg.write_text(
        base(tmp_path, listen=f'[listen.tls]\ncert = "{files.cert}"\nkey = "{files.key}"')
    )
    r = vic_vspc(cfg, "--check")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "warning: listen.tls.cert:" in lines[0] and "expired" in lines[0]


def test_console_socket_in_a_file_is_found_by_check(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    cfg = tmp_path / "vspc.toml"
    cfg.write_text(
        base(tmp_path).replace(
            f'socket = "{tmp_path / "console.sock"}"',
            f'socket = "{tmp_path / "a-file" / "c.sock"}"',
        )
    )
    assert_one_line(vic_vspc(cfg, "--check"), "console.socket")


def test_endpoint_unix_socket_that_cannot_be_bound_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    cfg = tmp_path / "vspc.toml"
    cfg.write_text(base(tmp_path, endpoint=f'unix = "{tmp_path / "a-file" / "e.sock"}"'))
    assert_one_line(vic_vspc(cfg), "endpoint.unix")


@pytest.mark.parametrize("table", ["listen", "endpoint"])
@pytest.mark.parametrize("check", [True, False])
def test_unloadable_certificate_names_its_table(tmp_path: Path, table: str, check: bool) -> None:
    for name in ("c.pem", "k.pem"):
        (tmp_path / name).write_text("not PEM")
    tls = f'[{table}.tls]\ncert = "{tmp_path / "c.pem"}"\nkey = "{tmp_path / "k.pem"}"'
    cfg = tmp_path / "vspc.toml"
    cfg.write_text(
        base(tmp_path, listen=tls)
        if table == "listen"
        else base(tmp_path, endpoint=f'host = "127.0.0.1"\nport = 0\n{tls}')
    )
    line = assert_one_line(vic_vspc(cfg, *(["--check"] if check else [])), f"{table}.tls")
    assert "cannot load" in line


@pytest.mark.parametrize("which", ["endpoint", "link"])
def test_unix_path_holding_a_file_is_refused_intact(tmp_path: Path, which: str) -> None:
    """A regular file where a Unix socket goes: exit 2 naming the key, the file kept."""
    there = tmp_path / "e.sock"
    there.write_text("precious")
    cfg = tmp_path / "vspc.toml"
    cfg.write_text(
        base(
            tmp_path,
            endpoint={
                "endpoint": f'unix = "{there}"',
                "link": f'[[endpoint.link]]\naddress = "unix:{there}"\ntls = false',
            }[which],
        )
    )
    key = {"endpoint": "endpoint.unix", "link": "endpoint.link[0].address"}[which]
    assert "not a socket" in assert_one_line(vic_vspc(cfg), key)
    assert there.read_text() == "precious"
