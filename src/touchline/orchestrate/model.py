"""The journey definition: entries, nodes, exits and goals, as typed models.

A journey is written as YAML or JSON (schema in docs/journeys.md) and parsed into
:class:`Journey` by :func:`touchline.orchestrate.validate.parse_journey`, which adds
the checks a shape cannot express (every ``next`` names a node, nothing is
unreachable, no loop without a wait). Nodes are kept in a mapping keyed by node id,
so every error path reads ``nodes.<id>.<field>``.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "OPERATORS",
    "ApiEntry",
    "Branch",
    "ConditionNode",
    "ContentDecisionSpec",
    "ContentRule",
    "ContentVariant",
    "DelayNode",
    "Entry",
    "EntryCap",
    "EventEntry",
    "EventMatch",
    "ExitCriterion",
    "ExitNode",
    "ExperimentNode",
    "Goal",
    "Journey",
    "JumpNode",
    "MessageNode",
    "Node",
    "RandomNode",
    "ReEntry",
    "ScheduleEntry",
    "SegmentEntry",
    "UntilProperty",
    "UntilTime",
    "UpdateProfileNode",
    "Variant",
    "WaitNode",
    "WebhookNode",
    "parse_duration",
    "predicate_holds",
    "where_holds",
]

_DURATION = re.compile(r"^\s*(-?\d+)\s*(ms|s|m|h|d|w)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_ID = r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$"
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def parse_duration(value: str | int) -> int:
    """``"30m"``, ``"3d"``, ``"-7d"`` or a number of seconds, to milliseconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or text like 30m, 2h, 3d")
    if isinstance(value, int):
        return value * 1000
    m = _DURATION.match(value)
    if m is None:
        raise ValueError(f"{value!r} is not a duration (use forms like 30s, 30m, 2h, 3d, 1w)")
    return int(m.group(1)) * _UNIT_MS[m.group(2)]


Duration = Annotated[str | int, Field(description="30s, 30m, 2h, 3d, 1w or seconds")]


class _Model(BaseModel):
    # Unknown keys are refused: a typo in a definition must not silently do nothing.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_duration(v: str | int, *, positive: bool = True) -> str | int:
    ms = parse_duration(v)
    if positive and ms <= 0:
        raise ValueError("must be longer than zero")
    return v


class EventMatch(_Model):
    """An event by name with property filters (``where``: property -> value or operators)."""

    event: str = Field(min_length=1)
    where: dict[str, Any] = Field(default_factory=dict)
    match_correlation: bool = Field(
        False, description="Only the event whose correlation key equals the entry's counts."
    )


class EventEntry(_Model):
    type: Literal["event"]
    event: str = Field(min_length=1)
    where: dict[str, Any] = Field(default_factory=dict)
    correlation_key: str | None = Field(
        None, description="Event property (such as order_id) that identifies this entry."
    )


class SegmentEntry(_Model):
    type: Literal["segment"]
    segment: str = Field(min_length=1)


class ScheduleEntry(_Model):
    """Everyone in ``segment`` enters at ``at`` (once) or on each ``cron`` firing."""

    type: Literal["schedule"]
    segment: str = Field(min_length=1)
    cron: str | None = None
    at: datetime | None = None
    user_time_zone: bool = Field(
        False, description="Fire at the cron time in each user's own $timezone."
    )

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is not None:
            from croniter import croniter

            if not croniter.is_valid(v):
                raise ValueError(f"{v!r} is not a valid cron expression")
        return v


class ApiEntry(_Model):
    type: Literal["api"]
    required_properties: list[str] = Field(default_factory=list)


Entry = Annotated[
    EventEntry | SegmentEntry | ScheduleEntry | ApiEntry, Field(discriminator="type")
]


class ReEntry(_Model):
    mode: Literal["never", "after_exit", "cooldown"] = "after_exit"
    cooldown: Duration | None = None

    @field_validator("cooldown")
    @classmethod
    def _cd(cls, v: str | int | None) -> str | int | None:
        return None if v is None else _check_duration(v)


class EntryCap(_Model):
    per_user: int | None = Field(default=None, ge=1, description="Most entries one user may make.")
    total: int | None = Field(default=None, ge=1, description="Most entries into this version.")


class UntilTime(_Model):
    """Until the next local ``time`` (HH:MM) on one of ``weekdays``."""

    time: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    weekdays: list[Weekday] = Field(
        default_factory=lambda: list(WEEKDAYS)
    )
    time_zone: str = Field(default="user", description="'user' (the profile's $timezone) or a zone.")


