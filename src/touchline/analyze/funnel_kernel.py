"""The funnel pass: one numba loop over events sorted by (group, time).

State per step ``j`` (and per exclusion barrier level ``L``): the latest start time of
an attempt that has completed step ``j``, the earliest time that attempt reached it,
and the rows where it started and reached it. Keeping only the latest start is enough
because a later start leaves more of the window for the steps still to come, so the
pass is linear in events times the steps an event matches, whatever the step count.

Rules (see docs/analysis.md): a step event at time ``t`` moves an attempt from step
``j-1`` to ``j`` when ``t - start <= window``; steps are scanned highest first so one
event never fills two steps; events at the same instant are taken in the order of the
first step they match (so simultaneous steps count as in order), exclusion-only events
after them. An exclusion event between steps ``a`` and ``b`` bars every attempt then
sitting at a step in ``[a, b)`` from entering ``b``; a group whose furthest reach is
only possible through a barred attempt is dropped (``out_k = -1``).
"""

# Numba infers these kernels' types from their arguments at call time; they are
# left unannotated on purpose.
# mypy: disable-error-code="no-untyped-def"

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from .spread import spread

__all__ = ["NONE", "funnel_any", "funnel_fast", "funnel_ordered"]

NONE = np.int64(-(2**62))


@njit(cache=True, inline="always")
def _lowbit(b: np.int64) -> int:
    j = 0
    while (b >> j) & 1 == 0:
        j += 1
    return j


@njit(cache=True)
def _sort_run(keys, rows, m):
    """Stable insertion sort of ``rows[:m]`` by ``keys[:m]`` (runs are short)."""
    for i in range(1, m):
        k = keys[i]
        r = rows[i]
        j = i - 1
        while j >= 0 and keys[j] > k:
            keys[j + 1] = keys[j]
            rows[j + 1] = rows[j]
            j -= 1
        keys[j + 1] = k
        rows[j + 1] = r


