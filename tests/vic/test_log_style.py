"""One stream id format in the relay's and the appliance's logs: ``stream=ID``
(grep ``stream=ID`` across both tiers), never ``stream ID``."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# a log format string naming a stream id with a space instead of "="
SPACED = re.compile(r"""log\.\w+\(\s*(f?"[^"]*\bstream %s|f?"[^"]*\bstream\{)""", re.S)


def test_stream_ids_are_logged_as_key_value() -> None:
    files = [*ROOT.glob("relay/**/*.py"), *ROOT.glob("vspc/**/*.py")]
    files.append(ROOT / "common/link/vetting.py")
    assert len(files) > 30
    bad = [
        f"{f.relative_to(ROOT)}: {m.group(0)!r}"
        for f in files
        for m in SPACED.finditer(f.read_text())
    ]
    assert not bad, bad


def test_the_pattern_catches_the_old_spelling() -> None:
    assert SPACED.search('log.info("relayed stream %s lost: %s", sid, e)')
    assert not SPACED.search('log.info("relayed stream=%s lost: %s", sid, e)')
