"""Uplift of an arm over its control: conversion (two proportions) and ARPU (two means).

Both give the absolute difference, the relative difference, a 95% confidence interval
of each and a two-sided p-value. The formulas are the textbook ones (docs/optimize.md):

- conversion: the difference of proportions with the unpooled (Wald) standard error
  for its interval, the pooled two-proportion z-test for its p-value, and the
  log risk ratio (delta method) for the relative interval;
- ARPU: Welch's t-test (unequal variances) from SciPy for the difference, its p-value
  and interval, and the delta method on the ratio of means for the relative interval.

A figure that cannot be computed (an empty arm, a control that never converted, no
variance at all) is None, never a made-up zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

__all__ = ["CONFIDENCE", "Uplift", "mean_uplift", "proportion_uplift"]

CONFIDENCE = 0.95
# The standard library's normal quantile: importing scipy.stats costs every command
# (serve, query, demo) seconds at start-up, so it is imported where a t-test needs it.
_Z = NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)


def _normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal, precise far in the tail (erfc, not 1 - cdf)."""
    return 0.5 * math.erfc(z / math.sqrt(2))


@dataclass(frozen=True, slots=True)
class Uplift:
    """Arm minus control: ``absolute`` with its interval, ``relative`` (a fraction of
    the control's figure) with its interval, and the two-sided p-value."""

    absolute: float | None
    absolute_ci: tuple[float, float] | None
    relative: float | None
    relative_ci: tuple[float, float] | None
    p_value: float | None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("absolute_ci", "relative_ci"):
            if out[key] is not None:
                out[key] = [_round(v) for v in out[key]]
        for key in ("absolute", "relative", "p_value"):
            out[key] = _round(out[key])
        return out


def _round(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 6)


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def proportion_uplift(x_arm: int, n_arm: int, x_ctl: int, n_ctl: int) -> Uplift:
    """Conversion uplift: ``x`` converted out of ``n`` in the arm and in the control."""
    if n_arm <= 0 or n_ctl <= 0:
        return Uplift(None, None, None, None, None)
    p1, p0 = x_arm / n_arm, x_ctl / n_ctl
    diff = p1 - p0
    se = math.sqrt(p1 * (1 - p1) / n_arm + p0 * (1 - p0) / n_ctl)
    ci = (diff - _Z * se, diff + _Z * se) if se > 0 else None
    pooled = (x_arm + x_ctl) / (n_arm + n_ctl)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n_arm + 1 / n_ctl))
    # Both arms all converted or none did: no evidence of a difference either way.
    p_value = 2 * _normal_sf(abs(diff) / se0) if se0 > 0 else None
    relative: float | None = None
    rel_ci: tuple[float, float] | None = None
    if p0 > 0:
        relative = p1 / p0 - 1
        if x_arm > 0:
            se_log = math.sqrt((1 - p1) / x_arm + (1 - p0) / x_ctl)
            log_rr = math.log(p1 / p0)
            rel_ci = (math.exp(log_rr - _Z * se_log) - 1, math.exp(log_rr + _Z * se_log) - 1)
    return Uplift(diff, ci, relative, rel_ci, p_value)


def mean_uplift(arm: Sequence[float] | np.ndarray, ctl: Sequence[float] | np.ndarray) -> Uplift:
    """ARPU uplift: one value per user (zero for a user who spent nothing)."""
    a = np.asarray(arm, dtype=float)
    c = np.asarray(ctl, dtype=float)
    if a.size == 0 or c.size == 0:
        return Uplift(None, None, None, None, None)
    m1, m0 = float(a.mean()), float(c.mean())
    diff = m1 - m0
    ci: tuple[float, float] | None = None
    p_value: float | None = None
    v1 = float(a.var(ddof=1)) if a.size > 1 else 0.0
    v0 = float(c.var(ddof=1)) if c.size > 1 else 0.0
    if a.size > 1 and c.size > 1 and (v1 > 0 or v0 > 0):
        from scipy import stats

        res = stats.ttest_ind(a, c, equal_var=False)
        p_value = _finite(float(res.pvalue))
        low, high = res.confidence_interval(CONFIDENCE)
        if math.isfinite(low) and math.isfinite(high):
            ci = (float(low), float(high))
    relative: float | None = None
    rel_ci: tuple[float, float] | None = None
    if m0 > 0:
        ratio = m1 / m0
        relative = ratio - 1
        # Delta method: var(m1/m0) ~ ratio^2 (var(m1)/m1^2 + var(m0)/m0^2).
        if m1 > 0:
            se = ratio * math.sqrt(v1 / (a.size * m1 * m1) + v0 / (c.size * m0 * m0))
            if se > 0:
                rel_ci = (relative - _Z * se, relative + _Z * se)
    return Uplift(diff, ci, relative, rel_ci, p_value)
