"""tools/check_sizes.py, run by the test command, names what outgrows its limit."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_sizes", ROOT / "tools" / "check_sizes.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_long_functions_and_modules_are_named(tmp_path: Path) -> None:
    cs = load()
    body = "\n".join(f"    x{i} = {i}" for i in range(60))
    (tmp_path / "relay").mkdir()
    (tmp_path / "relay" / "big.py").write_text(f"def long():\n{body}\n" + "\n" * 340)
    (tmp_path / "common" / "proto").mkdir(parents=True)
    (tmp_path / "common" / "proto" / "core.py").write_text("x = 1\n" * 450)
    found = cs.breaches(tmp_path)
    assert any(line.startswith("relay/big.py: 401 lines (limit 400)") for line in found), found
    assert any(line.startswith("relay/big.py:long (line 1): 61 lines") for line in found), found
    assert not any("common/proto/core.py" in line for line in found), found  # a core has 500


def test_the_tree_is_within_its_limits() -> None:
    assert load().breaches(ROOT) == []
