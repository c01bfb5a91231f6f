"""[peer] configuration: TOML -> dataclasses -> runtime objects; bad keys named."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from common.link.config import PeerConfig, open_peer_listener
from common.ops.config import ConfigError, loads


def pki_files(tmp_path: Path) -> str:
    for n in ("c.crt", "c.key", "ca.crt"):
        (tmp_path / n).write_text("x")
    return (
        f'tls = {{ cert = "{tmp_path}/c.crt", key = "{tmp_path}/c.key", ca = "{tmp_path}/ca.crt" }}'
    )


def test_full_config(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("secret\n")
    cfg = loads(
        PeerConfig,
        f"""
admin-socket = "{tmp_path}/relay.sock"
{pki_files(tmp_path)}
[routes.appliance]
address = "tcp:10.0.0.12:7443"
identity = "vic://host/esx-02"
[[listen]]
address = "tcp:0.0.0.0:7443"
allowed-peers = ["vic://host/esx-01"]
[[listen]]
address = "vsock:2:7443"
tls = false
[link]
stream-window-kib = 8192
replay-limit-mib = 4
frame-kib = 1024
[follow.appliance]
vcenter = "vc"
protocol = "http"
password-file = "{tmp_path}/pw"
vm = "vch"
hosts = {{ "esx-02" = "tcp:10.0.0.12:7443" }}
identities = {{ "esx-02" = "vic://host/esx-02" }}
""",
    )
    r = cfg.routes_runtime()["appliance"]
    assert r.address == "tcp:10.0.0.12:7443" and r.identity == "vic://host/esx-02" and r.tls
    lc = cfg.link.link_config()
    assert lc.mux.stream_window == 8 << 20 and lc.replay_limit == 4 << 20
    assert lc.mux.max_payload == lc.read_size == 1 << 20 and lc.send_quantum == 512 << 10
    assert cfg.follow["appliance"].vcenter_target().password == "secret"
    assert cfg.follow["appliance"].routes("appliance")["esx-02"].identity == "vic://host/esx-02"
    assert cfg.tls is not None and cfg.tls.files().ca.name == "ca.crt"


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[routes.a]\naddress = "tcp:h:1"\nidentity = "vic://host/b"\n', "tls"),  # no [tls]
        ('[routes.a]\naddress = "pigeon:1"\ntls = false\n', "routes.a.address"),
        ('[routes.a]\naddress = "tcp:h:1"\nidentity = "bob"\n', "routes.a.identity"),
        (
            '[[listen]]\naddress = "tcp:127.0.0.1:1"\ntls = false\n[link]\nping-interval = 20.0\n',
            "link.ping-interval",
        ),
        (
            '[[listen]]\naddress = "tcp:127.0.0.1:1"\ntls = false\n[link]\nframe-kib = 2048\n',
            "link.frame-kib",
        ),
        # plaintext peer links only on a trusted transport (issue 11 item 10)
        (
            '[[listen]]\naddress = "unix:/x"\ntls = false\n[[listen]]\naddress = "tcp:0.0.0.0:1"\n'
            "tls = false\n",
            "listen[1].tls",
        ),
        ('[[listen]]\naddress = "tcp:10.1.2.3:1"\ntls = false\n', "listen[0].tls"),
        ('[[listen]]\naddress = "tcp:relay.example:1"\ntls = false\n', "listen[0].tls"),
        (
            '[routes.a]\naddress = "unix:/x"\ntls = false\n[follow.b]\nvcenter = "v"\nvm = "x"\n'
            'hosts = { h = "tcp:h:1" }\ntls = false\n',
            "follow.b",
        ),
        ('[[listen]]\naddress = "tcp:0.0.0.0:1"\nbogus = 1\n', "listen[0].bogus"),
    ],
)
def test_bad_config_names_the_key(toml: str, key: str) -> None:
    with pytest.raises(ConfigError) as ei:
        loads(PeerConfig, toml)
    assert ei.value.key == key, ei.value


async def test_open_peer_listener_tcp_and_unix(tmp_path: Path) -> None:
    lst = await open_peer_listener("tcp:127.0.0.1:0")
    port = lst.socket.getsockname()[1]
    s = await trio.open_tcp_stream("127.0.0.1", port)
    await s.aclose()
    await lst.aclose()
    path = tmp_path / "p.sock"
    lst = await open_peer_listener(f"unix:{path}")
    s = await trio.open_unix_socket(str(path))
    await s.aclose()
    await lst.aclose()
