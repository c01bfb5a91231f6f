"""Which console an attach target names: UUID, display name, unique prefix, ``vm:label``."""

from __future__ import annotations

from typing import Protocol, TypeVar

from vspc.core.identity import DEFAULT_LABEL, PortKey, uuid_prefix, vm_key


class LookupFailed(Exception):
    """No console, or more than one, matches an attach target."""


class _Named(Protocol):
    @property
    def key(self) -> PortKey: ...
    @property
    def display(self) -> str: ...


N = TypeVar("N", bound=_Named)


def _match(items: list[N], vm: str, label: str | None) -> list[N]:
    """Exact: the VM key (a UUID in any form, or a name exactly) or the display;
    else a unique prefix of either (hex prefixes of a UUID in any form)."""
    ports = [c for c in items if label is None or c.key.label == label]
    try:
        key: str | None = vm_key(vm)
    except ValueError:
        key = None
    exact = [c for c in ports if c.key.uuid == key or c.display == vm]
    if exact:
        return exact
    hex_prefix = uuid_prefix(vm)
    return [
        c
        for c in ports
        if c.key.uuid.startswith(vm)
        or c.display.startswith(vm)
        or (hex_prefix is not None and c.key.is_uuid and c.key.uuid.startswith(hex_prefix))
    ]


def pick(items: list[N], target: str, label: str | None) -> N:
    """The one item ``target`` names (see ``ConsoleService.find``); raises LookupFailed."""
    found = _match(items, target, label)
    if not found and label is None and ":" in target:
        vm, _, lab = target.rpartition(":")
        if vm and lab:
            found = _match(items, vm, lab)
    if not found:
        raise LookupFailed(
            f"no console matches {target!r}" + (f" label {label!r}" if label else "")
        )
    if len({c.key.uuid for c in found}) > 1:
        names = ", ".join(sorted(f"{c.display} ({c.key.uuid})" for c in found)[:10])
        raise LookupFailed(f"{target!r} is ambiguous: {names}")
    if len(found) > 1:
        default = [c for c in found if c.key.label == DEFAULT_LABEL]
        if len(default) == 1:
            return default[0]
        labels = ", ".join(sorted(c.key.label for c in found))
        raise LookupFailed(f"{target!r} has several ports, name one with :label ({labels})")
    return found[0]