@njit(cache=True)
def funnel_ordered(
    gstart, order, use_order, times, codes, lut, extra, use_extra, xlut, xextra, use_xextra,
    n_steps, window, t_from, t_to, strict, ex_a, ex_b, ex_level, level_barrier, attr_step,
    out_k, out_start, out_dur, out_first_row, out_last_row, out_attr_row,
):
    """The general pass: ordered funnels with exclusions (one state per step and barrier
    level), strict funnels, and groups over a custom row ``order`` (a held property).
    Rows of group ``g`` are ``order[gstart[g]:gstart[g+1]]`` (or the cache rows
    themselves when not ``use_order``). Outputs per group: steps reached (-1: dropped by
    an exclusion), start time, per-step time from the start, and the rows of the first
    step, the last reached step and step ``attr_step``."""
    n_groups = gstart.shape[0] - 1
    n_levels = level_barrier.shape[0]
    n_ex = ex_a.shape[0]
    st = np.full((n_steps, n_levels), NONE, np.int64)
    rc = np.full((n_steps, n_levels), NONE, np.int64)
    sr = np.full((n_steps, n_levels), -1, np.int64)
    rr = np.full((n_steps, n_levels), -1, np.int64)
    upd = np.full((n_steps, n_levels), -1, np.int64)
    any_st = np.full(n_steps, NONE, np.int64)
    # The best attempt that ever reached each step (latest start, then earliest reach).
    rec_s = np.full(n_steps, NONE, np.int64)
    rec_t = np.full(n_steps, NONE, np.int64)
    rec_sr = np.full(n_steps, -1, np.int64)
    rec_rr = np.full(n_steps, -1, np.int64)
    t_last = t_to + window
    # Scratch for runs of same-instant rows, sized once: a reassigned array in the
    # loop would cost reference counting on every row.
    longest = 1
    for g in range(n_groups):
        longest = max(longest, gstart[g + 1] - gstart[g])
    buf_rows = np.empty(longest, np.int64)
    buf_keys = np.empty(longest, np.int64)
    for g in range(n_groups):
        hi = -1
        top = -1
        any_hi = -1
        p = gstart[g]
        end = gstart[g + 1]
        while p < end:
            r0 = order[p] if use_order else p
            t = times[r0]
            # The run of rows at this same instant, processed in step order.
            q = p + 1
            while q < end and times[order[q] if use_order else q] == t:
                q += 1
            if t < t_from or t > t_last:
                p = q
                continue
            m = q - p
            if m > 1:
                for i in range(m):
                    r = order[p + i] if use_order else p + i
                    b = lut[codes[r]]
                    if use_extra:
                        b |= extra[r]
                    xb = xlut[codes[r]]
                    if use_xextra:
                        xb |= xextra[r]
                    buf_rows[i] = r
                    if b != 0:
                        buf_keys[i] = _lowbit(b)
                    elif xb != 0:
                        buf_keys[i] = n_steps
                    else:
                        buf_keys[i] = n_steps + 1
                _sort_run(buf_keys, buf_rows, m)
            for i in range(m):
                r = buf_rows[i] if m > 1 else r0
                b = lut[codes[r]]
                if use_extra:
                    b |= extra[r]
                xb = xlut[codes[r]]
                if use_xextra:
                    xb |= xextra[r]
                if strict and b == 0:
                    # Any other event breaks every attempt under way.
                    for j in range(hi + 1):
                        for L in range(n_levels):
                            st[j, L] = NONE
                    hi = -1
                    continue
                if xb != 0 and not strict:
                    for e in range(n_ex):
                        if (xb >> e) & 1 == 0:
                            continue
                        a = ex_a[e]
                        bb = ex_b[e]
                        le = ex_level[e]
                        for j in range(a, min(bb, hi + 1)):
                            for L in range(n_levels):
                                if level_barrier[L] <= bb or st[j, L] == NONE:
                                    continue
                                s = st[j, L]
                                if s > st[j, le] or (s == st[j, le] and rc[j, L] < rc[j, le]):
                                    st[j, le] = s
                                    rc[j, le] = rc[j, L]
                                    sr[j, le] = sr[j, L]
                                    rr[j, le] = rr[j, L]
                                st[j, L] = NONE
                if b == 0:
                    continue
                j = n_steps - 1
                while j >= 0:
                    if (b >> j) & 1 == 0:
                        j -= 1
                        continue
                    if j == 0:
                        if t < t_to and t > st[0, 0]:
                            st[0, 0] = t
                            rc[0, 0] = t
                            sr[0, 0] = r
                            rr[0, 0] = r
                            upd[0, 0] = r
                            if hi < 0:
                                hi = 0
                            if top < 0:
                                top = 0
                            rec_s[0] = t
                            rec_t[0] = t
                            rec_sr[0] = r
                            rec_rr[0] = r
                        elif strict and t < t_to and t == st[0, 0]:
                            upd[0, 0] = r
                        if n_ex > 0 and t < t_to and t > any_st[0]:
                            any_st[0] = t
                            if any_hi < 0:
                                any_hi = 0
                    else:
                        if j - 1 <= hi:
                            for L in range(n_levels):
                                s = st[j - 1, L]
                                if s == NONE or t - s > window or level_barrier[L] == j:
                                    continue
                                if s > st[j, L]:
                                    st[j, L] = s
                                    rc[j, L] = t
                                    sr[j, L] = sr[j - 1, L]
                                    rr[j, L] = r
                                    upd[j, L] = r
                                    if j > hi:
                                        hi = j
                                    if j > top:
                                        top = j
                                    if s > rec_s[j] or (s == rec_s[j] and t < rec_t[j]):
                                        rec_s[j] = s
                                        rec_t[j] = t
                                        rec_sr[j] = sr[j - 1, L]
                                        rec_rr[j] = r
                                elif strict and s == st[j, L]:
                                    upd[j, L] = r
                        if n_ex > 0 and j - 1 <= any_hi:
                            s = any_st[j - 1]
                            if s != NONE and t - s <= window and s > any_st[j]:
                                any_st[j] = s
                                if j > any_hi:
                                    any_hi = j
                    j -= 1
                if strict:
                    # Attempts not advanced by this very event are broken by it.
                    for jj in range(hi + 1):
                        for L in range(n_levels):
                            if upd[jj, L] != r:
                                st[jj, L] = NONE
            p = q
        # Furthest step reached by an attempt that was never disqualified.
        k = 0
        for j in range(top, -1, -1):
            if rec_s[j] != NONE:
                k = j + 1
                break
        out_k[g] = -1 if (n_ex > 0 and any_hi + 1 > k) else k
        for j in range(k):
            out_dur[j, g] = rec_t[j] - rec_s[j]
        if k > 0:
            out_start[g] = rec_s[k - 1]
            out_first_row[g] = rec_sr[k - 1]
            out_last_row[g] = rec_rr[k - 1]
        else:
            out_start[g] = NONE
            out_first_row[g] = -1
            out_last_row[g] = -1
        out_attr_row[g] = rec_rr[attr_step] if 0 <= attr_step < k else -1
        for j in range(max(top, any_hi) + 1):
            any_st[j] = NONE
            rec_s[j] = NONE
            rec_t[j] = NONE
            rec_sr[j] = -1
            rec_rr[j] = -1
            for L in range(n_levels):
                st[j, L] = NONE
                rc[j, L] = NONE
                sr[j, L] = -1
                rr[j, L] = -1
                upd[j, L] = -1


