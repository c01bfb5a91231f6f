"""README.md stays true: its set-up commands exist, CI runs the test one, and its
sample config passes `vic vspc --check`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_setup_commands_exist_and_ci_runs_the_test_command() -> None:
    assert "    ./scripts/lab\n" in README and "    ./scripts/test\n" in README
    for script in ("scripts/lab", "scripts/test", "scripts/bootstrap"):
        assert (ROOT / script).stat().st_mode & 0o111, script
    assert "./scripts/test" in (ROOT / ".ci/run").read_text()


def test_sample_vspc_config_passes_check(tmp_path: Path) -> None:
    m = re.search(r"A minimal `vspc.toml`:\n\n```toml\n(.*?)```", README, re.S)
    assert m, "README lost its sample vspc.toml"
    cfg = tmp_path / "vspc.toml"
    cfg.write_text(m.group(1))
    proc = subprocess.run(
        [sys.executable, "-m", "vic.cli", "vspc", "--config", str(cfg), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def test_mesh_samples_load(tmp_path: Path) -> None:
    """The relay-mesh samples are valid configs (certificate paths pointed at files here)."""
    from common.ops.config import loads
    from relay.config import loads_config
    from vspc.config import VspcConfig

    section = README.split("### The relay mesh", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```toml\n(.*?)```", section, re.S)
    assert len(blocks) == 3, "README's relay mesh section lost a sample"
    for name in (
        "host-esx-01.crt",
        "host-esx-01.key",
        "host-esx-02.crt",
        "host-esx-02.key",
        "ca.crt",
    ):
        (tmp_path / name).write_text("x")
    vm_host, appliance_host, vspc = (b.replace("/etc/vic/", f"{tmp_path}/") for b in blocks)
    cfg = loads_config(vm_host)
    assert cfg.egress["default"].kind == "peer" and cfg.peer is not None
    assert cfg.peer.routes["appliance"].identity == "vic://host/esx-02"
    cfg = loads_config(appliance_host)
    assert cfg.peer is not None and cfg.peer.listen[0].forward == "vsock:3:7444"
    v = loads(VspcConfig, vspc)
    assert v.endpoint.link[0].forwarded


def test_authenticated_endpoint_sample_loads(tmp_path: Path) -> None:
    """The endpoint off loopback: TLS with client certificates, vCenter placement;
    without its tls line the same sample is a config error naming endpoint.tls."""
    from common.ops.config import ConfigError, loads
    from vspc.config import VspcConfig

    section = README.split("A minimal `vspc.toml`:", 1)[1].split("### The relay mesh", 1)[0]
    blocks = re.findall(r"```toml\n(.*?)```", section, re.S)
    auth = [b for b in blocks if "[endpoint.vcenter]" in b]
    assert len(auth) == 1, "README lost its authenticated endpoint sample"
    sessions = [b for b in blocks if b.startswith("[sessions]")]
    assert len(sessions) == 1, "README lost its [sessions] sample"
    for name in ("appliance-vch.crt", "appliance-vch.key", "ca.crt", "vc.password"):
        (tmp_path / name).write_text("x")
    local = sessions[0].replace("/etc/vic/", f"{tmp_path}/")
    got = loads(VspcConfig, local).sessions
    assert got.replay_limit == 1048576 and got.guestinfo == "file"
    on_vsphere = re.sub(  # the commented [sessions.vsphere] table, switched on
        r"(?m)^# (?=\[|[a-z-]+ = )", "", local.replace('"file"', '"vsphere"', 1)
    ).replace("guestinfo-dir", "# guestinfo-dir")
    assert loads(VspcConfig, on_vsphere).sessions.guestinfo == "vsphere"
    docker = [b for b in blocks if b.startswith("[docker]")]
    assert len(docker) == 1, "README lost its [docker] sample"
    for name in ("docker.pem", "docker.key", "ca.pem"):
        (tmp_path / name).write_text("x")
    sample = docker[0].replace("/etc/vic/", f"{tmp_path}/").replace('"docker"', '"root"')
    d = loads(VspcConfig, sample.replace("/run/vic/", f"{tmp_path}/")).docker
    assert d.enabled and d.tcp is not None and d.tcp.tls is not None
    sample = auth[0].replace("/etc/vic/", f"{tmp_path}/")
    v = loads(VspcConfig, sample)
    assert v.endpoint.relay_certificates() and v.endpoint.vcenter is not None
    with pytest.raises(ConfigError) as e:
        loads(VspcConfig, "\n".join(ln for ln in sample.splitlines() if not ln.startswith("tls")))
    assert e.value.key == "endpoint.tls"


def test_readme_is_whole_on_its_own() -> None:
    """No pointer outside the repository; every document it links to is here."""
    assert "../shared" not in README
    for target in re.findall(r"\]\(([^)#:]+)\)", README):
        assert (ROOT / target).is_file(), f"README links to missing {target}"


# What a build makes (git-ignored): scripts/build-artefacts writes dist/.
BUILT = {"dist/"}


def test_every_file_the_docs_name_exists() -> None:
    """The map stays true: each `path.py` or `dir/` the README, docs/ or a program's
    README names in backticks is in the tree (relative to the repository, or to the
    README's own folder)."""
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    docs += sorted(ROOT.glob("*/README.md"))
    missing = []
    for doc in docs:
        for name in re.findall(r"`((?:\.\./)?[a-z_]+(?:/[a-z_0-9]+)*(?:\.py|/))`", doc.read_text()):
            if name in BUILT:
                continue
            if not ((ROOT / name).exists() or (doc.parent / name).exists()):
                missing.append(f"{doc.relative_to(ROOT)}: {name}")
    assert not missing, missing
