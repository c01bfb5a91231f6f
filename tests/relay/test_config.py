"""relay.toml validation: the example loads; every mistake names its key; the CLI
turns a bad file into exit status 2 and one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from common.ops.config import ConfigError
from relay.config import EXAMPLE, RelayConfig, TcpListener, loads_config

MINIMAL = '[egress.default]\nkind = "tcp"\nhost = "127.0.0.1"\nport = 7000\n'


def test_example_loads() -> None:
    cfg = loads_config(EXAMPLE)
    assert isinstance(cfg, RelayConfig)
    assert set(cfg.listeners()) == {
        "vspc",
        "vm1-com1",
        "vm2-com1",
        "vm3-pipe",
        "vm4-tty",
        "guests",
        "fc-vm7",
    }
    assert cfg.egress_for(cfg.listeners()["fc-vm7"]).kind == "hvsock"
    assert cfg.egress_for(cfg.listeners()["vm1-com1"]).tls is not None
    assert cfg.vsock[0].cid_map() == {3: "vm5", 4: "vm6"}
    assert cfg.hvsock[0].socket_path == Path("/run/fc/vm7.vsock_52")


def test_minimal_defaults() -> None:
    cfg = loads_config(MINIMAL + '[[tcp]]\nname = "a"\nvm = "v"\nport = 0\n')
    assert cfg.tcp == (TcpListener(name="a", vm="v", port=0),)
    assert cfg.limits.max_streams > 0 and cfg.metrics.enabled


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[egress.x]\nkind = "udp"\n', "egress.x.kind"),
        ('[egress.x]\nkind = "tcp"\nport = 1\n', "egress.x.host"),
        ('[egress.x]\nkind = "tcp"\nhost = "h"\nport = 70000\n', "egress.x.port"),
        ('[egress.x]\nkind = "unix"\n', "egress.x.path"),
        ('[egress.x]\nkind = "vsock"\ncid = 1\nport = 5\n', "egress.x.cid"),
        ('[egress.x]\nkind = "unix"\npath = "/p"\ntls = { ca = "/ca" }\n', "egress.x.tls"),
        (MINIMAL + "[limits]\nmax-streams = 0\n", "limits.max-streams"),
        (MINIMAL + "[limits]\naccept-rate = -1\n", "limits.accept-rate"),
        (MINIMAL + "[timeouts]\ndrain = -1\n", "timeouts.drain"),
        (MINIMAL + '[timeouts]\nconnect = "x"\n', "timeouts.connect"),
        (MINIMAL + "[metrics]\nport = 99999\n", "metrics.port"),
        (MINIMAL + '[[tcp]]\nname = "a"\nport = 1\n', "tcp[0].vm"),
        (MINIMAL + '[[tcp]]\nname = "a"\nvm = "v"\nport = 1\nbogus = 2\n', "tcp[0].bogus"),
        (MINIMAL + '[[tcp]]\nname = "a"\nvm = "v"\nport = 0\nmode = "client"\n', "tcp[0].port"),
        (MINIMAL + '[[tcp]]\nname = "a"\nvm = "v"\nport = 1\negress = "nope"\n', "tcp[0].egress"),
        (
            MINIMAL + '[[tcp]]\nname = "a"\nvm = "v"\nport = 1\n[[vspc]]\nname = "a"\nport = 2\n',
            "vspc[0].name",
        ),
        (MINIMAL + '[[pipe]]\nname = "p"\nvm = "v"\npath = "/x"\nmode = "both"\n', "pipe[0].mode"),
        (
            MINIMAL + '[[serial]]\nname = "s"\nvm = "v"\ndevice = "/dev/x"\nparity = "Q"\n',
            "serial[0].parity",
        ),
        (MINIMAL + '[[vsock]]\nname = "g"\nport = 5\ncids = { "x" = "vm" }\n', "vsock[0].cids.x"),
        (MINIMAL + '[[vsock]]\nname = "g"\nport = 0\n', "vsock[0].port"),
        (MINIMAL + '[[hvsock]]\nname = "h"\nvm = "v"\nport = 5\n', "hvsock[0].uds_path"),
        (
            '[egress.a]\nkind = "unix"\npath = "/p"\n[egress.b]\nkind = "unix"\npath = "/q"\n'
            '[[tcp]]\nname = "t"\nvm = "v"\nport = 1\n',
            "tcp[0].egress",
        ),
        ("", "egress"),
        # names this relay would write into origin headers (issue 11 item 4)
        ('host = "../esx"\n' + MINIMAL, "host"),
        ('host = "esx a"\n' + MINIMAL, "host"),
        (MINIMAL + '[[tcp]]\nname = "a"\nvm = "../../../x"\nport = 1\n', "tcp[0].vm"),
        (MINIMAL + '[[tcp]]\nname = "a"\nvm = "v"\nport = 1\nlabel = "a/b"\n', "tcp[0].label"),
        (MINIMAL + '[[vspc]]\nname = "a"\nport = 1\nlabel = ".."\n', "vspc[0].label"),
        (MINIMAL + '[[pipe]]\nname = "p"\nvm = "v\\n"\npath = "/x"\n', "pipe[0].vm"),
        (MINIMAL + '[[serial]]\nname = "s"\nvm = "x/y"\ndevice = "/dev/x"\n', "serial[0].vm"),
        (
            MINIMAL + '[[vsock]]\nname = "g"\nport = 5\ncids = { "3" = "../vm" }\n',
            "vsock[0].cids.3",
        ),
        (
            MINIMAL + '[[hvsock]]\nname = "h"\nvm = ".v"\nuds-path = "/u"\nport = 5\n',
            "hvsock[0].vm",
        ),
    ],
)
def test_errors_name_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as ei:
        loads_config(text)
    assert ei.value.key == key, str(ei.value)


def _vic(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vic.cli", "relay", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[2],
    )


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (MINIMAL + '[[tcp]]\nname = "a"\nvm = "v"\nport = "x"\n', "tcp[0].port"),
        (MINIMAL + "[limits]\nmax-streams-per-vm = -3\n", "limits.max-streams-per-vm"),
        (MINIMAL + '[[tcp]]\nname = "a"\nvm = "../../x"\nport = 1\n', "tcp[0].vm"),
        ("[egress.default]\nkind = \n", "invalid TOML"),
    ],
)
def test_cli_bad_config_exits_2_with_one_line(tmp_path: Path, text: str, key: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    r = _vic("--config", str(bad), *(("--check",) if "limits" in key else ()))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert key in lines[0] and "Traceback" not in r.stderr


def test_cli_check_ok_and_missing_file(tmp_path: Path) -> None:
    good = tmp_path / "relay.toml"
    good.write_text(EXAMPLE)
    r = _vic("--config", str(good), "--check")
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout
    r = _vic("--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "not found" in r.stderr


def test_cli_listener_that_cannot_bind_exits_2(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = tmp_path / "relay.toml"
        cfg.write_text(
            MINIMAL + f'[metrics]\nenabled = false\n[[tcp]]\nname = "com1"\nvm = "v"\n'
            f"port = {port}\n"
        )
        r = _vic("--config", str(cfg))
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert "tcp[0].port" in last and "in use" in last and "Traceback" not in r.stderr
