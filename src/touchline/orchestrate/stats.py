"""What a journey did: per-journey and per-node counts, and each user's timeline.

Message nodes with content variants also report each variant (sent, converted, rate;
for a bandit its counts and chance of being the best), so variants compare side by side.

Counts come straight from the engine's own tables (states, log, goals, outbox), so
every number can be opened: the same WHERE clause lists the users behind it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from .bandit import MemoryBanditStore, ThompsonBandit
from .content import bandit_key
from .storage import Tx, get_journey, load_version

__all__ = ["journey_stats", "user_timeline", "variant_stats"]

# Log kinds that mean "the user reached this node".
_ARRIVALS = ("node", "wait", "message", "skipped")


def journey_stats(tx: Tx, project: str, journey_id: str) -> dict[str, Any]:
    """Entered, waiting now, exited, converted, and messages by status, per node too."""
    rec = get_journey(tx, project, journey_id)
    args = (project, journey_id)
    entered, active, waiting = tx.fetchone(
        "SELECT COUNT(*), SUM(CASE WHEN status = 'active' THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN status = 'active' AND due_ms IS NOT NULL THEN 1 ELSE 0 END) "
        "FROM journey_states WHERE project = ? AND journey_id = ?", args)
    exits = {r[0]: int(r[1]) for r in tx.fetchall(
        "SELECT exit_reason, COUNT(*) FROM journey_states WHERE project = ? AND "
        "journey_id = ? AND status = 'done' GROUP BY exit_reason", args)}
    goals = {r[0]: int(r[1]) for r in tx.fetchall(
        "SELECT goal, COUNT(*) FROM journey_goals WHERE project = ? AND journey_id = ? "
        "GROUP BY goal", args)}
    messages = {r[0]: int(r[1]) for r in tx.fetchall(
        "SELECT status, COUNT(*) FROM journey_outbox WHERE project = ? AND journey_id = ? "
        "GROUP BY status", args)}
    nodes: dict[str, dict[str, Any]] = {}

    def node(name: str) -> dict[str, Any]:
        return nodes.setdefault(name, {"reached": 0, "waiting_now": 0, "exited": 0,
                                       "converted": {}, "messages": {}, "branches": {}})

    marks = ",".join("?" * len(_ARRIVALS))
    for name, count in tx.fetchall(
            "SELECT node, COUNT(DISTINCT user_id || ':' || entry_key) FROM journey_log "
            f"WHERE project = ? AND journey_id = ? AND kind IN ({marks}) AND node IS NOT NULL "
            "GROUP BY node", [*args, *_ARRIVALS]):
        node(name)["reached"] = int(count)
    for name, detail, count in tx.fetchall(
            "SELECT node, detail, COUNT(*) FROM journey_log WHERE project = ? AND "
            "journey_id = ? AND kind = 'node' AND detail LIKE '{\"branch\"%' "
            "GROUP BY node, detail", args):
        node(name)["branches"][orjson.loads(detail)["branch"]] = int(count)
    for name, count in tx.fetchall(
            "SELECT node, COUNT(*) FROM journey_states WHERE project = ? AND journey_id = ? "
            "AND status = 'active' GROUP BY node", args):
        node(name)["waiting_now"] = int(count)
    for name, count in tx.fetchall(
            "SELECT node, COUNT(*) FROM journey_states WHERE project = ? AND journey_id = ? "
            "AND status = 'done' GROUP BY node", args):
        node(name)["exited"] = int(count)
    for name, goal, count in tx.fetchall(
            "SELECT COALESCE(message_node, node), goal, COUNT(*) FROM journey_goals "
            "WHERE project = ? AND journey_id = ? GROUP BY COALESCE(message_node, node), goal",
            args):
        if name is not None:
            node(name)["converted"][goal] = int(count)
    for name, status, count in tx.fetchall(
            "SELECT node, status, COUNT(*) FROM journey_outbox WHERE project = ? AND "
            "journey_id = ? GROUP BY node, status", args):
        node(name)["messages"][status] = int(count)
    goal_names = [g.name for g in load_version(tx, project, journey_id, rec.version).goals]
    for name, per_variant in variant_stats(tx, project, journey_id, goal_names).items():
        node(name)["variants"] = per_variant
    return {
        "journey": rec.to_dict(),
        "entered": int(entered or 0),
        "active": int(active or 0),
        "waiting_now": int(waiting or 0),
        "exited": sum(exits.values()),
        "exit_reasons": exits,
        "converted": goals,
        "messages": messages,
        "nodes": nodes,
    }


def variant_stats(tx: Tx, project: str, journey_id: str, goals: Sequence[str] = ()
                  ) -> dict[str, dict[str, Any]]:
    """Per message node with content variants, per variant: messages by status, entries
    sent, entries converted per goal among them (the goal reached after the message
    was written), the conversion rate, and for a bandit its arm counts and the chance
    each arm is the best. Every goal in ``goals`` is listed, with zeros where none
    converted, so variants compare line by line."""
    args = (project, journey_id)
    out: dict[str, dict[str, Any]] = {}

    def variant(name: str, vid: str) -> dict[str, Any]:
        found: dict[str, Any] = out.setdefault(name, {}).setdefault(
            vid, {"messages": {}, "sent": 0, "converted": {}, "conversion": {}})
        return found

    for name, vid, status, count in tx.fetchall(
            "SELECT node, variant, status, COUNT(*) FROM journey_outbox WHERE project = ? "
            "AND journey_id = ? AND variant IS NOT NULL GROUP BY node, variant, status", args):
        variant(name, vid)["messages"][status] = int(count)
    for name, vid, count in tx.fetchall(
            "SELECT node, variant, COUNT(DISTINCT user_id || ':' || entry_key) FROM "
            "journey_outbox WHERE project = ? AND journey_id = ? AND variant IS NOT NULL "
            "AND status = 'sent' GROUP BY node, variant", args):
        variant(name, vid)["sent"] = int(count)
    for per_variant in out.values():
        for v in per_variant.values():
            for goal in goals:
                v["converted"][goal] = 0
                v["conversion"][goal] = 0.0 if v["sent"] else None
    # Only sent messages can have earned a conversion: a skipped one was never seen.
    for name, vid, goal, count in tx.fetchall(
            "SELECT o.node, o.variant, g.goal, COUNT(DISTINCT o.user_id || ':' || o.entry_key) "
            "FROM journey_outbox o JOIN journey_goals g ON g.project = o.project AND "
            "g.journey_id = o.journey_id AND g.user_id = o.user_id AND "
            "g.entry_key = o.entry_key WHERE o.project = ? AND o.journey_id = ? AND "
            "o.variant IS NOT NULL AND o.status = 'sent' AND g.at_ms >= o.created_ms "
            "GROUP BY o.node, o.variant, g.goal", args):
        v = variant(name, vid)
        v["converted"][goal] = int(count)
        v["conversion"][goal] = round(int(count) / v["sent"], 4) if v["sent"] else None
    for name, per_variant in out.items():
        key = bandit_key(project, journey_id, name)
        rows = tx.fetchall("SELECT arm, sends, conversions FROM content_bandit "
                           "WHERE bandit_key = ?", (key,))
        if not rows:
            continue
        store = MemoryBanditStore()
        for arm, sends, conversions in rows:
            store.add(key, str(arm), sends=int(sends), conversions=int(conversions))
        arms = sorted(per_variant)
        # A fixed seed: the same counts always report the same chances.
        best = ThompsonBandit(store, rng=np.random.default_rng(0)).probability_best(key, arms)
        counts = store.counts(key)
        for arm in arms:
            c = counts.get(arm)
            variant(name, arm)["bandit"] = {
                "sends": c.sends if c else 0, "conversions": c.conversions if c else 0,
                "p_best": round(best[arm], 4)}
    return out


def user_timeline(tx: Tx, project: str, user_id: int,
                  journey_id: str | None = None) -> list[dict[str, Any]]:
    """Everything the journeys did with one user, oldest first."""
    sql = ("SELECT journey_id, version, entry_key, node, kind, detail, at_ms FROM journey_log "
           "WHERE project = ? AND user_id = ?")
    params: list[Any] = [project, user_id]
    if journey_id is not None:
        sql += " AND journey_id = ?"
        params.append(journey_id)
    out = [{"journey": r[0], "version": int(r[1]), "entry": r[2], "node": r[3], "kind": r[4],
            "detail": orjson.loads(r[5]) if r[5] else None, "at_ms": int(r[6])}
           for r in tx.fetchall(sql + " ORDER BY at_ms, id", params)]
    status = {r[0]: (r[1], r[2]) for r in tx.fetchall(
        "SELECT message_id, status, last_error FROM journey_outbox WHERE project = ? AND "
        "user_id = ?", (project, user_id))}
    for item in out:
        detail = item["detail"]
        if item["kind"] == "message" and isinstance(detail, dict):
            found = status.get(detail.get("message_id", ""))
            if found is not None:
                detail["delivery"], detail["delivery_reason"] = found
    return out
