"""The Optimize step: each strategy of a journey measured against its control.

For the journey as a whole, for each experiment split (``type: experiment``, whose
control group gets nothing) and for each message node with content variants, and per
arm: users, converted per goal, conversion rate, GMV, ARPU, messages sent and their
cost, ROI, and the uplift of conversion and ARPU over the control (or, for content
variants, over a baseline variant) with 95% intervals and p-values. docs/optimize.md
says how each number is computed.

The unit is the user: an arm's users are the distinct users with an entry in it
during the date range; a user converted when one of those entries reached the goal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidInput
from ..orchestrate.model import ExperimentNode, Journey, MessageNode
from ..orchestrate.storage import get_journey
from .collect import EntryKey, JourneyData, default_value_property, goal_values, read_journey
from .uplift import CONFIDENCE, mean_uplift, proportion_uplift

__all__ = ["DEFAULT_MIN_ARM_USERS", "DEFAULT_VALUE_PROPERTY", "ReportRequest",
           "journey_report"]

DEFAULT_VALUE_PROPERTY = "amount"
# Below this many users an arm's interval is too wide, and the normal approximations
# behind it too rough, for a verdict.
DEFAULT_MIN_ARM_USERS = 100
_ALPHA = 1 - CONFIDENCE


@dataclass(frozen=True)
class ReportRequest:
    """What to measure. ``costs``: channel -> cost of one sent message (``*`` for any
    channel not listed). ``baselines``: message node -> the variant its other
    variants are compared with. Times bound the entry time, end excluded."""

    goal: str | None = None
    value_property: str | None = None
    costs: Mapping[str, float] = field(default_factory=dict)
    start_ms: int | None = None
    end_ms: int | None = None
    min_arm_users: int = DEFAULT_MIN_ARM_USERS
    baselines: Mapping[str, str] = field(default_factory=dict)

    def cost_of(self, channel: str) -> float:
        return float(self.costs.get(channel, self.costs.get("*", 0.0)))


@dataclass
class _Arm:
    """The entries of one arm and when each became exposed to it."""

    name: str
    exposed: dict[EntryKey, int]  # entry -> time from which its goals count
    control: bool = False


class _Figures:
    """Per-arm numbers from the journey's facts and the goal events' money."""

    def __init__(self, data: JourneyData, req: ReportRequest, goal: str,
                 money: Mapping[EntryKey, Mapping[str, float]]) -> None:
        self.data, self.req, self.goal, self.money = data, req, goal, money
        self.goal_names = sorted({g.name for j in data.versions.values() for g in j.goals})

    def arm(self, arm: _Arm, nodes: set[str] | None) -> dict[str, Any]:
        """``nodes``: count only messages from these nodes (None: every node)."""
        users: set[int] = set()
        converted: dict[str, set[int]] = {g: set() for g in self.goal_names}
        paid: dict[int, dict[str, float]] = {}
        channels: dict[str, int] = {}
        for entry, since in arm.exposed.items():
            uid = entry[0]
            users.add(uid)
            for g, at in self.data.goals.get(entry, {}).items():
                if at >= since:
                    converted.setdefault(g, set()).add(uid)
                    if g == self.goal:
                        # Event ids: overlapping windows of one user count an event once.
                        paid.setdefault(uid, {}).update(self.money.get(entry, {}))
            for (node, channel), n in self.data.sent.get(entry, {}).items():
                if nodes is None or node in nodes:
                    channels[channel] = channels.get(channel, 0) + n
        n_users = len(users)
        values = {uid: sum(v.values()) for uid, v in paid.items()}
        gmv = float(sum(values.values()))
        won = len(converted.get(self.goal, ()))
        cost = sum(n * self.req.cost_of(ch) for ch, n in channels.items())
        return {
            "arm": arm.name,
            "control": arm.control,
            "users": n_users,
            "entries": len(arm.exposed),
            "converted": {g: len(u) for g, u in sorted(converted.items())},
            "conversion_rate": round(won / n_users, 6) if n_users else None,
            "gmv": round(gmv, 2),
            "arpu": round(gmv / n_users, 6) if n_users else None,
            "messages": sum(channels.values()),
            "messages_by_channel": dict(sorted(channels.items())),
            "cost": round(cost, 6),
            # Kept for the comparison, dropped from the output.
            "_won": won,
            "_values": np.array([values.get(u, 0.0) for u in sorted(users)], dtype=float),
        }

    def compare(self, row: dict[str, Any], base: dict[str, Any], base_is_control: bool
                ) -> None:
        """Fill ``row`` with its uplift over ``base`` and, against a control, its ROI."""
        conv = proportion_uplift(row["_won"], row["users"], base["_won"], base["users"])
        arpu = mean_uplift(row["_values"], base["_values"])
        row["uplift"] = {"conversion": conv.to_dict(), "arpu": arpu.to_dict()}
        incremental = (arpu.absolute * row["users"]) if arpu.absolute is not None else None
        row["incremental_gmv"] = None if incremental is None else round(incremental, 2)
        if base_is_control and incremental is not None and row["cost"] > 0:
            row["roi"] = round((incremental - row["cost"]) / row["cost"], 6)
        else:
            row["roi"] = None
        small = [r["arm"] for r in (row, base) if r["users"] < self.req.min_arm_users]
        if small:
            row["verdict"] = "too few users"
            row["note"] = (f"fewer than {self.req.min_arm_users} users in "
                           f"{', '.join(sorted(set(small)))}: no verdict on significance")
            row["significant"] = None
        else:
            p = conv.p_value
            row["significant"] = p is not None and p < _ALPHA
            row["verdict"] = ("no difference shown" if not row["significant"] else
                              "better" if (conv.absolute or 0) > 0 else "worse")


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def _split_arms(data: JourneyData, nid: str, node: ExperimentNode) -> list[_Arm]:
    assigned = data.split_arms.get(nid, {})
    names = [v.name for v in node.variants] + [node.control.name]
    names += sorted(set(assigned.values()) - set(names))  # arms of older versions
    out = []
    for name in names:
        # A split decides at entry: every goal of the entry counts.
        exposed = {e: 0 for e, a in assigned.items() if a == name and e in data.entries}
        out.append(_Arm(name, exposed, control=name == node.control.name))
    return out


def _content_arms(data: JourneyData, nid: str, node: MessageNode) -> list[_Arm]:
    assigned = data.content_arms.get(nid, {})
    names = [v.id for v in node.variants]
    names += sorted({a for a, _ in assigned.values()} - set(names))
    # A variant can only have earned a goal reached after its message was written.
    return [_Arm(name, {e: at for e, (a, at) in assigned.items()
                        if a == name and e in data.entries}) for name in names]


def _experiments(j: Journey) -> Iterable[tuple[str, ExperimentNode | MessageNode]]:
    for nid, node in j.nodes.items():
        if isinstance(node, ExperimentNode) or (isinstance(node, MessageNode)
                                                and len(node.variants) > 1):
            yield nid, node


def _section(fig: _Figures, nid: str, node: ExperimentNode | MessageNode,
             req: ReportRequest, j: Journey) -> dict[str, Any]:
    if isinstance(node, ExperimentNode):
        arms = _split_arms(fig.data, nid, node)
        base_name = node.control.name
        section: dict[str, Any] = {"node": nid, "kind": "split", "experiment": node.experiment}
        # Messages of the whole branch: a split's arm pays for everything after it.
        nodes: set[str] | None = None
    else:
        arms = _content_arms(fig.data, nid, node)
        decision = node.decision
        base_name = req.baselines.get(nid) or (decision.default if decision else None) \
            or node.variants[0].id
        if base_name not in {a.name for a in arms}:
            raise InvalidInput(f"baseline.{nid}", f"node {nid!r} has no variant {base_name!r}")
        strategy = decision.strategy if decision else "experiment"
        section = {"node": nid, "kind": "content", "strategy": strategy,
                   "experiment": (decision.experiment if decision else None) or nid}
        if strategy in ("rules", "fixed"):
            section["note"] = (f"variants chosen by {strategy}, not at random: differences "
                               "describe the groups, they do not measure the content")
        nodes = {nid}
    rows = {a.name: fig.arm(a, nodes) for a in arms}
    base = rows[base_name]
    is_control = isinstance(node, ExperimentNode)
    for name, row in rows.items():
        if name != base_name:
            fig.compare(row, base, is_control)
    section["baseline"] = base_name
    section["arms"] = [_clean(rows[a.name]) for a in arms]
    if isinstance(node, ExperimentNode) and len(node.variants) > 1:
        # Every variant together against the control: did the strategy pay at all?
        pooled = _Arm("all variants", {e: t for a in arms if not a.control
                                       for e, t in a.exposed.items()})
        row = fig.arm(pooled, None)
        fig.compare(row, base, True)
        section["pooled"] = _clean(row)
    return section


def journey_report(tx: Any, events: Any, project: str, journey_id: str,
                   req: ReportRequest) -> dict[str, Any]:
    """The report of one journey. ``tx``: a state-store transaction; ``events``: the
    event store (the goal events' money is read from it)."""
    rec = get_journey(tx, project, journey_id)
    if req.min_arm_users < 1:
        raise InvalidInput("min_arm_users", "must be 1 or more")
    for channel, cost in req.costs.items():
        if cost < 0:
            raise InvalidInput(f"cost.{channel}", "must be zero or more")
    data = read_journey(tx, project, journey_id, start_ms=req.start_ms, end_ms=req.end_ms)
    current = data.versions[rec.version]
    goal_names = [g.name for g in current.goals]
    goal = req.goal or (goal_names[0] if goal_names else None)
    if goal is None:
        raise InvalidInput("goal", f"journey {journey_id!r} defines no goal to measure")
    known = {g.name for j in data.versions.values() for g in j.goals}
    if goal not in known:
        raise InvalidInput("goal", f"journey {journey_id!r} has no goal {goal!r} "
                           f"(goals: {', '.join(sorted(known)) or 'none'})")
    value_property = (req.value_property or default_value_property(data.versions, goal)
                      or DEFAULT_VALUE_PROPERTY)
    converted = [e for e, gs in data.goals.items() if goal in gs and e in data.entries]
    money = goal_values(events, project, data, converted, goal, value_property)
    fig = _Figures(data, req, goal, money)
    everyone = fig.arm(_Arm("all", {e: 0 for e in data.entries}), None)
    seen: set[str] = set()
    sections = []
    # The current version's nodes first, then any that only older versions had.
    for j in [current, *(data.versions[v] for v in sorted(data.versions, reverse=True))]:
        for nid, node in _experiments(j):
            if nid not in seen:
                seen.add(nid)
                sections.append(_section(fig, nid, node, req, j))
    for nid in req.baselines:
        if nid not in seen or not any(s["node"] == nid and s["kind"] == "content"
                                      for s in sections):
            raise InvalidInput(f"baseline.{nid}", "not a message node with content variants")
    return {
        "journey": rec.to_dict(),
        "goal": goal,
        "value_property": value_property,
        "costs": dict(req.costs),
        "range": {"from_ms": req.start_ms, "to_ms": req.end_ms},
        "confidence": CONFIDENCE,
        "min_arm_users": req.min_arm_users,
        "totals": _clean(everyone),
        "experiments": sections,
    }
