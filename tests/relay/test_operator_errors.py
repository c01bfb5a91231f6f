"""`vic relay` as a real process: every mistake an operator can make in relay.toml
is one stderr line naming the TOML key, exit status 2, found by ``--check`` where
it can be found without binding, and by the daemon at start where it cannot."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from tests.support.vic_cli import assert_one_line, run_vic

from .pki_helpers import Pki

QUIET = 'log-level = "warning"\n'
MINIMAL = QUIET + '[egress.default]\nkind = "tcp"\nhost = "127.0.0.1"\nport = 7000\n'
NO_METRICS = "[metrics]\nenabled = false\n"
UNRESOLVABLE = "no-such-host.invalid"
NOT_LOCAL = "192.0.2.1"  # TEST-NET-1: never an address of this machine


def vic_relay(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_vic("relay", config, *args)


def _peer(tmp: Path, address: str) -> str:
    for name in ("c.pem", "k.pem", "ca.pem"):
        (tmp / name).write_text("x")
    return (
        f'[peer]\ntls = {{ cert = "{tmp / "c.pem"}", key = "{tmp / "k.pem"}", '
        f'ca = "{tmp / "ca.pem"}" }}\n'
        f'[[peer.listen]]\naddress = "{address}"\nallowed-peers = ["vic://host/a"]\n'
    )


CHECK_CASES = [
    ("metrics-port", MINIMAL + "[metrics]\nport = 70000\n", "metrics.port"),
    ("metrics-host", MINIMAL + f'[metrics]\nhost = "{UNRESOLVABLE}"\n', "metrics.host"),
    (
        "tcp-host-foreign",
        MINIMAL + f'[[tcp]]\nname = "a"\nvm = "v"\nport = 0\nhost = "{NOT_LOCAL}"\n',
        "tcp[0].host",
    ),
    (
        "label-300",
        MINIMAL + f'[[tcp]]\nname = "a"\nvm = "v"\nport = 0\nlabel = "{"l" * 300}"\n',
        "tcp[0].label",
    ),
    (
        "vm-traversal",
        MINIMAL + '[[pipe]]\nname = "p"\nvm = "../../x"\npath = "/tmp/p"\n',
        "pipe[0].vm",
    ),
    (
        "cid-name-60000",
        MINIMAL + f'[[vsock]]\nname = "g"\nport = 5\ncids = {{ "3" = "{"1" * 60000}" }}\n',
        "vsock[0].cids.3",
    ),
    (
        "cid-60000-digits",
        MINIMAL + f'[[vsock]]\nname = "g"\nport = 5\ncids = {{ "{"7" * 60000}" = "vm" }}\n',
        "vsock[0].cids.777777777777...",
    ),
    ("host-name", f'host = "{"h" * 300}"\n' + MINIMAL, "host"),
]


@pytest.mark.parametrize(
    ("text", "key"), [c[1:] for c in CHECK_CASES], ids=[c[0] for c in CHECK_CASES]
)
def test_check_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    cfg = tmp_path / "relay.toml"
    cfg.write_text(text)
    assert_one_line(vic_relay(cfg, "--check"), key)


def test_check_finds_a_foreign_peer_listen_host(tmp_path: Path) -> None:
    cfg = tmp_path / "relay.toml"
    cfg.write_text(MINIMAL + _peer(tmp_path, f"tcp:{NOT_LOCAL}:7443"))
    line = assert_one_line(vic_relay(cfg, "--check"), "peer.listen[0].address")
    assert NOT_LOCAL in line


def _busy() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


@pytest.mark.parametrize("which", ["tcp", "vspc", "metrics", "peer"])
def test_port_in_use_at_start_names_the_key(tmp_path: Path, which: str) -> None:
    cfg = tmp_path / "relay.toml"
    with _busy() as busy:
        port = busy.getsockname()[1]
        text = {
            "tcp": MINIMAL + NO_METRICS + f'[[tcp]]\nname = "com1"\nvm = "v"\nport = {port}\n',
            "vspc": MINIMAL + NO_METRICS + f'[[vspc]]\nname = "v"\nport = {port}\n',
            "metrics": MINIMAL + f'[metrics]\nhost = "127.0.0.1"\nport = {port}\n',
            "peer": MINIMAL + NO_METRICS + f"[peer]\n[[peer.listen]]\naddress = "
            f'"tcp:127.0.0.1:{port}"\ntls = false\n',
        }[which]
        cfg.write_text(text)
        assert vic_relay(cfg, "--check").returncode == 0  # --check never binds the port
        r = vic_relay(cfg)
    key = {
        "tcp": "tcp[0].port",
        "vspc": "vspc[0].port",
        "metrics": "metrics.port",
        "peer": "peer.listen[0].address",
    }[which]
    line = assert_one_line(r, key)
    assert "in use" in line


def test_unresolvable_listener_host_at_start_names_the_host(tmp_path: Path) -> None:
    cfg = tmp_path / "relay.toml"
    cfg.write_text(
        MINIMAL + NO_METRICS + f'[[vspc]]\nname = "v"\nport = 0\nhost = "{UNRESOLVABLE}"\n'
    )
    line = assert_one_line(vic_relay(cfg), "vspc[0].host")
    assert "cannot resolve" in line


def test_admin_socket_that_cannot_be_created_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    cfg = tmp_path / "relay.toml"
    cfg.write_text(MINIMAL + NO_METRICS + f'[peer]\nadmin-socket = "{tmp_path / "file" / "s"}"\n')
    assert_one_line(vic_relay(cfg), "peer.admin-socket")


def test_expired_own_certificate_is_a_warning_in_check(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "ca")
    files = pki.expired("host", "esx-a")
    cfg = tmp_path / "relay.toml"
    cfg.write_text(
        MINIMAL + f'[peer]\ntls = {{ cert = "{files.cert}", key = "{files.key}", '
        f'ca = "{files.ca}" }}\n'
    )
    r = vic_relay(cfg, "--check")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "warning: peer.tls.cert:" in lines[0] and "expired" in lines[0]
    soon = pki.issue("host", "esx-b", days=3)
    cfg.write_text(
        MINIMAL + f'[peer]\ntls = {{ cert = "{soon.cert}", key = "{soon.key}", '
        f'ca = "{soon.ca}" }}\n'
    )
    r = vic_relay(cfg, "--check")
    assert r.returncode == 0 and "expires on" in r.stderr and "in 2 days" in r.stderr, r.stderr


def test_expired_own_certificate_is_a_warning_at_start(tmp_path: Path) -> None:
    """The daemon logs the warning before it opens anything (here it then stops at a
    port in use, so the test needs no running daemon)."""
    files = Pki(tmp_path / "ca").expired("host", "esx-a")
    cfg = tmp_path / "relay.toml"
    with _busy() as busy:
        cfg.write_text(
            MINIMAL
            + NO_METRICS
            + f'[[tcp]]\nname = "com1"\nvm = "v"\nport = {busy.getsockname()[1]}\n'
            + f'[peer]\ntls = {{ cert = "{files.cert}", key = "{files.key}", '
            f'ca = "{files.ca}" }}\n'
        )
        r = vic_relay(cfg)
    assert r.returncode == 2
    first, last = r.stderr.splitlines()
    assert "WARNING" in first and "peer.tls.cert:" in first and "expired" in first
    assert "config error: tcp[0].port:" in last


def test_vsock_port_in_use_at_start_names_the_key(tmp_path: Path) -> None:
    try:
        busy = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        busy.bind((socket.VMADDR_CID_ANY, 0xFFFFFFFF))  # any free port
    except OSError as e:
        pytest.skip(f"no AF_VSOCK here: {e}")
    with busy:
        busy.listen()
        port = busy.getsockname()[1]
        cfg = tmp_path / "relay.toml"
        cfg.write_text(MINIMAL + NO_METRICS + f'[[vsock]]\nname = "guests"\nport = {port}\n')
        r = vic_relay(cfg)
    assert "in use" in assert_one_line(r, "vsock[0].port")


@pytest.mark.parametrize("kind", ["pipe", "hvsock"])
def test_socket_path_that_cannot_be_bound_names_the_key(tmp_path: Path, kind: str) -> None:
    (tmp_path / "file").write_text("")
    where = tmp_path / "file" / "s"
    cfg = tmp_path / "relay.toml"
    cfg.write_text(
        MINIMAL
        + NO_METRICS
        + {
            "pipe": f'[[pipe]]\nname = "p"\nvm = "v"\npath = "{where}"\n',
            "hvsock": f'[[hvsock]]\nname = "h"\nvm = "v"\nuds-path = "{where}"\nport = 52\n',
        }[kind]
    )
    assert_one_line(vic_relay(cfg), {"pipe": "pipe[0].path", "hvsock": "hvsock[0].uds-path"}[kind])


@pytest.mark.parametrize("check", [True, False])
def test_unloadable_peer_certificate_names_peer_tls(tmp_path: Path, check: bool) -> None:
    cfg = tmp_path / "relay.toml"
    cfg.write_text(MINIMAL + NO_METRICS + _peer(tmp_path, "tcp:127.0.0.1:0"))  # files hold "x"
    line = assert_one_line(vic_relay(cfg, *(["--check"] if check else [])), "peer.tls")
    assert "cannot load" in line


@pytest.mark.parametrize("leftover", ["live socket", "regular file"])
def test_pipe_path_taken_names_the_key_and_is_kept(tmp_path: Path, leftover: str) -> None:
    """Another listener's live socket, or a file: exit 2 naming the key, nothing deleted."""
    where = tmp_path / "p.sock"
    cfg = tmp_path / "relay.toml"
    cfg.write_text(MINIMAL + NO_METRICS + f'[[pipe]]\nname = "p"\nvm = "v"\npath = "{where}"\n')
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        if leftover == "live socket":
            other.bind(str(where))
            other.listen()
        else:
            where.write_text("precious")
        line = assert_one_line(vic_relay(cfg), "pipe[0].path")
        if leftover == "live socket":
            assert "in use" in line
            other.settimeout(5)
            other.accept()[0].close()  # the probe reached the live listener: it is still there
        else:
            assert "not a socket" in line and where.read_text() == "precious"
