"""A simulated VM's identity as ESX reports it, and the values ESX makes up for it."""

from __future__ import annotations

import random
from dataclasses import dataclass


def esx_uuid_format(hex32: str) -> str:
    """32 hex digits as ESX displays a VC UUID: ``"42 3f ... 5f-60 71 ... d7"``."""
    h = hex32.lower()
    if len(h) != 32 or any(c not in "0123456789abcdef" for c in h):
        raise ValueError(f"need 32 hex digits, got {hex32!r}")
    pairs = [h[i : i + 2] for i in range(0, 32, 2)]
    return " ".join(pairs[:8]) + "-" + " ".join(pairs[8:])


@dataclass(frozen=True)
class SimVM:
    """A simulated VM's identity as ESX reports it."""

    uuid: str  # VC UUID in ESX's display form (spaces and a dash)
    name: str
    bios_uuid: str = ""
    location_uuid: str = ""

    @property
    def canonical_uuid(self) -> str:
        return "".join(self.uuid.split()).replace("-", "").lower()

    @classmethod
    def random(cls, rng: random.Random, name: str | None = None) -> SimVM:
        h = f"{rng.getrandbits(128):032x}"
        bios = f"{rng.getrandbits(128):032x}"
        loc = f"{rng.getrandbits(128):032x}"
        return cls(
            uuid=esx_uuid_format(h),
            name=name if name is not None else f"vm-{h[:8]}",
            bios_uuid=esx_uuid_format(bios),
            location_uuid=esx_uuid_format(loc),
        )


def random_seq(rng: random.Random, *, length: int = 8, with_ff: bool = False) -> bytes:
    """A vMotion sequence; ``with_ff`` puts 0xFF bytes in it (at both ends and the middle)."""
    seq = bytearray(rng.getrandbits(8) for _ in range(length))
    if with_ff:
        for k in {0, length // 2, length - 1}:
            seq[k] = 0xFF
    return bytes(seq)


def service_uri_with_label(uri: str, label: str | None) -> str:
    if not label:
        return uri
    sep = "&" if "?" in uri else "?"
    return f"{uri}{sep}port={label}"
