"""The Python API for notebooks and scripts: ``touchline.open(data_dir)``.

When a ``touchline serve`` process owns the data directory (the embedded event store
admits one process), calls go to it over HTTP with the admin token; otherwise the
stores are opened in this process. Either way results come back as DataFrames or
Arrow tables.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .config import Settings, load_settings
from .errors import AuthError, InvalidInput, NotFound, QueryError, QueryTimeout, TouchlineError

if TYPE_CHECKING:
    import httpx
    import pandas as pd
    import pyarrow as pa

    from .runtime import Runtime

__all__ = ["Touchline", "open"]

_ERRORS: dict[str, type[TouchlineError]] = {
    "InvalidInput": InvalidInput, "QueryError": QueryError, "QueryTimeout": QueryTimeout,
    "NotFound": NotFound, "AuthError": AuthError,
}


class Touchline:
    """A handle on one data directory (see :func:`open`)."""

    def __init__(self, settings: Settings) -> None:
        from .runtime import ADMIN_TOKEN_FILE
        from .server.app import read_server_file

        self.settings = settings
        self._runtime: Runtime | None = None
        self._http: httpx.Client | None = None
        info = read_server_file(settings.data_dir)
        if info is not None:
            import httpx

            token = settings.admin_token or (
                settings.data_dir / ADMIN_TOKEN_FILE
            ).read_text().strip()
            self._http = httpx.Client(
                base_url=f"http://{info['host']}:{info['port']}",
                headers={"Authorization": f"Bearer {token}"}, timeout=settings.query_timeout_s + 5,
            )
        else:
            from .runtime import open_runtime

            self._runtime = open_runtime(settings, ingest=False)

    @property
    def runtime(self) -> Runtime:
        """The open stores (only when no server owns the data directory)."""
        if self._runtime is None:
            raise TouchlineError("a server owns this data directory; use its API")
        return self._runtime

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        assert self._http is not None
        resp = self._http.request(method, path, **kwargs)
        if resp.status_code >= 400:
            try:
                err = resp.json()["error"]
            except (ValueError, KeyError, TypeError):
                raise TouchlineError(f"{resp.status_code}: {resp.text}") from None
            cls = _ERRORS.get(err.get("type", ""), TouchlineError)
            if issubclass(cls, InvalidInput):
                raise cls(err.get("field", ""), err.get("rule", err.get("message", "")))
            raise cls(err.get("message", ""))
        return resp.json()

    def query_rows(self, sql: str, project: str = "default") -> dict[str, Any]:
        """``{"columns": [...], "rows": [[...]]}``: the shape of ``POST /api/v1/query``."""
        if self._http is not None:
            return dict(self._call("POST", "/api/v1/query", json={"sql": sql, "project": project}))
        s = self.settings
        result = self.runtime.events.query(
            project, sql, timeout_s=s.query_timeout_s, max_rows=s.query_max_rows
        )
        return {"columns": result.columns, "rows": result.rows}

    def arrow(self, sql: str, project: str = "default") -> pa.Table:
        if self._http is not None:
            import pyarrow as pa

            res = self.query_rows(sql, project)
            return pa.table({c: [row[i] for row in res["rows"]] for i, c in enumerate(res["columns"])})
        table: pa.Table = self.runtime.events.arrow(
            project, sql, timeout_s=self.settings.query_timeout_s
        )
        return table

    def query(self, sql: str, project: str = "default") -> pd.DataFrame:
        return self.arrow(sql, project).to_pandas()

    def profile(self, identity: str, project: str = "default") -> dict[str, Any]:
        if self._http is not None:
            return dict(self._call("GET", f"/api/v1/profiles/{identity}", params={"project": project}))
        from .server.core_hooks import profile_view

        return profile_view(self.runtime, project, identity)

    def analyze(self, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Run an analysis (funnel, retention, paths, ...): the JSON result as a dict.

        For DataFrames, ``touchline.analyze.service.analyzer_for(tl.runtime)
        .run(kind, spec).frame(name)`` when no server owns the data directory.
        """
        if self._http is not None:
            return dict(self._call("POST", f"/api/v1/analyze/{kind}", json=spec))
        from .analyze.service import run_analysis

        return run_analysis(self.runtime, kind, spec)

    def import_file(
        self,
        path: str | os.PathLike[str],
        *,
        project: str = "default",
        fmt: str = "sensors",
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Bulk-load one file as ``touchline import`` does: the report as a dict (lines,
        loaded, rejected, duplicates, issues with line numbers). With a server running,
        the file is sent to it; ``progress(bytes_sent, bytes_total)`` follows the upload."""
        source = Path(path)
        if self._http is None:
            if self.runtime.projects.by_name(project) is None:
                raise NotFound(f"project {project!r} does not exist")
            return self.runtime.import_files([source], project=project, fmt=fmt).as_dict()
        total = source.stat().st_size

        def chunks() -> Iterator[bytes]:
            sent = 0
            with source.open("rb") as f:
                while chunk := f.read(1 << 20):
                    sent += len(chunk)
                    yield chunk
                    if progress is not None:
                        progress(sent, total)

        return dict(self._call(
            "POST", "/api/v1/import", content=chunks(), timeout=None,
            params={"project": project, "format": fmt, "name": source.name},
        ))

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
        if self._runtime is not None:
            self._runtime.close()

    def __enter__(self) -> Touchline:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open(data: str | os.PathLike[str] | None = None, **settings: Any) -> Touchline:
    """Open a data directory (default: ``TOUCHLINE_DATA`` or ``./touchline-data``)."""
    return Touchline(load_settings(Path(data) if data is not None else None, **settings))
