"""The chain-restaurant demo: a deterministic generator of Sensors Analytics records
and the demo's journey maps.

    >>> from touchline.demo import generate, map_paths
    >>> for batch in generate(7, customers=200, days=14, end_ms=1_764_000_000_000):
    ...     ...  # lists of Sensors wire records, in time order

See docs/demo.md for the scenario and what an operator should find in it.
"""

from __future__ import annotations

from pathlib import Path

from .files import write_sensors_ndjson
from .generator import generate

__all__ = ["MAPS_DIR", "generate", "map_paths", "write_sensors_ndjson"]

MAPS_DIR = Path(__file__).parent / "maps"


def map_paths() -> list[Path]:
    """The demo's journey map files (restaurant.yaml, paid_membership.yaml)."""
    return sorted(MAPS_DIR.glob("*.yaml"))
