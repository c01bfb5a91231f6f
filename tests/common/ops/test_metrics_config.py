"""``[metrics]`` is one table (common.ops.config.MetricsConfig) in both daemons: same keys,
same error, each daemon's own default port."""

from __future__ import annotations

import pytest

from common.ops.config import ConfigError, build
from relay.config import MetricsConfig as RelayMetrics
from vspc.config import MetricsConfig as VspcMetrics


@pytest.mark.parametrize(("cls", "port"), [(RelayMetrics, 9471), (VspcMetrics, 9470)])
def test_metrics_table_keys_defaults_and_error(cls: type[RelayMetrics], port: int) -> None:
    assert build(cls, {}) == cls(enabled=True, host="127.0.0.1", port=port)
    assert build(cls, {"enabled": False, "host": "::1", "port": 0}).host == "::1"
    with pytest.raises(ConfigError) as bad:
        build(cls, {"port": 70000}, "metrics")
    assert str(bad.value) == "metrics.port: must be 0..65535"
    with pytest.raises(ConfigError, match="metrics"):
        build(cls, {"listen": "x"}, "metrics")
