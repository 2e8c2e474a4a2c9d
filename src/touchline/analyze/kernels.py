"""Numba passes for retention, paths, lifecycle and intervals.

Each walks the rows of one user at a time (the cache is sorted by user, then time) and
keeps a little per-user state, so each is a single pass over the selected rows. The
funnel pass lives in :mod:`.funnel_kernel`.
"""

# Numba infers these kernels' types from their arguments at call time; they are
# left unannotated on purpose.
# mypy: disable-error-code="no-untyped-def"

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from .spread import spread

__all__ = ["interval_pass", "lifecycle_pass", "paths_pass", "retention_pass", "rfm_pass"]


@njit(cache=True, inline="always")
def _hit(codes, lut, extra, use_extra, r):
    return lut[codes[r]] and (not use_extra or extra[r])


@njit(cache=True, inline="always")
def _period(bounds, t):
    """Index of the period holding ``t`` (-1 before the first bound), by binary search:
    walking the bounds from the start for every user cost more than the rest."""
    return np.searchsorted(bounds, t, side="right") - 1


@njit(cache=True)
def retention_pass(
    ustart, times, codes, s_lut, s_extra, s_use, r_lut, r_extra, r_use, bounds, n_cohorts,
    bracket_lo, bracket_hi, first_time, rolling, period_ms, on_or_after, target_c, target_b, include, counts, sizes, out_mask,
):
    """Cohort sizes and retained users per (cohort, bracket).

    ``bounds`` are calendar period bounds (period ``i`` is ``[bounds[i], bounds[i+1])``);
    cohorts are periods ``0..n_cohorts-1``. A user is retained in bracket ``b`` when a
    return event falls ``n`` periods after the start with ``lo[b] <= n <= hi[b]``
    (``on_or_after``: when some return is ``lo[b]`` or more periods after). With
    ``rolling`` periods are ``period_ms`` long and count from the start event itself.
    Users of the (``target_c``, ``target_b``) cell are flagged in ``out_mask``
    (``target_b`` -1: the cohort itself). Only users with ``include[u]`` count (an
    ``include`` of length 1 means everyone).
    """
    n_users = ustart.shape[0] - 1
    all_users = include.shape[0] == 1
    n_b = bracket_lo.shape[0]
    cohort_anchor = np.full(n_cohorts, -1, np.int64)
    cohort_list = np.empty(n_cohorts, np.int64)
    hit = np.zeros(n_b, np.bool_)
    hit_list = np.empty(max(n_b, 1), np.int64)
    max_n = bracket_hi.max() if n_b else 0
    # Which bracket a period number falls in; a per-return loop over brackets only when
    # brackets overlap.
    b_of = np.full(max_n + 1, -1, np.int64)
    overlapping = False
    for b in range(n_b):
        for n in range(bracket_lo[b], bracket_hi[b] + 1):
            if b_of[n] >= 0:
                overlapping = True
            b_of[n] = b
    longest = 1
    for u in range(n_users):
        longest = max(longest, ustart[u + 1] - ustart[u])
    s_rows = np.empty(longest, np.int64)
    for u in range(n_users):
        if not all_users and not include[u]:
            continue
        # The start events: only the first one for a first-time start, so stop there.
        n_s = 0
        for r in range(ustart[u], ustart[u + 1]):
            if _hit(codes, s_lut, s_extra, s_use, r):
                s_rows[n_s] = r
                n_s += 1
                if first_time:
                    break
        n_c = 0
        for i in range(n_s):
            t = times[s_rows[i]]
            c = _period(bounds, t)
            if 0 <= c < n_cohorts and cohort_anchor[c] < 0:
                cohort_anchor[c] = t
                cohort_list[n_c] = c
                n_c += 1
        if n_c == 0:
            continue
        for i in range(n_c):
            c = cohort_list[i]
            anchor = cohort_anchor[c]
            sizes[c] += 1
            if target_c == c and target_b < 0:
                out_mask[u] = True
            best = -1
            n_hit = 0
            for r in range(ustart[u], ustart[u + 1]):
                if not _hit(codes, r_lut, r_extra, r_use, r):
                    continue
                t = times[r]
                if rolling:
                    if t < anchor:
                        continue
                    n = (t - anchor) // period_ms
                else:
                    n = _period(bounds, t) - c
                if n < 0 or (n > max_n and not on_or_after):
                    continue
                if n > best:
                    best = n
                if on_or_after or n > max_n:
                    continue
                if overlapping:
                    for b in range(n_b):
                        if bracket_lo[b] <= n <= bracket_hi[b] and not hit[b]:
                            hit[b] = True
                            hit_list[n_hit] = b
                            n_hit += 1
                else:
                    b = b_of[n]
                    if b >= 0 and not hit[b]:
                        hit[b] = True
                        hit_list[n_hit] = b
                        n_hit += 1
            if on_or_after:
                if best >= 0:
                    for b in range(n_b):
                        if best >= bracket_lo[b]:
                            counts[c, b] += 1
                            if target_c == c and target_b == b:
                                out_mask[u] = True
            else:
                for i_h in range(n_hit):
                    b = hit_list[i_h]
                    hit[b] = False
                    counts[c, b] += 1
                    if target_c == c and target_b == b:
                        out_mask[u] = True
            cohort_anchor[c] = -1


