"""The analyses by name, and the module that answers each (kept free of heavy imports:
the CLI reads it at every start)."""

from __future__ import annotations

__all__ = ["KINDS"]

# kind -> module whose ``run(ctx, spec) -> Result`` answers it
KINDS: dict[str, str] = {
    "events": "touchline.analyze.events",
    "funnel": "touchline.analyze.funnel",
    "retention": "touchline.analyze.retention",
    "paths": "touchline.analyze.paths",
    "lifecycle": "touchline.analyze.lifecycle",
    "distribution": "touchline.analyze.distribution",
    "interval": "touchline.analyze.interval",
    "rfm": "touchline.analyze.rfm",
    "lifecycle_stages": "touchline.analyze.stages",
    "transitions": "touchline.analyze.transitions",
}
