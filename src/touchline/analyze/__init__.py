"""The journey analysis engine: funnels, retention, paths, lifecycle, distributions,
intervals, RFM, lifecycle stages, layer transitions and journey-map diagnosis.

    >>> from touchline.analyze import Analyzer, DuckDBEventSource
    >>> result = Analyzer(DuckDBEventSource(conn)).run("funnel", spec)

See docs/analysis.md. Names are imported on first use, so loading the plugin hooks
(every CLI start) does not pull in pandas and numba.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["KINDS", "Analyzer", "ArrowEventSource", "DuckDBEventSource", "EventSource",
           "Result", "StoreEventSource"]

_WHERE = {"KINDS": "engine", "Analyzer": "engine", "Result": "result",
          "ArrowEventSource": "source", "DuckDBEventSource": "source",
          "EventSource": "source", "StoreEventSource": "source"}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(name)
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
