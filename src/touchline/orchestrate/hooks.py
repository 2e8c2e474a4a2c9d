"""Journeys as a built-in plugin: tables, the real-time path, workers, CLI and REST.

One :class:`JourneyRuntime` per open runtime holds the engine and the outbox; other
features (the server routes, the CLI, tests) reach it with :func:`journeys_for`.

Channels are configured in ``<data dir>/channels.yaml`` (or ``channels.json``): a
mapping of message channel name (``app``, ``sms``, ``official_account``, ``webhook``
...) to the channel's config, whose ``type`` picks the provider implementation (see
docs/channels.md). Without that file no channel is configured and messages fail
with "no channel configured", which the delivery log shows.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..errors import ConfigError
from ..plugins import hookimpl
from .engine import Engine
from .outbox import DeliveryPolicy, Outbox
from .simulate import events_from_arrow
from .storage import SCHEMA_NAME, STATE_SCHEMA
from .worker import DeliveryWorker, JourneyWorker

if TYPE_CHECKING:
    import click
    from fastapi import APIRouter

    from ..runtime import Runtime

__all__ = [
    "JourneyRuntime",
    "api_routers",
    "journeys_for",
    "load_channels",
    "on_stitched_events",
    "register_commands",
    "state_profiles",
    "state_schema",
    "unsubscribe_secret",
    "workers",
]


def state_profiles(tx: Any, project: str, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Profiles from the state store, with identities under ``$identities`` (addresses)."""
    from ..track.profiles import profiles_by_ids

    out: dict[int, dict[str, Any]] = {}
    for uid, view in profiles_by_ids(tx, project, ids).items():
        out[uid] = {**view.properties, "$identities": view.identities}
    return out


def load_channels(data_dir: Path, clock: Any) -> dict[str, Any]:
    """The channels configured in the data directory (empty when none are)."""
    from .channels import build_channel

    for name in ("channels.yaml", "channels.yml", "channels.json"):
        path = data_dir / name
        if path.is_file():
            try:
                raw = yaml.safe_load(path.read_text("utf-8")) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise ConfigError(f"{path}: {exc}") from exc
            if not isinstance(raw, dict):
                raise ConfigError(f"{path}: expected a mapping of channel name to config")
            return {str(k): build_channel(str(k), v or {}, clock=clock) for k, v in raw.items()}
    return {}


@dataclass
class JourneyRuntime:
    engine: Engine
    outbox: Outbox


_BY_RUNTIME: dict[int, tuple[Any, JourneyRuntime]] = {}
_LOCK = threading.Lock()


def _update_profile(runtime: Runtime) -> Any:
    def update(project: str, user_id: int, props: dict[str, Any]) -> None:
        from ..track.profiles import apply_profile_op, profiles_by_ids, write_properties

        with runtime.state.transaction() as tx:
            view = profiles_by_ids(tx, project, [user_id]).get(user_id)
            if view is None:
                return
            new, deleted, _ = apply_profile_op(view.properties, "set", props)
            write_properties(tx, [(view.user_id, new, deleted)])

    return update


UNSUBSCRIBE_PATH = "/api/v1/unsubscribe"


def unsubscribe_secret(runtime: Runtime) -> str:
    """The key that signs one-click unsubscribe links, made once and kept in the store."""
    import secrets

    with runtime.state.transaction() as tx:
        value = tx.kv_get("journeys.unsubscribe_secret")
        if value is None:
            value = secrets.token_urlsafe(32)
            tx.kv_set("journeys.unsubscribe_secret", value)
    return str(value)


def _delivery_concurrency(runtime: Runtime) -> int:
    value = int(getattr(runtime.settings, "delivery_concurrency", 4))
    if value < 1:
        raise ConfigError(f"delivery_concurrency: must be 1 or more, got {value}")
    return value


def journeys_for(runtime: Runtime) -> JourneyRuntime:
    """The runtime's journey engine and outbox (built on first use)."""
    with _LOCK:
        entry = _BY_RUNTIME.get(id(runtime))
        if entry is None or entry[0] is not runtime:
            zone = str(getattr(runtime.settings, "time_zone", "Asia/Shanghai"))
            engine = Engine(runtime.state, runtime.clock, profiles=state_profiles,
                            default_zone=zone, on_profile_update=_update_profile(runtime))
            base = f"http://{runtime.settings.host}:{runtime.settings.port}{UNSUBSCRIBE_PATH}"
            policy = DeliveryPolicy(default_tz=zone, unsubscribe_base_url=base,
                                    unsubscribe_secret=unsubscribe_secret(runtime))
            outbox = Outbox(runtime.state, runtime.clock,
                            load_channels(runtime.data_dir, runtime.clock),
                            policy=policy, profiles=state_profiles,
                            concurrency=_delivery_concurrency(runtime))
            entry = (runtime, JourneyRuntime(engine, outbox))
            _BY_RUNTIME[id(runtime)] = entry
        return entry[1]


@hookimpl
def state_schema() -> dict[str, dict[str, list[str]]]:
    return {SCHEMA_NAME: STATE_SCHEMA}


@hookimpl
def on_stitched_events(runtime: Runtime, events: Any) -> None:
    # Journeys act on the events themselves and query nothing from the event store, so
    # they take them before its commit. A replay after a crash between the two commits
    # hands the same events again: entries are keyed by event id and a user who moved
    # on from a wait no longer waits for it.
    import pyarrow as pa
    import pyarrow.compute as pc

    jr = journeys_for(runtime)
    engine = jr.engine
    # Most events concern no journey: drop them before their properties are parsed.
    names = engine.watched_event_names()
    if not names:
        return
    relevant = events.filter(pc.is_in(events.column("event"), value_set=pa.array(sorted(names))))
    batch = events_from_arrow(relevant)
    if batch:
        if engine.handle_events(batch):
            # The step committed: its messages are due now, not at the next poll.
            jr.outbox.wake()


@hookimpl
def workers(runtime: Runtime) -> list[Any]:
    jr = journeys_for(runtime)
    # Claim ahead of the sends, so a claim (a write transaction) takes a useful chunk.
    inflight = max(64, 8 * _delivery_concurrency(runtime))
    return [JourneyWorker(jr.engine, on_progress=jr.outbox.wake),
            DeliveryWorker(jr.outbox, batch=inflight)]


@hookimpl
def api_routers(runtime: Runtime) -> list[APIRouter]:
    from ..server.journeys import router, unsubscribe_router

    return [router(runtime), unsubscribe_router()]


@hookimpl
def register_commands(cli: click.Group) -> None:
    from .cli import journey, worker

    cli.add_command(journey)
    cli.add_command(worker)
