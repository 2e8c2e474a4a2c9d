"""Spreading a numba pass over threads, by contiguous ranges of users or groups.

The passes are independent per user (or funnel group) and write only their own rows
of the outputs, and the kernels release the interpreter lock (``nogil``), so plain
threads over contiguous ranges run them on every core. Small inputs stay on one thread:
starting threads costs more than the pass.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

__all__ = ["MIN_PER_THREAD", "spread"]

# Fewer users than this per thread are not worth a thread of their own.
MIN_PER_THREAD = 50_000


def spread(run: Callable[[int, int], None], n: int, threads: int | None = None) -> None:
    """Call ``run(lo, hi)`` over ``[0, n)`` in contiguous ranges, one per thread."""
    want = threads if threads is not None else (os.cpu_count() or 1)
    k = max(1, min(want, n // MIN_PER_THREAD))
    if k == 1:
        run(0, n)
        return
    bounds = [n * i // k for i in range(k + 1)]
    with ThreadPoolExecutor(k, thread_name_prefix="touchline-analyze") as pool:
        for f in [pool.submit(run, bounds[i], bounds[i + 1]) for i in range(k)]:
            f.result()
