"""bench/mesh_two_hop.py's paired ratios: each round's ours/socat, then their median."""

from __future__ import annotations

from typing import Any

import mesh_two_hop


def runs(**mb_s: list[float]) -> dict[str, list[dict[str, Any]]]:
    return {k: [{"mb_s": v} for v in vs] for k, vs in mb_s.items()}


def test_paired_is_the_median_of_each_rounds_ratio() -> None:
    # a slow second round for both: the ratio of medians (1.0) hides what each round says
    r = runs(ours_plain=[90.0, 45.0, 100.0], socat_plain=[100.0, 50.0, 95.0])
    got = mesh_two_hop.paired(r, {"plain": ("ours_plain", "socat_plain")})
    assert got == {"plain": 0.9}


def test_paired_skips_a_pair_with_a_contender_left_out() -> None:
    r = runs(ours_plain=[90.0], socat_plain=[100.0], ours_tls=[80.0])
    pairs = {"plain": ("ours_plain", "socat_plain"), "tls": ("ours_tls", "socat_tls")}
    assert mesh_two_hop.paired(r, pairs) == {"plain": 0.9}
