"""An unreachable route is one WARNING per outage, however many attempts fail."""

from __future__ import annotations

import logging

import pytest

from common.link.route_health import RouteHealth


def test_one_warning_per_outage_and_one_line_when_back(caplog: pytest.LogCaptureFixture) -> None:
    counted: list[int] = []
    h = RouteHealth("appliance", on_failure=lambda: counted.append(1))
    caplog.set_level(logging.DEBUG, logger="relay.route")
    h.succeeded("tcp:10.0.0.2:7443", 0.0)  # up already: nothing to say
    for i in range(5):
        h.failed("tcp:10.0.0.2:7443", ConnectionRefusedError("refused\r\nx"), 1.0 + i)
    assert not h.up and h.failures == 5 and len(counted) == 5
    h.succeeded("tcp:10.0.0.2:7443", 11.0)
    h.failed("tcp:10.0.0.2:7443", OSError(), 12.0)
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in lines] == ["WARNING", "WARNING", "WARNING"]
    assert "cannot reach tcp:10.0.0.2:7443: refused\\r\\nx" in lines[0][1]  # wire-escaped
    assert "reachable again after 10.0s (5 failed attempts)" in lines[1][1]
    assert "cannot reach" in lines[2][1] and "OSError" in lines[2][1]
    assert h.outages == 2 and h.failures == 6
