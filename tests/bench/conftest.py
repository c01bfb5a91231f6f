"""The bench helpers import as top-level modules (``_goals``, ``_rounds``...), as they do
when a bench runs as a script with ``bench/`` on ``sys.path``."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
