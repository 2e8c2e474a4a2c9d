"""The optimize tests reuse the journey tests' loopback provider servers."""

from __future__ import annotations

import sys
from pathlib import Path

_ORCHESTRATE = str(Path(__file__).resolve().parent.parent / "orchestrate")
if _ORCHESTRATE not in sys.path:
    sys.path.append(_ORCHESTRATE)
