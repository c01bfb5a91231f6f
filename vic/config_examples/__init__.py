"""Commented example configs, one per deployed role (``vic config example NAME``);
``deploy/examples/NAME.toml`` are these texts, checked equal in the test suite."""

from __future__ import annotations

from vic.config_examples.agent import AGENT
from vic.config_examples.relay import RELAY_APPLIANCE_HOST, RELAY_VM_HOST
from vic.config_examples.vspc import VSPC

#: name -> (the daemon that reads it, its text)
EXAMPLES: dict[str, tuple[str, str]] = {
    "vspc": ("vspc", VSPC),
    "relay": ("relay", RELAY_VM_HOST),
    "relay-appliance-host": ("relay", RELAY_APPLIANCE_HOST),
    "agent": ("agent", AGENT),
}
