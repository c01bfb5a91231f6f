"""``vic --version`` and the build-info metric read one version: the installed
distribution's, else ``pyproject.toml`` beside a source checkout, else ``0+unknown``."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest

from common.ops import version as v


def test_installed_version_matches_the_pyproject() -> None:
    pyproject = Path(v.__file__).resolve().parents[2] / "pyproject.toml"
    assert v.version() == metadata.version("vic-channel") == v._from_pyproject(pyproject)


def test_fallbacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "pyproject.toml"
    p.write_text('[build-system]\nversion = "9"\n[project]\nname = "x"\nversion = "1.2.3"\n')
    assert v._from_pyproject(p) == "1.2.3"
    p.write_text('[tool.x]\nversion = "9"\n')
    assert v._from_pyproject(p) == v.UNKNOWN
    assert v._from_pyproject(tmp_path / "missing.toml") == v.UNKNOWN

    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    v.version.cache_clear()
    try:
        pyproject = Path(v.__file__).resolve().parents[2] / "pyproject.toml"
        assert v.version() == v._from_pyproject(pyproject) != v.UNKNOWN
    finally:
        v.version.cache_clear()
