"""Writing the demo to a Sensors NDJSON file, the shape the importer loads.

Loading history through the importer keeps each record's time as written (the live
collector would correct client clocks with ``_flush_time`` against the moment of
receipt, moving the whole history to "now"; see docs/demo.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from .generator import generate

__all__ = ["write_sensors_ndjson"]


def write_sensors_ndjson(path: str | os.PathLike[str], seed: int, *, end_ms: int,
                         customers: int = 20_000, days: int = 100) -> int:
    """Write the demo's records to ``path``, one JSON object a line; return how many."""
    n = 0
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    with tmp.open("wb") as f:
        for batch in generate(seed, customers=customers, days=days, end_ms=end_ms):
            f.write(b"\n".join(orjson.dumps(r) for r in batch))
            f.write(b"\n")
            n += len(batch)
    # Whole or not at all: an importer never sees a half-written demo file.
    tmp.replace(target)
    return n