@njit(cache=True)
def paths_pass(
    ustart, times, node, keep, is_start, is_end, has_start, has_end, steps, gap_ms,
    out_nodes, out_user, count_only,
):
    """Paths of up to ``steps`` nodes, one per session, written to ``out_nodes`` (-1
    padded) with their user in ``out_user``; returns how many. Sessions split where two
    kept events are more than ``gap_ms`` apart; repeats of a node collapse. With a start
    the path begins at the session's first start event; with an end it stops at the
    first end event after that (paths not reaching it within ``steps`` are dropped);
    with only an end, the path is the ``steps`` nodes up to the session's first end,
    right-aligned so the end sits in the last column."""
    n_users = ustart.shape[0] - 1
    buf = np.empty(steps, np.int64)
    n_out = 0
    for u in range(n_users):
        last_t = np.int64(-(2**62))
        last_node = -1
        active = False  # a path is being collected in this session
        done = False  # this session's path is finished
        length = 0
        ring = 0  # end-only mode: ring buffer position
        for r in range(ustart[u], ustart[u + 1]):
            if not keep[r]:
                continue
            t = times[r]
            x = node[r]
            if t - last_t > gap_ms:
                # A new session: a path still open at a session end is kept only when no
                # end event was asked for.
                if active and not has_end and length > 0:
                    if not count_only:
                        out_nodes[n_out, :] = -1
                        out_nodes[n_out, :length] = buf[:length]
                        out_user[n_out] = u
                    n_out += 1
                active = not has_start and not has_end
                done = False
                length = 0
                ring = 0
                last_node = -1
            last_t = t
            if x == last_node:
                continue
            last_node = x
            if done:
                continue
            if has_end and not has_start:
                # Keep the last `steps` nodes until the first end event.
                buf[ring % steps] = x
                ring += 1
                if is_end[r]:
                    m = min(ring, steps)
                    if not count_only:
                        out_nodes[n_out, :] = -1
                        for i in range(m):
                            out_nodes[n_out, steps - m + i] = buf[(ring - m + i) % steps]
                        out_user[n_out] = u
                    n_out += 1
                    done = True
                continue
            if not active:
                if has_start and is_start[r]:
                    active = True
                else:
                    continue
            if length < steps:
                buf[length] = x
                length += 1
                if has_end and is_end[r] and length > 1:
                    if not count_only:
                        out_nodes[n_out, :] = -1
                        out_nodes[n_out, :length] = buf[:length]
                        out_user[n_out] = u
                    n_out += 1
                    active = False
                    done = True
            elif has_end:
                active = False  # the end is further than `steps`: dropped
                done = True
        if active and not has_end and length > 0:
            if not count_only:
                out_nodes[n_out, :] = -1
                out_nodes[n_out, :length] = buf[:length]
                out_user[n_out] = u
            n_out += 1
    return n_out


