"""Per-phase timers."""

from __future__ import annotations

import time

import pytest

from hpcql.timing import PhaseTimer


def test_phase_timer_books_nested_time_once() -> None:
    """Time booked to an inner phase (or with add) inside an open phase is not counted twice."""
    timer = PhaseTimer()
    t0 = time.perf_counter()
    with timer.phase("compute"):
        time.sleep(0.02)
        with timer.phase("exchange"):
            time.sleep(0.03)
        t1 = time.perf_counter()
        time.sleep(0.01)
        timer.add("wait", time.perf_counter() - t1)
    total = time.perf_counter() - t0
    s = timer.seconds
    assert s["exchange"] >= 0.03 and s["wait"] >= 0.01
    assert 0.02 <= s["compute"] < 0.045  # at least 0.06 if the inner 0.04 s were counted twice
    assert s["compute"] + s["exchange"] + s["wait"] == pytest.approx(total, abs=0.002)