@njit(cache=True)
def funnel_any(
    gstart, order, use_order, times, codes, lut, extra, use_extra, n_steps, window, t_from, t_to,
    attr_step, out_k, out_start, out_dur, out_first_row, out_last_row, out_attr_row,
):
    """Steps in any order: from each possible first event, fill steps greedily within the
    window (each event fills the lowest open step it matches); keep the furthest window,
    the latest start among equals."""
    n_groups = gstart.shape[0] - 1
    dur = np.empty(n_steps, np.int64)
    rows_at = np.empty(n_steps, np.int64)
    for g in range(n_groups):
        best_k = 0
        best_s = NONE
        p0 = gstart[g]
        end = gstart[g + 1]
        for p in range(p0, end):
            r = order[p] if use_order else p
            t0 = times[r]
            if t0 < t_from or t0 >= t_to:
                continue
            b0 = lut[codes[r]]
            if use_extra:
                b0 |= extra[r]
            if b0 == 0:
                continue
            filled = np.int64(0)
            k = 0
            q = p
            while q < end:
                rq = order[q] if use_order else q
                tq = times[rq]
                if tq - t0 > window:
                    break
                bq = lut[codes[rq]]
                if use_extra:
                    bq |= extra[rq]
                open_bits = bq & ~filled
                if open_bits != 0:
                    jj = _lowbit(open_bits)
                    filled |= np.int64(1) << jj
                    rows_at[jj] = rq
                    while k < n_steps and (filled >> k) & 1 == 1:
                        dur[k] = tq - t0
                        k += 1
                    if k == n_steps:
                        break  # every step filled: nothing later can improve this start
                q += 1
            if k > best_k or (k == best_k and k > 0 and t0 >= best_s):
                best_k = k
                best_s = t0
                out_first_row[g] = r
                out_last_row[g] = rows_at[k - 1] if k > 0 else -1
                for j in range(k):
                    out_dur[j, g] = dur[j]
                out_attr_row[g] = rows_at[attr_step] if 0 <= attr_step < k else -1
        out_k[g] = best_k
        out_start[g] = best_s
        if best_k == 0:
            out_first_row[g] = -1
            out_last_row[g] = -1
            out_attr_row[g] = -1


_DEBRUIJN = np.array([
    0, 47, 1, 56, 48, 27, 2, 60, 57, 49, 41, 37, 28, 16, 3, 61, 54, 58, 35, 52, 50, 42, 21, 44,
    38, 32, 29, 23, 17, 11, 4, 62, 46, 55, 26, 59, 40, 36, 15, 53, 34, 51, 20, 43, 31, 22, 10,
    45, 25, 39, 14, 33, 19, 30, 9, 24, 13, 18, 8, 12, 7, 6, 5, 63], np.int64)


@njit(cache=True, inline="always")
def _highbit(b):
    """Index of the highest set bit of a positive int64 (de Bruijn, no loop)."""
    v = np.uint64(b)
    v |= v >> np.uint64(1)
    v |= v >> np.uint64(2)
    v |= v >> np.uint64(4)
    v |= v >> np.uint64(8)
    v |= v >> np.uint64(16)
    v |= v >> np.uint64(32)
    return _DEBRUIJN[(v * np.uint64(0x03F79D71B4CB0A89)) >> np.uint64(58)]


