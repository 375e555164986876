"""Exploration schedules: epsilon as a pure function of the fraction of the budget used."""

from __future__ import annotations

import math


def epsilon_at(kind: str, start: float, end: float, decay_fraction: float, progress: float) -> float:
    """Epsilon after ``progress`` (0..1) of the budget.

    ``constant`` stays at ``start``; ``linear`` goes from ``start`` to ``end`` over
    the first ``decay_fraction`` of the budget; ``exponential`` decays
    geometrically from ``start`` to ``end`` over the same span; both then stay at ``end``.
    """
    if kind == "constant":
        return start
    x = min(max(progress / decay_fraction, 0.0), 1.0)
    if kind == "linear":
        return start + (end - start) * x
    if start <= 0 or end <= 0:
        return end if x >= 1 else start
    return math.exp(math.log(start) + (math.log(end) - math.log(start)) * x)
