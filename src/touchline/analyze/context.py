"""What an analysis receives: the project's cache, the common spec fields, and helpers
for turning event selections (a name or list of names plus filters) into row masks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import InvalidInput
from .breakdown import SegmentResolver
from .cache import EventCache
from .filters import Filter, parse_filter, row_mask
from .spec import CommonSpec, period_bounds

__all__ = ["Context", "EventSel", "parse_event_sel"]

Bool = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class EventSel:
    """Events by name (one, several, or ``$any``) with an optional filter."""

    events: tuple[str, ...]
    where: Filter | None
    label: str

    @property
    def any_event(self) -> bool:
        return self.events == ("$any",)


def parse_event_sel(raw: Any, field: str) -> EventSel:
    if isinstance(raw, str):
        raw = {"event": raw}
    if not isinstance(raw, Mapping):
        raise InvalidInput(field, "must be an event name or {event, where}")
    ev = raw.get("event")
    if isinstance(ev, str) and ev:
        events: tuple[str, ...] = (ev,)
    elif isinstance(ev, list) and ev and all(isinstance(e, str) and e for e in ev):
        events = tuple(ev)
    else:
        raise InvalidInput(f"{field}.event", "is required: an event name or a list of names")
    label = raw.get("name", events[0] if len(events) == 1 else " | ".join(events))
    if not isinstance(label, str):
        raise InvalidInput(f"{field}.name", "must be a string")
    return EventSel(events, parse_filter(raw.get("where"), f"{field}.where"), label)


@dataclass
class Context:
    cache: EventCache
    common: CommonSpec
    resolver: SegmentResolver | None = None

    @property
    def global_where(self) -> Filter | None:
        return parse_filter(self.common.where, "where")

    def codes_of(self, sel: EventSel) -> npt.NDArray[np.int32]:
        return np.array([c for e in sel.events if (c := self.cache.code(e)) >= 0], np.int32)

    def code_lut(self, sel: EventSel) -> Bool:
        """Per event code: does the selection name it?"""
        lut = np.zeros(len(self.cache.vocab) + 1, bool)
        if sel.any_event:
            lut[:] = True
        else:
            lut[self.codes_of(sel)] = True
        return lut

    def is_plain(self, sel: EventSel) -> bool:
        """True when the selection is decided by the event name alone."""
        return sel.where is None and self.common.where is None

    def mask(self, sel: EventSel) -> Bool:
        """Rows matching the selection, the spec's global filter included."""
        m: Bool = self.code_lut(sel)[self.cache.codes]
        for f in (sel.where, self.global_where):
            fm = row_mask(self.cache, f)
            if fm is not None:
                m &= fm
        return m

    def selector(self, sel: EventSel) -> tuple[Bool, Bool, bool]:
        """For kernels: (per-code lut, per-row mask, whether the mask is needed). A plain
        selection needs no row mask, which saves a pass over every event."""
        if self.is_plain(sel):
            return self.code_lut(sel), np.zeros(1, bool), False
        return np.ones(len(self.cache.vocab) + 1, bool), self.mask(sel), True

    def range_mask(self) -> Bool:
        t = self.cache.times
        return (t >= self.common.start_ms) & (t < self.common.end_ms)

    def periods(self, period: str, *, before: int = 0, after: int = 0,
                ) -> tuple[list[date], npt.NDArray[np.int64]]:
        starts, bounds = period_bounds(self.common.start, self.common.end, period,
                                       self.common.tz, before=before, after=after)
        return starts, np.array(bounds, np.int64)