class UntilProperty(_Model):
    """Until the date in a profile (or entry event) property, plus ``offset``."""

    property: str = Field(min_length=1)
    offset: Duration = "0s"

    @field_validator("offset")
    @classmethod
    def _off(cls, v: str | int) -> str | int:
        return _check_duration(v, positive=False)


class _Next(_Model):
    next: str | None = None


class DelayNode(_Next):
    type: Literal["delay"]
    duration: Duration | None = None
    until_time: UntilTime | None = None
    until_property: UntilProperty | None = None

    @field_validator("duration")
    @classmethod
    def _dur(cls, v: str | int | None) -> str | int | None:
        return None if v is None else _check_duration(v)


class WaitNode(_Next):
    """Wait for an event or a segment change; ``next`` on it, ``on_timeout`` after ``timeout``."""

    type: Literal["wait"]
    event: EventMatch | None = None
    segment: str | None = None
    change: Literal["enter", "exit"] = "enter"
    timeout: Duration
    on_timeout: str

    @field_validator("timeout")
    @classmethod
    def _to(cls, v: str | int) -> str | int:
        return _check_duration(v)


class Branch(_Model):
    name: str | None = None
    when: dict[str, Any]
    next: str


class ConditionNode(_Model):
    """First branch whose ``when`` holds; ``default`` otherwise.

    ``when`` keys are paths (``profile.group``, ``event.amount``, ``journey.x``) or
    ``in_segment`` / ``not_in_segment``; values are a literal or operators.
    """

    type: Literal["condition"]
    branches: list[Branch] = Field(min_length=1)
    default: str


class Variant(_Model):
    name: str = Field(pattern=_ID)
    weight: float = Field(gt=0)
    next: str


class RandomNode(_Model):
    """Split by a stable hash of (user, journey): a returning user takes the same branch."""

    type: Literal["random"]
    branches: list[Variant] = Field(min_length=2)


class ExperimentNode(_Model):
    """Like random, plus a control group that is recorded and gets nothing."""

    type: Literal["experiment"]
    experiment: str = Field(pattern=_ID)
    variants: list[Variant] = Field(min_length=1)
    control: Variant


class ContentVariant(_Model):
    """One version of a message's content. Parts it sets replace the node's own;
    ``content`` is laid over the node's ``content`` key by key."""

    id: str = Field(pattern=_ID)
    subject: str | None = None
    body: str | None = None
    template_id: str | None = None
    content: dict[str, Any] = Field(default_factory=dict)
    weight: float = Field(default=1.0, gt=0, allow_inf_nan=False,
                          description="Share of users under strategy experiment.")


class ContentRule(_Model):
    segment: str = Field(min_length=1)
    variant: str = Field(min_length=1)


class ContentDecisionSpec(_Model):
    """How a message node picks one of its variants (see touchline.orchestrate.content)."""

    strategy: Literal["fixed", "rules", "experiment", "bandit"]
    rules: list[ContentRule] = Field(default_factory=list)
    default: str | None = Field(
        default=None, description="fixed: the variant sent; rules: when no rule matches. "
        "Default: the first variant.")
    experiment: str | None = Field(
        default=None, pattern=_ID, description="Hash salt of the experiment split; default "
        "the node id. Nodes sharing a name and weights split users alike.")
    goal: str | None = Field(
        default=None, description="bandit: the journey goal that rewards a variant; "
        "default the journey's first goal.")


class MessageNode(_Next):
    """A message written to the outbox; rendered and policed by the delivery worker."""

    type: Literal["message"]
    channel: str = Field(min_length=1, description="A channel name, or 'event.channel'.")
    fallback_channel: str | None = None
    to: str | None = Field(default=None, description="Address template; default: from the profile.")
    subject: str | None = None
    body: str | None = None
    template_id: str | None = None
    content: dict[str, Any] = Field(default_factory=dict)
    category: Literal["marketing", "transactional"] = "marketing"
    priority: int = Field(default=5, ge=0, le=9)
    subscription_group: str | None = None
    quiet_hours: Literal["defer", "skip", "ignore"] = "defer"
    variants: list[ContentVariant] = Field(default_factory=list)
    decision: ContentDecisionSpec | None = None


