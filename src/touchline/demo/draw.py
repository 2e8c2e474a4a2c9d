"""Scalar random draws served from numpy blocks.

The per-visit code needs many small decisions (does this order get paid, how many
dishes). Calling numpy once per decision is slow; Python's ``random`` would make the
stream depend on two generators. :class:`Draw` fetches uniforms and normals from one
numpy ``Generator`` in blocks and hands them out one at a time, so the whole demo is
a pure function of its seed.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate
from typing import TypeVar

import numpy as np

__all__ = ["Draw", "cumulative"]

T = TypeVar("T")

_BLOCK = 1 << 16


def cumulative(weights: Sequence[float]) -> tuple[float, ...]:
    """Normalised cumulative weights, for :meth:`Draw.weighted`."""
    total = float(sum(weights))
    return tuple(w / total for w in accumulate(weights))


class Draw:
    """Uniforms, normals and the small choices built on them."""

    __slots__ = ("_i", "_j", "_n", "_rng", "_u")

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._u: list[float] = []
        self._n: list[float] = []
        self._i = 0
        self._j = 0

    @property
    def rng(self) -> np.random.Generator:
        return self._rng

    def u(self) -> float:
        """A uniform in [0, 1)."""
        i = self._i
        if i >= len(self._u):
            self._u = self._rng.random(_BLOCK).tolist()
            i = 0
        self._i = i + 1
        return self._u[i]

    def z(self) -> float:
        """A standard normal."""
        j = self._j
        if j >= len(self._n):
            self._n = self._rng.standard_normal(_BLOCK).tolist()
            j = 0
        self._j = j + 1
        return self._n[j]

    def chance(self, p: float) -> bool:
        return self.u() < p

    def below(self, n: int) -> int:
        """An integer in [0, n)."""
        return int(self.u() * n)

    def between(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi] (both included)."""
        return lo + int(self.u() * (hi - lo + 1))

    def pick(self, items: Sequence[T]) -> T:
        return items[int(self.u() * len(items))]

    def weighted(self, cum: Sequence[float]) -> int:
        """An index drawn with the weights behind ``cum`` (see :func:`cumulative`)."""
        return min(bisect_right(cum, self.u()), len(cum) - 1)

    def normal(self, mean: float, sd: float) -> float:
        return mean + sd * self.z()

    def minutes(self, lo: float, hi: float) -> int:
        """A gap in milliseconds, uniform between ``lo`` and ``hi`` minutes."""
        return int((lo + (hi - lo) * self.u()) * 60_000)

    def seconds(self, lo: float, hi: float) -> int:
        """A gap in milliseconds, uniform between ``lo`` and ``hi`` seconds."""
        return int((lo + (hi - lo) * self.u()) * 1000)
