"""common.io.listen (listener errors as ConfigErrors naming the key) and
common.io.preflight (certificate warnings). The name grammar for configs and the wire
is one, common.proto.identity: tests/common/proto/test_identity.py."""

from __future__ import annotations

import datetime as dt
import errno
import socket
from pathlib import Path

import pytest

from common.io import certs
from common.io.listen import listen_error, listening, probe_host
from common.io.preflight import cert_warning
from common.ops.config import ConfigError


def test_listen_errors_name_host_or_port() -> None:
    assert (
        listen_error(
            socket.gaierror(-2, "Name or service not known"), "a.port", host_key="a.host"
        ).key
        == "a.host"
    )
    assert (
        listen_error(OSError(errno.EADDRNOTAVAIL, "Cannot assign"), "a.port", host_key="a.host").key
        == "a.host"
    )
    assert (
        listen_error(OSError(errno.EADDRINUSE, "Address in use"), "a.port", host_key="a.host").key
        == "a.port"
    )
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
        cert_warning(res.cert_path, "k", now - dt.timedelta(days=2)) or ""
    )
    assert cert_warning(tmp_path / "missing.pem", "k") is None