class UpdateProfileNode(_Next):
    type: Literal["update_profile"]
    set: dict[str, Any] = Field(min_length=1)


class WebhookNode(_Next):
    """A call to an HTTP endpoint, delivered through the outbox like a message."""

    type: Literal["webhook"]
    url: str = Field(pattern=r"^https?://")
    body: dict[str, Any] = Field(default_factory=dict)


class JumpNode(_Model):
    type: Literal["jump"]
    to: str


class ExitNode(_Model):
    type: Literal["exit"]
    reason: str = "completed"


Node = Annotated[
    DelayNode | WaitNode | ConditionNode | RandomNode | ExperimentNode | MessageNode
    | UpdateProfileNode | WebhookNode | JumpNode | ExitNode,
    Field(discriminator="type"),
]


class ExitCriterion(_Model):
    """Leave the journey from wherever the user is: an event, or leaving a segment."""

    event: EventMatch | None = None
    leave_segment: str | None = None
    reason: str | None = None


class Goal(_Model):
    name: str = Field(pattern=_ID)
    event: EventMatch
    window: Duration = "7d"

    @field_validator("window")
    @classmethod
    def _w(cls, v: str | int) -> str | int:
        return _check_duration(v)


class Journey(_Model):
    id: str = Field(pattern=_ID)
    name: str = ""
    project: str = "default"
    description: str = ""
    entry: Entry
    re_entry: ReEntry = Field(default_factory=ReEntry)
    entry_cap: EntryCap = Field(default_factory=EntryCap)
    start: str
    nodes: dict[str, Node] = Field(min_length=1)
    exit_when: list[ExitCriterion] = Field(default_factory=list)
    goals: list[Goal] = Field(default_factory=list)
    active_from: date | None = None

    def node_ids(self) -> list[str]:
        return list(self.nodes)

    def successors(self, node_id: str) -> list[tuple[str, str]]:
        """(field path, target) for every edge leaving ``node_id``."""
        node = self.nodes[node_id]
        out: list[tuple[str, str]] = []
        if isinstance(node, WaitNode):
            if node.next:
                out.append(("next", node.next))
            out.append(("on_timeout", node.on_timeout))
        elif isinstance(node, ConditionNode):
            out += [(f"branches.{i}.next", b.next) for i, b in enumerate(node.branches)]
            out.append(("default", node.default))
        elif isinstance(node, RandomNode):
            out += [(f"branches.{i}.next", b.next) for i, b in enumerate(node.branches)]
        elif isinstance(node, ExperimentNode):
            out += [(f"variants.{i}.next", v.next) for i, v in enumerate(node.variants)]
            out.append(("control.next", node.control.next))
        elif isinstance(node, JumpNode):
            out.append(("to", node.to))
        elif isinstance(node, ExitNode):
            pass
        elif node.next:
            out.append(("next", node.next))
        return out


# Operators a filter value may use: {"gte": 100}, {"in": ["a", "b"]} ... A bare value
# means equality. Kept here because they are part of the definition language.
OPERATORS: frozenset[str] = frozenset(
    {"eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "exists", "contains"}
)


def _compare(op: str, actual: Any, expected: Any) -> bool:
    if op == "exists":
        return (actual is not None) == bool(expected)
    if actual is None:
        return op in ("ne", "not_in")
    if op == "eq":
        return bool(actual == expected)
    if op == "ne":
        return bool(actual != expected)
    if op == "in":
        return actual in expected
    if op == "not_in":
        return actual not in expected
    if op == "contains":
        return expected in actual if isinstance(actual, str | list) else False
    try:
        if op == "gt":
            return bool(actual > expected)
        if op == "gte":
            return bool(actual >= expected)
        if op == "lt":
            return bool(actual < expected)
        if op == "lte":
            return bool(actual <= expected)
    except TypeError:
        # A string compared with a number never matches rather than failing the step.
        return False
    return False


def predicate_holds(expected: Any, actual: Any) -> bool:
    """Whether ``actual`` satisfies one filter value (a literal or operator mapping)."""
    if isinstance(expected, dict) and expected and set(expected) <= OPERATORS:
        return all(_compare(op, actual, arg) for op, arg in expected.items())
    return bool(actual == expected)


def where_holds(where: dict[str, Any], properties: dict[str, Any]) -> bool:
    """Every property filter of ``where`` holds for ``properties``."""
    return all(predicate_holds(exp, properties.get(key)) for key, exp in where.items())
