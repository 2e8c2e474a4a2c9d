"""The Optimize step: each strategy of a journey measured against its control.

``report_for(runtime, journey_id, ReportRequest(...))`` gives, per experiment split
and content experiment and per arm, conversion, GMV, ARPU, cost, ROI and uplift with
95% intervals (docs/optimize.md). The CLI is ``touchline journey report``, the REST
route ``GET /api/v1/journeys/{id}/report``.
"""

from __future__ import annotations

from .report import ReportRequest, journey_report
from .service import report_for

__all__ = ["ReportRequest", "journey_report", "report_for"]