@njit(cache=True)
def lifecycle_pass(ustart, times, codes, a_lut, a_extra, a_use, bounds, n_periods, target_p,
                   target_s, include, counts, out_mask):
    """Per period ``1..n_periods``: new, returning, resurrecting, dormant users.

    Period 0 is the one before the range; rows before it only say "active before".
    Status codes: 0 new, 1 returning, 2 resurrecting, 3 dormant. Only users with
    ``include[u]`` count (length 1: everyone).
    """
    n_users = ustart.shape[0] - 1
    all_users = include.shape[0] == 1
    for u in range(n_users):
        if not all_users and not include[u]:
            continue
        first = -2  # -2: never active; -1: first active before period 0
        prev = -2
        for r in range(ustart[u], ustart[u + 1]):
            if not _hit(codes, a_lut, a_extra, a_use, r):
                continue
            t = times[r]
            p = _period(bounds, t)
            if p > n_periods:
                break
            if p == prev:
                continue
            if first == -2:
                first = p
            if p >= 1:
                if p == first:
                    s = 0
                elif prev == p - 1:
                    s = 1
                else:
                    s = 2
                counts[p, s] += 1
                if p == target_p and s == target_s:
                    out_mask[u] = True
            if prev >= 0 and p > prev + 1 and prev + 1 <= n_periods:
                counts[prev + 1, 3] += 1
                if prev + 1 == target_p and target_s == 3:
                    out_mask[u] = True
            prev = p
        if prev >= 0 and prev + 1 <= n_periods:
            counts[prev + 1, 3] += 1
            if prev + 1 == target_p and target_s == 3:
                out_mask[u] = True


@njit(cache=True)
def interval_pass(ustart, times, is_a, is_b, t_from, t_to, each, out_ms, out_user):

    """Time from an A event (in the range) to the next B event after it, per user: the
    first A only, or (``each``) every A whose next B has not been paired yet."""
    n_users = ustart.shape[0] - 1
    n_out = 0
    for u in range(n_users):
        pending = -(2**62)
        for r in range(ustart[u], ustart[u + 1]):
            t = times[r]
            if is_b[r] and pending != -(2**62) and t >= pending:
                out_ms[n_out] = t - pending
                out_user[n_out] = u
                n_out += 1
                pending = -(2**62)
                if not each:
                    break
                if is_a[r] and t_from <= t < t_to:
                    pending = t  # A = B: each event opens the next interval
                continue
            if is_a[r] and t_from <= t < t_to and pending == -(2**62):
                pending = t
    return n_out


def rfm_pass(ustart: Any, times: Any, codes: Any, lut: Any, extra: Any, use_extra: bool,
             m_codes: Any, m_values: Any, has_m: bool, t_from: int, t_to: int, out_last: Any,
             out_f: Any, out_m: Any) -> None:
    """Per user, over the selected events in ``[t_from, t_to)``: the last time, the count
    and the sum of the monetary value (``m_values[m_codes[row]]``, NaN and unset as 0).
    Ranges of users run on threads of their own."""

    def run(lo: int, hi: int) -> None:
        _rfm_users(lo, hi, ustart, times, codes, lut, extra, use_extra, m_codes, m_values,
                   has_m, t_from, t_to, out_last, out_f, out_m)

    spread(run, ustart.shape[0] - 1)


@njit(cache=True, nogil=True)
def _rfm_users(u_lo, u_hi, ustart, times, codes, lut, extra, use_extra, m_codes, m_values,
               has_m, t_from, t_to, out_last, out_f, out_m):
    for u in range(u_lo, u_hi):
        last = np.int64(-(2**62))
        f = 0
        m = 0.0
        for r in range(ustart[u], ustart[u + 1]):
            t = times[r]
            if t < t_from or t >= t_to:
                continue
            ok = lut[codes[r]]
            if use_extra:
                ok = ok and extra[r]
            if not ok:
                continue
            last = t
            f += 1
            if has_m:
                c = m_codes[r]
                if c >= 0:
                    v = m_values[c]
                    if v == v:
                        m += v
        out_last[u] = last
        out_f[u] = f
        out_m[u] = m
