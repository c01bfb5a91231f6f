from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from common.ops.config import ConfigError, load, loads, require
from vic.cli import main


@dataclass(frozen=True)
class Listen:
    host: str = "127.0.0.1"
    port: int = 0
    mode: Literal["tcp", "unix"] = "tcp"


@dataclass(frozen=True)
class Root:
    name: str
    listen: Listen = field(default_factory=Listen)
    peers: tuple[str, ...] = ()
    limit: float = 1.0
    path: Path | None = None

    def validate(self) -> None:
        require(self.limit > 0, "limit", "must be positive")


def test_builds_nested_dataclasses() -> None:
    cfg = loads(
        Root, 'name = "a"\npeers = ["x", "y"]\nlimit = 2\npath = "/tmp/x"\n[listen]\nport = 5\n'
    )
    assert cfg == Root("a", Listen(port=5), ("x", "y"), 2.0, Path("/tmp/x"))


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("name = 1", "name"),
        ('name = "a"\n[listen]\nport = "x"', "listen.port"),
        ('name = "a"\n[listen]\nmode = "udp"', "listen.mode"),
        ('name = "a"\nbogus = 1', "bogus"),
        ("[listen]\nport = 1", "name"),
        ('name = "a"\nlimit = -1', "limit"),
        ('name = "a"\npeers = [1]', "peers[0]"),
    ],
)
def test_errors_name_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as ei:
        loads(Root, text)
    assert ei.value.key == key


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load(Root, tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load(Root, bad)


def test_cli_requires_a_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        main([])
    assert ei.value.code == 2


@dataclass(frozen=True)
class _Inner:
    n: int = 1

    def validate(self) -> None:
        require(self.n > 0, "n", "must be positive")


@dataclass(frozen=True)
class _Outer:
    inner: _Inner | None = None


def test_optional_table_error_keeps_its_key() -> None:
    with pytest.raises(ConfigError) as e:
        loads(_Outer, "[inner]\nn = 0\n")
    assert e.value.key == "inner.n"
