"""Logging set-up shared by the daemons: one format for every program.

``text`` (default)::

    2026-12-07T18:04:26.123Z INFO relay: stream=ab12 route=vm1 ... closed

``json``: one object a line, ``ts`` (ISO-8601 UTC, milliseconds, ``Z``), ``level``,
``logger``, ``msg``, then any ``extra=`` fields and ``exc`` for a traceback. The
text formats add an extra field as `` key=value`` unless the message shows ``key=``
already (``log.info("stream=%s ...", sid, extra={"stream": sid})`` reads the same).

Under systemd (``$JOURNAL_STREAM`` names our stderr) the text format drops its
timestamp, which the journal adds, and starts each line with the syslog priority
``<N>`` that the journal turns into the entry's PRIORITY (sd-daemon(3)).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, Literal, TextIO

LogFormat = Literal["text", "json"]
FORMATS: tuple[LogFormat, ...] = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")

# syslog priorities (RFC 5424) for the journal's <N> prefixes
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}
# what every LogRecord carries: anything else on a record came in through ``extra=``
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def iso_utc(created: float) -> str:
    """``2026-12-07T18:04:26.123Z`` for a ``time.time()`` value."""
    secs = int(created)
    ms = int((created - secs) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{ms:03d}Z"


def extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _suffix(record: logging.LogRecord, msg: str) -> str:
    """`` key=value`` for each extra field the message does not already show."""
    return "".join(f" {k}={v}" for k, v in extras(record).items() if f"{k}=" not in msg)


class TextFormatter(logging.Formatter):
    """``TIME LEVEL logger: message key=value...``, times in UTC."""

    def format(self, record: logging.LogRecord) -> str:
        head = f"{iso_utc(record.created)} {record.levelname} {record.name}: "
        msg = record.getMessage()
        return head + msg + _suffix(record, msg) + self._exc(record)

    def _exc(self, record: logging.LogRecord) -> str:
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        return "\n" + record.exc_text if record.exc_text else ""


class JournalFormatter(TextFormatter):
    """``<N>LEVEL logger: message``: the journal keeps the time and the priority."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 2 if record.levelno > logging.ERROR else 7)
        msg = record.getMessage()
        text = f"{record.levelname} {record.name}: {msg}{_suffix(record, msg)}"
        # each line of a traceback is a journal entry of its own: give them the priority too
        lines = (text + self._exc(record)).split("\n")
        return "\n".join(f"<{prio}>{line}" for line in lines)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": iso_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in extras(record).items():
            obj.setdefault(k, v)
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str, ensure_ascii=False)


def under_journald(stream: TextIO, env: dict[str, str] | None = None) -> bool:
    """``$JOURNAL_STREAM`` (``DEV:INODE``) names ``stream``: systemd connected it
    to the journal (a child that inherited the variable but not the fd does not)."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def formatter(fmt: LogFormat, stream: TextIO) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    return JournalFormatter() if under_journald(stream) else TextFormatter()


def setup(level: str = "info", fmt: LogFormat = "text", stream: TextIO | None = None) -> None:
    """The root logger at ``level``, one handler on ``stream`` (stderr) in ``fmt``;
    called again (a reload), it replaces the handler it set up before."""
    out = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter(fmt, out))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_vic_handler", False)]:
        root.removeHandler(old)
    handler._vic_handler = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
