"""What a journey did: per-journey and per-node counts, and each user's timeline.

Counts come straight from the engine's own tables (states, log, goals, outbox), so
every number can be opened: the same WHERE clause lists the users behind it.
"""

from __future__ import annotations

from typing import Any

import orjson

from .storage import Tx, get_journey

__all__ = ["journey_stats", "user_timeline"]

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
