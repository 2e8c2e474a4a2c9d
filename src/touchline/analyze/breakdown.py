"""Breakdowns: split users (or events) by an event property, a profile property or segments.

``{"property": "channel"}`` splits by an event property, ``{"property": "group", "on":
"profile"}`` (or ``user.group``) by a profile property, ``{"segments": ["a", "b"]}`` by
saved segments (a user may fall in several). At most ``limit`` values (default 20) are
kept, the largest; the rest are summed as ``(other)``.

Which event decides an event property: ``events`` splits each event by its own value,
funnels use their attribution rule (first, last or a given step of the counted attempt),
and every other analysis, which counts users, takes the user's first (or, with
``"attribution": "last"``, last) event among those it starts from (:func:`user_splits`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import InvalidInput
from ..track.records import NAME_RE
from .cache import EventCache
from .result import i64

__all__ = ["NONE_LABEL", "OTHER_LABEL", "Breakdown", "SegmentResolver", "Splits",
           "deciding_rows", "parse_breakdown", "user_splits"]

NONE_LABEL = "(none)"
OTHER_LABEL = "(other)"
# (project, segment name) -> user ids of its members
SegmentResolver = Callable[[str, str], Sequence[int]]
Bool = npt.NDArray[np.bool_]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Breakdown:
    prop: str | None
    on: str  # event | profile | segment
    segments: tuple[str, ...] = ()
    attribution: str = "first"  # funnels: first | last | step
    step: int = 0
    limit: int = 20

    def split(
        self,
        cache: EventCache,
        users: npt.NDArray[np.int64],
        rows: npt.NDArray[np.int64] | None,
        resolver: SegmentResolver | None,
        project: str,
    ) -> list[tuple[str, npt.NDArray[np.bool_]]]:
        """Labels and, per label, which of ``users`` (dense indexes) fall under it.

        ``rows`` gives, per user, the event row whose property decides (event
        breakdowns only; -1 means none).
        """
        if self.on == "segment":
            if resolver is None:
                raise InvalidInput("breakdown.segments", "segments are not available here")
            out = []
            for name in self.segments:
                members = cache.user_positions(resolver(project, name))
                mask = np.zeros(cache.n_users, bool)
                mask[members] = True
                out.append((name, mask[users]))
            return out
        assert self.prop is not None
        if self.on == "profile":
            col = cache.profile_prop(self.prop)
            codes = col.codes[users]
        else:
            if rows is None:
                raise InvalidInput("breakdown.property", "event breakdowns need an event per user")
            col = cache.prop(self.prop)
            codes = np.where(rows >= 0, col.codes[np.maximum(rows, 0)], -1)
        return label_masks(codes, col.values, self.limit)


def label_masks(codes: npt.NDArray[np.int32], values: Sequence[str], limit: int,
                ) -> list[tuple[str, npt.NDArray[np.bool_]]]:
    """Group positions by their value code: the ``limit`` most common, then the rest."""
    shifted = codes.astype(np.int64) + 1  # 0 = unset
    counts = np.bincount(shifted, minlength=len(values) + 1)
    present = [c for c in np.argsort(-counts, kind="stable") if counts[c] > 0]
    keep = present[:limit]
    out: list[tuple[str, npt.NDArray[np.bool_]]] = []
    for c in keep:
        out.append((NONE_LABEL if c == 0 else values[c - 1], shifted == c))
    if len(present) > limit:
        out.append((OTHER_LABEL, ~np.isin(shifted, keep)))
    return out


def deciding_rows(cache: EventCache, rows: Bool, *, last: bool) -> I64:
    """Per user of the cache, its first (or last) row where ``rows`` holds; -1 for none.

    Rows are in (user, time) order, so a user's first and last are where the user
    changes along the selected rows.
    """
    sel = np.flatnonzero(rows)
    out = np.full(cache.n_users, -1, np.int64)
    if len(sel):
        u = cache.uidx[sel]
        change = np.flatnonzero(np.diff(u) != 0)
        pick = np.append(change, len(sel) - 1) if last else np.concatenate([[0], change + 1])
        out[u[pick]] = sel[pick]
    return out


@dataclass(frozen=True)
class Splits:
    """A breakdown of users: per label, a mask over all users of the cache.

    Analyses that count users (not events) answer a breakdown by running their own
    body once per label; :meth:`parts` builds that list and :meth:`open` reads a cell
    ``NAME/LABEL`` back, so every kind names and opens breakdown cells the same way.
    """

    masks: dict[str, Bool] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.masks)

    def items(self) -> list[tuple[str, Bool]]:
        return list(self.masks.items())

    def get(self, label: str) -> Bool | None:
        return self.masks.get(label)

    def parts(self, body: Callable[[Bool, str], dict[str, Any]]) -> list[dict[str, Any]]:
        """``[{"value": LABEL, **body(mask, "/LABEL")}]``: ``body`` writes the suffix
        onto each cell it names."""
        return [{"value": label, **body(mask, f"/{label}")} for label, mask in self.masks.items()]

    def open(self, cell: str) -> tuple[str, Bool | None] | None:
        """``(base cell, label mask or None)``; None for an unknown label. A layer or
        group name may itself hold a slash, so the label is the part after the first
        slash that names one; a cell with no such part is taken whole."""
        if not self.masks:
            return cell, None
        at = cell.find("/")
        while at >= 0:
            mask = self.masks.get(cell[at + 1:])
            if mask is not None:
                return cell[:at], mask
            at = cell.find("/", at + 1)
        return cell, None

    def open_among(self, cell: str, users: I64) -> tuple[str, Bool] | None:
        """:meth:`open` with the label mask taken over ``users`` (dense indexes): the
        base cell and which of ``users`` the label keeps (all of them with no label)."""
        opened = self.open(cell)
        if opened is None:
            return None
        base, mask = opened
        return base, (np.ones(len(users), bool) if mask is None else mask[users])


def bucket_cells(splits: Splits, users: I64, bucket: I64, n_buckets: int
                 ) -> Callable[[str], I64 | None]:
    """The cell opener of a per-user histogram: ``users`` (with a breakdown label,
    ``users/LABEL``) and ``bucket:N``, ``bucket[i]`` being the bucket of ``users[i]``."""

    def cell_users(cell: str) -> I64 | None:
        opened = splits.open_among(cell, users)
        if opened is None:
            return None
        base, pick = opened
        if base == "users":
            return i64(users[pick])
        kind, _, arg = base.partition(":")
        if kind != "bucket" or not arg.isdigit() or int(arg) >= n_buckets:
            return None
        return i64(users[pick & (bucket == int(arg))])

    return cell_users


def user_splits(
    cache: EventCache, raw: Any, resolver: SegmentResolver | None, project: str, what: str, *,
    rows: Callable[[], Bool] | None = None, among: Callable[[], I64] | None = None,
) -> Splits:
    """Split users for analyses that count users rather than events.

    A profile property or segments decide by themselves. For an event property the
    value is taken on each user's first (``"attribution": "first"``, the default) or
    last (``"last"``) event among ``rows()``: the events the analysis starts from,
    which each kind names (``what`` names the analysis in errors). ``among()`` (dense
    user indexes) limits the split to the users the analysis can count, so the
    ``limit`` most common values are ranked among them. Both are called only when a
    breakdown is asked for: without one, a kind pays nothing here.
    """
    bd = parse_breakdown(raw)
    if bd is None:
        return Splits()
    if bd.attribution == "step":
        raise InvalidInput("breakdown.attribution",
                           f"step applies to funnels only; {what} takes first or last")
    users = np.arange(cache.n_users, dtype=np.int64) if among is None else among()
    decide: I64 | None = None
    if bd.on == "event":
        if rows is None:
            raise InvalidInput("breakdown.property",
                               f"{what} splits by a profile property (user.NAME) or segments")
        decide = deciding_rows(cache, rows(), last=bd.attribution == "last")[users]
    out: dict[str, Bool] = {}
    for label, m in bd.split(cache, users, decide, resolver, project):
        full = np.zeros(cache.n_users, bool)
        full[users[m]] = True
        out[label] = full
    return Splits(out)


def parse_breakdown(raw: Any, field: str = "breakdown") -> Breakdown | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise InvalidInput(field, "must be an object")
    limit = raw.get("limit", 20)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise InvalidInput(f"{field}.limit", "must be an integer from 1 to 1000")
    attribution = raw.get("attribution", "first")
    if attribution not in ("first", "last", "step"):
        raise InvalidInput(f"{field}.attribution", "must be first, last or step")
    step = raw.get("step", 1)
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise InvalidInput(f"{field}.step", "must be a step number starting at 1")
    if "segments" in raw:
        segs = raw["segments"]
        if not isinstance(segs, list) or not segs or not all(isinstance(s, str) for s in segs):
            raise InvalidInput(f"{field}.segments", "must be a non-empty list of segment names")
        return Breakdown(None, "segment", tuple(segs), limit=limit)
    prop = raw.get("property")
    if not isinstance(prop, str):
        raise InvalidInput(f"{field}.property", "is required (or give segments)")
    on = raw.get("on", "event")
    if prop.startswith("user."):
        prop, on = prop[5:], "profile"
    if on not in ("event", "profile"):
        raise InvalidInput(f"{field}.on", "must be event or profile")
    if not NAME_RE.match(prop):
        raise InvalidInput(f"{field}.property", "must be a valid property name")
    return Breakdown(prop, on, attribution=attribution, step=step - 1, limit=limit)
