"""One log format for every daemon: ISO-8601 UTC text, JSON lines, and journald's
``<N>`` priorities (no second timestamp) when ``$JOURNAL_STREAM`` names stderr."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from pathlib import Path

import pytest

from common.ops import logs
from tests.support.daemons import Daemon, free_port

ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def _record(level: int = logging.WARNING, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("relay.carry", level, __file__, 1, "stream=%s failed", ("ab",), None)
    rec.created = 1796659466.1239  # 2026-12-07T16:04:26.123Z
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_iso_utc_has_milliseconds_and_z() -> None:
    assert logs.iso_utc(1796659466.1239) == "2026-12-07T16:04:26.123Z"
    assert logs.iso_utc(0.0) == "1970-01-01T00:00:00.000Z"


def test_text_line() -> None:
    line = logs.TextFormatter().format(_record(route="vm1"))
    assert line == "2026-12-07T16:04:26.123Z WARNING relay.carry: stream=ab failed route=vm1"


def test_text_does_not_repeat_a_field_the_message_shows() -> None:
    line = logs.TextFormatter().format(_record(stream="ab", vm="v1"))
    assert line.endswith(": stream=ab failed vm=v1")
    assert (
        logs.JournalFormatter().format(_record(stream="ab"))
        == "<4>WARNING relay.carry: stream=ab failed"
    )


def test_json_line_has_the_fields_and_extras() -> None:
    obj = json.loads(logs.JsonFormatter().format(_record(route="vm1", n=3)))
    assert obj == {
        "ts": "2026-12-07T16:04:26.123Z",
        "level": "WARNING",
        "logger": "relay.carry",
        "msg": "stream=ab failed",
        "route": "vm1",
        "n": 3,
    }


def test_json_keeps_a_traceback_on_one_line() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "bad", (), None)
        import sys

        rec.exc_info = sys.exc_info()
    text = logs.JsonFormatter().format(rec)
    assert "\n" not in text and "ValueError: boom" in json.loads(text)["exc"]


@pytest.mark.parametrize(
    ("level", "prio"),
    [(logging.DEBUG, 7), (logging.INFO, 6), (logging.WARNING, 4), (logging.ERROR, 3), (50, 2)],
)
def test_journal_priorities(level: int, prio: int) -> None:
    line = logs.JournalFormatter().format(_record(level))
    assert re.fullmatch(rf"<{prio}>[A-Z]+ relay\.carry: stream=ab failed", line), line


def test_journal_stream_must_name_the_stream(tmp_path: Path) -> None:
    path = tmp_path / "err"
    with path.open("w") as f, (tmp_path / "other").open("w") as other:
        st = os.fstat(f.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert logs.under_journald(f, env)
        assert not logs.under_journald(other, env)  # inherited variable, another stderr
        assert not logs.under_journald(f, {"JOURNAL_STREAM": "junk"})
        assert not logs.under_journald(f, {})
        assert not logs.under_journald(io.StringIO(), env)  # no fd at all


def test_setup_replaces_its_own_handler_only() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    other = logging.NullHandler()
    root.addHandler(other)
    try:
        out = io.StringIO()
        logs.setup("debug", "text", out)
        logs.setup("warning", "json", out)
        logging.getLogger("t").info("hidden")
        logging.getLogger("t").warning("shown %d", 1)
        lines = out.getvalue().splitlines()
        assert [json.loads(ln)["msg"] for ln in lines] == ["shown 1"]
        assert other in root.handlers and root.level == logging.WARNING
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def _relay_config(listen: int) -> dict[str, object]:
    return {
        "host": "esx-logs",
        "egress": {"default": {"kind": "tcp", "host": "127.0.0.1", "port": free_port()}},
        "metrics": {"enabled": False},
        "tcp": [{"name": "vm1", "vm": "vm1", "host": "127.0.0.1", "port": listen}],
    }


async def _run_relay(tmp_path: Path, name: str, *args: str) -> list[str]:
    d = Daemon("relay", name, _relay_config(free_port()), tmp_path)
    try:
        await d.launch(*args)
        await d.expect_state("READY=1")
        assert await d.stop() == 0
    finally:
        await d.finish()
    return [ln for ln in d.log_lines() if ln and not ln.startswith("--- start")]


@pytest.mark.slow
async def test_relay_process_logs_in_each_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``vic relay --log-format json``, the text default, and text under journald."""
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    lines = await _run_relay(tmp_path, "json", "--log-format", "json")
    objs = [json.loads(ln) for ln in lines]
    assert objs and all(re.fullmatch(ISO, o["ts"]) for o in objs)
    assert {"ts", "level", "logger", "msg"} <= set(objs[0])
    assert any(o["level"] == "INFO" and o["logger"].startswith("relay") for o in objs)

    lines = await _run_relay(tmp_path, "text")
    assert lines and all(re.match(rf"{ISO} (INFO|WARNING|ERROR) [\w.]+: ", ln) for ln in lines)

    jd = Daemon("relay", "journal", {}, tmp_path)  # only for its log path
    jd.log_path.touch()
    st = jd.log_path.stat()
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    lines = await _run_relay(tmp_path, "journal")
    assert lines and all(re.match(r"<[0-7]>[A-Z]+ [\w.]+: ", ln) for ln in lines), lines
    assert not any(re.search(ISO, ln) for ln in lines)
