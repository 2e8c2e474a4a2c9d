"""Settings. Each is declared once, here, with its type, default and help text.

A value comes from, in order of precedence: an explicit override (CLI flag or
Python argument), a ``TOUCHLINE_<NAME>`` environment variable, ``touchline.toml``
in the data directory, then the default. Nothing is read at import time: call
:func:`load_settings` with the environment you mean.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["SETTINGS", "Setting", "Settings", "load_settings"]


@dataclass(frozen=True)
class Setting:
    name: str
    type: type
    default: Any
    help: str

    @property
    def env_var(self) -> str:
        return "TOUCHLINE_" + self.name.upper()

    def parse(self, raw: Any, source: str) -> Any:
        if raw is None:
            return None
        try:
            if self.type is bool:
                if isinstance(raw, bool):
                    return raw
                text = str(raw).strip().lower()
                if text in ("1", "true", "yes", "on"):
                    return True
                if text in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            if self.type is int and isinstance(raw, bool):
                raise ValueError(raw)
            return self.type(raw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"{self.name} (from {source}): expected {self.type.__name__}, got {raw!r}"
            ) from exc


SETTINGS: tuple[Setting, ...] = (
    Setting("data", str, "./touchline-data",
            "Data directory: the event store, the state store, the ingest log and the admin token."),
    Setting("state_url", str, "",
            "State store URL. Empty means SQLite in the data directory; "
            "postgresql://user@host:port/db uses PostgreSQL."),
    Setting("host", str, "127.0.0.1", "Address `touchline serve` listens on."),
    Setting("port", int, 8000, "Port `touchline serve` listens on."),
    Setting("admin_token", str, "",
            "Bearer token for the admin API. Empty: one is generated on first start, "
            "kept in the data directory and printed once."),
    Setting("time_zone", str, "Asia/Shanghai",
            "Time zone given to new projects (analysis periods, quiet hours)."),
    Setting("log_fsync", bool, True,
            "fsync the ingest log before acknowledging a request. Turning it off trades "
            "durability on power loss for speed; a process crash still loses nothing."),
    Setting("log_segment_bytes", int, 64 * 1024 * 1024,
            "Size at which the ingest log starts a new segment file."),
    Setting("ingest_max_lag_bytes", int, 8 * 1024 * 1024 * 1024,
            "Most bytes of acknowledged log the ingest worker may be behind. Past it the "
            "collector answers 503, which every SDK retries later, instead of filling the "
            "disk; 0 means no limit."),
    Setting("ingest_batch_events", int, 10_000,
            "Most events the ingest worker moves from the log to the stores in one transaction."),
    Setting("ingest_interval_ms", int, 50,
            "Longest the idle ingest worker waits before looking at the log again; a newly "
            "acknowledged request wakes it at once."),
    Setting("dedupe_hours", int, 48,
            "How long an event id (Segment messageId, PostHog uuid, Sensors content hash) "
            "is remembered to drop exact duplicates."),
    Setting("sensors_time_window", bool, True,
            "Drop Sensors events more than 1 hour in the future or older than 2 years, "
            "unless the record says time_free."),
    Setting("max_identities_per_type", int, 20,
            "Most identities of one type (for example cookie ids) a profile may hold."),
    Setting("max_merges_per_profile", int, 50,
            "Most profiles that may be merged into one; further links are refused."),
    Setting("junk_ids", str, "",
            "Extra identity values to refuse, comma separated, on top of the built-in "
            "list (anonymous, guest, null, undefined, 0, -1 ...)."),
    Setting("identity_cache_entries", int, 250_000,
            "Most identities the ingest pipeline keeps in memory to resolve events without "
            "a query (about 330 bytes each); the others are looked up in the state store."),
    Setting("duckdb_memory_limit", str, "256MB",
            "Memory the DuckDB event store may use (a DuckDB size such as 512MB or 4GB; "
            "empty for DuckDB's default of 80% of RAM). Past it DuckDB evicts cached "
            "blocks and spills large queries to disk instead of growing with the data."),
    Setting("duckdb_threads", int, 0,
            "Threads DuckDB runs a query on; 0 means one per core."),
    Setting("query_timeout_s", float, 30.0, "Time limit of a read-only query."),
    Setting("query_max_rows", int, 100_000, "Most rows a query through the API returns."),
    Setting("message_costs", str, "",
            "Cost of one sent message per channel, for journey reports' cost and ROI when a "
            "request names none, e.g. webhook=0,sms=0.05,wechat=0.01."),
    Setting("delivery_concurrency", int, 32,
            "Messages the delivery worker sends at once, across channels (it claims up to 8 "
            "times as many ahead). Raise it for providers that answer slowly."),
)

_BY_NAME = {s.name: s for s in SETTINGS}


class Settings:
    """Resolved settings: attribute access by name, plus where each value came from."""

    def __init__(self, values: Mapping[str, Any], sources: Mapping[str, str]) -> None:
        self._values = dict(values)
        self._sources = dict(sources)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def get(self, name: str) -> Any:
        return self._values[name]

    def source(self, name: str) -> str:
        return self._sources[name]

    @property
    def data_dir(self) -> Path:
        return Path(self._values["data"])

    def replace(self, **overrides: Any) -> Settings:
        values = dict(self._values)
        sources = dict(self._sources)
        for key, value in overrides.items():
            setting = _BY_NAME.get(key)
            if setting is None:
                raise ConfigError(f"unknown setting {key!r}")
            values[key] = setting.parse(value, "argument")
            sources[key] = "argument"
        return Settings(values, sources)

    def items(self) -> list[tuple[Setting, Any, str]]:
        return [(s, self._values[s.name], self._sources[s.name]) for s in SETTINGS]


def load_settings(
    data: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Resolve every setting. ``env`` defaults to ``os.environ`` at call time."""
    environ = os.environ if env is None else env
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if data is not None:
        overrides["data"] = os.fspath(data)
    unknown = set(overrides) - set(_BY_NAME)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")

    # The data directory decides where touchline.toml is, so resolve it first.
    data_setting = _BY_NAME["data"]
    if "data" in overrides:
        data_dir, data_source = overrides["data"], "argument"
    elif data_setting.env_var in environ:
        data_dir, data_source = environ[data_setting.env_var], "env"
    else:
        data_dir, data_source = data_setting.default, "default"

    file_values: dict[str, Any] = {}
    toml_path = Path(data_dir) / "touchline.toml"
    if toml_path.is_file():
        try:
            file_values = tomllib.loads(toml_path.read_text("utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{toml_path}: {exc}") from exc
        unknown = set(file_values) - set(_BY_NAME)
        if unknown:
            raise ConfigError(f"{toml_path}: unknown setting(s): {', '.join(sorted(unknown))}")

    values: dict[str, Any] = {"data": str(data_dir)}
    sources: dict[str, str] = {"data": data_source}
    for setting in SETTINGS:
        if setting.name == "data":
            continue
        if setting.name in overrides:
            raw, source = overrides[setting.name], "argument"
        elif setting.env_var in environ:
            raw, source = environ[setting.env_var], "env"
        elif setting.name in file_values:
            raw, source = file_values[setting.name], "touchline.toml"
        else:
            values[setting.name], sources[setting.name] = setting.default, "default"
            continue
        values[setting.name] = setting.parse(raw, source)
        sources[setting.name] = source
    return Settings(values, sources)
