"""bench/_summary.py --write: the README's table regenerated from bench/results/*.json,
between its markers, the rest of the file left as it was."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import _summary
import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"


def between(text: str) -> str:
    i = text.index(_summary.START) + len(_summary.START) + 1
    return text[i : text.index(_summary.END)]


def outside(text: str) -> tuple[str, str]:
    return text.split(_summary.START)[0], text.split(_summary.END)[1]


def test_write_round_trips_the_readme(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    before = readme.read_text()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "_summary.py"), str(RESULTS), "--write", str(readme)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    after = readme.read_text()
    assert between(after) == _summary.table(RESULTS)  # the table, from the files
    assert outside(after) == outside(before)  # and nothing else touched
    again = _summary.replace_table(after, between(after))
    assert again == after  # reading the table back and writing it changes nothing


def test_table_has_four_columns_a_row() -> None:
    lines = _summary.table(RESULTS).splitlines()
    assert lines[0] == "| measure | result | target | load (start -> end), CPU steal |"
    assert len(lines) > 20 and all(line.count(" | ") == 3 for line in lines[2:])


def test_replace_table_needs_both_markers() -> None:
    with pytest.raises(ValueError):
        _summary.replace_table("no markers here", "| x |\n")
    text = f"a\n{_summary.START}\nold\n{_summary.END}\nb\n"
    assert _summary.replace_table(text, "new\n") == f"a\n{_summary.START}\nnew\n{_summary.END}\nb\n"
