"""The lab's appliance config, shared by the one-shot lab (in process) and ``vic lab up``
(the file ``vic vspc --config`` reads)."""

from __future__ import annotations

import json
from pathlib import Path

from common.ops.config import loads
from vspc.config import VspcConfig


def lab_toml(workdir: Path, guestinfo: Path | None = None, *, docker: bool = False) -> str:
    """The lab appliance's vspc.toml: ports picked by the kernel, everything in ``workdir``;
    the tethered VMs' secrets go to the file guestinfo store ``guestinfo`` (default
    ``workdir/sess/guestinfo``). ``docker``: also the Docker endpoint, on
    ``workdir/docker.sock`` (``docker_socket``)."""
    gi_dir = guestinfo or workdir / "sess" / "guestinfo"

    def q(p: Path | str) -> str:
        return json.dumps(str(p))  # a TOML basic string

    return f"""[listen]
host = "127.0.0.1"
port = 0

[endpoint]
host = "127.0.0.1"
port = 0
unix = {q(workdir / "endpoint.sock")}

# peer links forwarded by the relays on the appliance's (simulated) hosts
[[endpoint.link]]
address = {q(f"unix:{workdir / 'link.sock'}")}
tls = false
forwarded = true

[console]
socket = {q(workdir / "console.sock")}
log-dir = {q(workdir / "consoles")}

# sessions with tethered VMs (issue 13): secrets in the file guestinfo store
[sessions]
logs-dir = {q(workdir / "container-logs")}
guestinfo-dir = {q(gi_dir)}

[metrics]
enabled = true
host = "127.0.0.1"
port = 0
""" + (_DOCKER.format(socket=q(docker_socket(workdir))) if docker else "")


_DOCKER = """
# the Docker Engine API endpoint (issue 14): DOCKER_HOST=unix://<socket>
[docker]
enabled = true
socket = {socket}
socket-mode = 0o600
"""


def docker_socket(workdir: Path) -> Path:
    return workdir / "docker.sock"


def lab_config(workdir: Path) -> VspcConfig:
    (workdir / "sess" / "guestinfo").mkdir(parents=True, exist_ok=True)
    return loads(VspcConfig, lab_toml(workdir))
