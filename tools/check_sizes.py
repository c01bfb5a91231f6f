"""Size limits the test command enforces (issue 12): no module over 500 lines,
no adapter or service module over 400 (sans-IO cores, tests and benches may use
the 500), no function over 60 lines. ``ALLOWED`` would list an exception with its size
as a ceiling; it is empty, and a new entry needs a reason in review.

Run: ``python tools/check_sizes.py`` (exit 1 with one line per breach).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOTS = ("common", "relay", "vspc", "guestagent", "vic", "tests", "bench", "tools")
MODULE_MAX = 500
ADAPTER_MAX = 400
FUNCTION_MAX = 60

# path or "path:function" -> its ceiling in lines (none today).
ALLOWED: dict[str, int] = {}


def module_limit(path: str) -> int:
    """500 lines for sans-IO cores, tests and benches; 400 for everything else."""
    parts = path.split("/")
    if parts[0] in ("tests", "bench") or "core" in parts or parts[:2] == ["common", "proto"]:
        return MODULE_MAX
    return ADAPTER_MAX


def breaches(root: Path) -> list[str]:
    """One line per module or function over its limit (and over its allowance)."""
    out: list[str] = []
    for top in ROOTS:
        for file in sorted((root / top).rglob("*.py")):
            rel = file.relative_to(root).as_posix()
            if rel.startswith("bench/results/"):
                continue
            src = file.read_text()
            lines = len(src.splitlines())
            limit = max(module_limit(rel), ALLOWED.get(rel, 0))
            if lines > limit:
                out.append(f"{rel}: {lines} lines (limit {limit})")
            for node in ast.walk(ast.parse(src, rel)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    size = (node.end_lineno or node.lineno) - node.lineno + 1
                    key = f"{rel}:{node.name}"
                    limit = max(FUNCTION_MAX, ALLOWED.get(key, 0))
                    if size > limit:
                        out.append(f"{key} (line {node.lineno}): {size} lines (limit {limit})")
    return out


def main() -> int:
    found = breaches(Path(__file__).resolve().parent.parent)
    for line in found:
        print(f"size limit: {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