@njit(cache=True, nogil=True)
def _fast_groups(
    g_lo, g_hi, gstart, times, codes, lut, extra, use_extra, n_steps, window, t_from, t_to,
    attr_step, out_k, out_start, out_dur, out_first_row, out_last_row, out_attr_row,
):
    """Groups ``g_lo..g_hi`` of :func:`funnel_fast`."""
    # Per step: latest start of an attempt that reached it (it only grows, so it is also
    # the best ever), the row it started on, and when and on which row it got there.
    st = np.full(n_steps, NONE, np.int64)
    sr = np.full(n_steps, -1, np.int64)
    rt = np.full(n_steps, NONE, np.int64)
    rr = np.full(n_steps, -1, np.int64)
    # The one step a code matches, or -1 when it matches several (or none).
    single = np.full(lut.shape[0], -1, np.int64)
    for c in range(lut.shape[0]):
        b = lut[c]
        if b != 0 and b & (b - 1) == 0:
            single[c] = _lowbit(b)
    longest = 1
    for g in range(g_lo, g_hi):
        longest = max(longest, gstart[g + 1] - gstart[g])
    buf_rows = np.empty(longest, np.int64)
    buf_keys = np.empty(longest, np.int64)
    hits = np.empty(longest, np.int64)
    t_last = t_to + window
    for g in range(g_lo, g_hi):
        top = -1
        # Gather the user's step events first, without a branch per row: whether an
        # event matches a step is a coin toss the CPU cannot predict.
        n_hits = 0
        for r in range(gstart[g], gstart[g + 1]):
            hits[n_hits] = r
            b = lut[codes[r]]
            if use_extra:
                b |= extra[r]
            n_hits += b != 0
        h = 0
        while h < n_hits:
            p = hits[h]
            t = times[p]
            e = h + 1
            while e < n_hits and times[hits[e]] == t:
                e += 1
            if t < t_from or t > t_last:
                h = e
                continue
            m = e - h
            if m > 1:
                for i in range(m):
                    r = hits[h + i]
                    b = lut[codes[r]]
                    if use_extra:
                        b |= extra[r]
                    buf_rows[i] = r
                    buf_keys[i] = _lowbit(b)
                _sort_run(buf_keys, buf_rows, m)
            for i in range(m):
                r = buf_rows[i] if m > 1 else p
                b = lut[codes[r]]
                if use_extra:
                    b |= extra[r]
                while b != 0:
                    # Highest step first; one-step events (the usual case) skip the search.
                    j = single[codes[r]] if not use_extra else -1
                    if j < 0:
                        j = _highbit(b)
                    b ^= np.int64(1) << j
                    if j == 0:
                        if t < t_to and t > st[0]:
                            st[0] = t
                            sr[0] = r
                            rt[0] = t
                            rr[0] = r
                            if top < 0:
                                top = 0
                        continue
                    s = st[j - 1]
                    # st[j] only grows here, so it is also the best start ever seen at j.
                    if s == NONE or t - s > window or s <= st[j]:
                        continue
                    st[j] = s
                    sr[j] = sr[j - 1]
                    rt[j] = t
                    rr[j] = r
                    if j > top:
                        top = j
            h = e
        k = top + 1
        out_k[g] = k
        for j in range(k):
            out_dur[j, g] = rt[j] - st[j]
        if k > 0:
            out_start[g] = st[k - 1]
            out_first_row[g] = sr[k - 1]
            out_last_row[g] = rr[k - 1]
        else:
            out_start[g] = NONE
            out_first_row[g] = -1
            out_last_row[g] = -1
        out_attr_row[g] = rr[attr_step] if 0 <= attr_step < k else -1
        for j in range(top + 1):
            st[j] = NONE
            sr[j] = -1
            rt[j] = NONE
            rr[j] = -1


def funnel_fast(
    gstart: Any, times: Any, codes: Any, lut: Any, extra: Any, use_extra: bool, n_steps: int,
    window: int, t_from: int, t_to: int, attr_step: int, out_k: Any, out_start: Any,
    out_dur: Any, out_first_row: Any, out_last_row: Any, out_attr_row: Any,
) -> None:
    """:func:`funnel_ordered` for the common case (ordered, no exclusions, rows in
    cache order), with one state per step and steps found by table lookup, so the cost
    per event is the number of steps it matches. Every output of every group is
    written. Groups are independent: ranges of them run on threads of their own."""

    def run(lo: int, hi: int) -> None:
        _fast_groups(lo, hi, gstart, times, codes, lut, extra, use_extra, n_steps, window,
                     t_from, t_to, attr_step, out_k, out_start, out_dur, out_first_row,
                     out_last_row, out_attr_row)

    spread(run, gstart.shape[0] - 1)
