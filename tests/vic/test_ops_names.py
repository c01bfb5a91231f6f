"""vic.ops.names (the config-side name grammar), vic.ops.listen (listener errors
as ConfigErrors naming the key) and vic.ops.preflight (certificate warnings)."""

from __future__ import annotations

import datetime as dt
import errno
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay import certs
from vic.ops.config import ConfigError
from vic.ops.listen import listen_error, listening, probe_host
from vic.ops.names import MAX_LABEL, MAX_VM_NAME, label_problem, vm_problem
from vic.ops.preflight import cert_warning


@pytest.mark.parametrize("vm", ["4213a2b0-c9d8-4c6e-9f8a-1f2e3d4c5b6a",
                                "42 13 a2 b0 c9 d8 4c 6e-9f 8a 1f 2e 3d 4c 5b 6a",
                                "web server", "vm5", "a" * MAX_VM_NAME])
def test_good_vm_names(vm: str) -> None:
    assert vm_problem(vm) is None


@pytest.mark.parametrize("vm", ["", "1" * 60_000, "a" * (MAX_VM_NAME + 1), "../x", "-x",
                                "a/b", "a\nb", "é"])
def test_bad_vm_names(vm: str) -> None:
    problem = vm_problem(vm)
    assert problem is not None and len(problem) < 120 and "\n" not in problem


@given(st.text(max_size=80))
def test_a_name_that_passes_is_safe_as_a_file_name_part(s: str) -> None:
    if vm_problem(s) is None:
        assert "/" not in s and "\x00" not in s and not s.startswith(".") and len(s) <= 64
    if label_problem(s) is None:
        assert s and len(s) <= MAX_LABEL and set(s) <= set(
            "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def test_listen_errors_name_host_or_port() -> None:
    assert listen_error(socket.gaierror(-2, "Name or service not known"), "a.port",
                        host_key="a.host").key == "a.host"
    assert listen_error(OSError(errno.EADDRNOTAVAIL, "Cannot assign"), "a.port",
                        host_key="a.host").key == "a.host"
    assert listen_error(OSError(errno.EADDRINUSE, "Address in use"), "a.port",
                        host_key="a.host").key == "a.port"
    with pytest.raises(ConfigError) as ei, listening("x.path", where="/p"):
        raise OSError(errno.ENOTDIR, "Not a directory\nsecond line")
    assert ei.value.key == "x.path" and "\n" not in str(ei.value)


def test_probe_host() -> None:
    probe_host("127.0.0.1", "k")
    with pytest.raises(ConfigError) as ei:
        probe_host("192.0.2.1", "k")
    assert ei.value.key == "k"


def test_cert_warnings(tmp_path: Path) -> None:
    certs.init_ca(tmp_path)
    res = certs.issue(tmp_path, "host", "esx-a", days=30)
    now = dt.datetime.now(dt.UTC)
    assert cert_warning(res.cert_path, "k", now) is None
    assert "expires on" in (cert_warning(res.cert_path, "k", now + dt.timedelta(days=20)) or "")
    assert "expired" in (cert_warning(res.cert_path, "k", now + dt.timedelta(days=31)) or "")
    assert "not valid before" in (
        cert_warning(res.cert_path, "k", now - dt.timedelta(days=2)) or "")
    assert cert_warning(tmp_path / "missing.pem", "k") is None
