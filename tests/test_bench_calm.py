"""The benchmarks' guard against a hypervisor's stolen time (``bench/_common.calm``): a
sample during which more than ``STEAL_MAX`` of the machine's CPU time was stolen is run
again, a bounded number of times, the calmest try kept, every other one on record. The
readings of /proc/stat are given here (the real ones cannot be made to steal)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from _common import STEAL_MAX, calm, host_steal, stolen_share


def readings(shares: list[float]) -> Iterator[tuple[float, float]]:
    """(stolen, total) CPU seconds, two per try: the share stolen during try i is shares[i]."""
    stolen = total = 0.0
    for share in shares:
        yield stolen, total
        stolen, total = stolen + 10 * share, total + 10
        yield stolen, total


def test_a_calm_sample_is_kept_at_once() -> None:
    runs: list[int] = []
    discarded: list[dict[str, Any]] = []
    got = calm(lambda: runs.append(1) or len(runs), "s", discarded, steal=readings([0.01]).__next__)
    assert got == (1, pytest.approx(0.01))
    assert runs == [1]
    assert discarded == []


def test_a_sample_with_stolen_time_is_run_again_and_the_discarded_one_is_on_record() -> None:
    runs: list[int] = []
    discarded: list[dict[str, Any]] = []
    shares = [STEAL_MAX * 4, 0.0]
    got, share = calm(
        lambda: runs.append(1) or len(runs),
        "pair 3",
        discarded,
        tries=3,
        steal=readings(shares).__next__,
    )
    assert (got, share) == (2, 0.0)
    assert discarded == [{"what": "pair 3", "stolen": pytest.approx(STEAL_MAX * 4)}]


def test_the_tries_are_bounded_and_the_calmest_is_kept() -> None:
    runs: list[int] = []
    discarded: list[dict[str, Any]] = []
    shares = [0.3, 0.1, 0.5, 0.0, 0.0]
    got, share = calm(
        lambda: runs.append(1) or len(runs),
        "s",
        discarded,
        tries=3,
        steal=readings(shares).__next__,
    )
    assert runs == [1, 1, 1]  # three tries, none under STEAL_MAX: no fourth
    assert got == 2
    assert share == pytest.approx(0.1)
    assert [d["stolen"] for d in discarded] == [pytest.approx(0.3), pytest.approx(0.5)]


def test_one_try_keeps_what_it_got() -> None:
    discarded: list[dict[str, Any]] = []
    got, share = calm(lambda: "x", "s", discarded, tries=1, steal=readings([0.9]).__next__)
    assert got == "x"
    assert share == pytest.approx(0.9)
    assert discarded == []


def test_the_machine_readings_are_a_share() -> None:
    before = host_steal()
    after = host_steal()
    assert after[1] >= before[1]
    assert after[0] >= before[0]
    assert 0.0 <= stolen_share(before, after) <= 1.0
    assert stolen_share((0.0, 5.0), (0.0, 5.0)) == 0.0
