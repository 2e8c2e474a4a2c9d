"""Thompson sampling over content variants, rewarded by the journey goal.

Each arm (variant) has a Beta posterior: ``Beta(prior_alpha + conversions,
prior_beta + sends - conversions)``. To choose, draw once from every arm's posterior
and take the highest draw; arms that convert better win more often, and uncertain
arms still get explored. The state is two counts per arm, kept behind
:class:`BanditStore` (the journey engine persists them in the state store).

In journeys (message nodes with ``decision: {strategy: bandit}``) a trial counts when
the delivery worker records the message sent (:func:`count_sends`) and a success
when the journey goal converts for an entry whose message was sent
(:func:`count_conversions`), each in the transaction that records the send or the
goal. Counting at send rather than at choice keeps messages the policy skipped
(caps, consent, quiet hours, a template the variant cannot fill) from counting
against an arm the user never saw.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..errors import InvalidInput

__all__ = [
    "BANDIT_DDL",
    "BANDIT_SCHEMA",
    "BANDIT_SCHEMA_NAME",
    "ArmCounts",
    "BanditStore",
    "MemoryBanditStore",
    "StateBanditStore",
    "ThompsonBandit",
    "count_conversions",
    "count_sends",
]

BANDIT_SCHEMA_NAME = "content_bandit"
_DDL = [
    "CREATE TABLE IF NOT EXISTS content_bandit ("
    "bandit_key TEXT NOT NULL, arm TEXT NOT NULL, "
    "sends BIGINT NOT NULL DEFAULT 0, conversions BIGINT NOT NULL DEFAULT 0, "
    "PRIMARY KEY (bandit_key, arm))",
]
# For ``StateStore.ensure_schema(BANDIT_SCHEMA_NAME, BANDIT_SCHEMA)`` (append-only), for a
# bandit used on its own. Journeys get the same table through their own schema
# (storage.STATE_SCHEMA, registered by the ``state_schema`` hook): the engine and the
# outbox write it in their transactions, so it must exist wherever they run.
BANDIT_DDL: tuple[str, ...] = tuple(_DDL)
BANDIT_SCHEMA: dict[str, list[str]] = {"sqlite": list(_DDL), "postgres": list(_DDL)}

_UPSERT_TAIL = (
    "ON CONFLICT (bandit_key, arm) DO UPDATE SET "
    "sends = content_bandit.sends + excluded.sends, "
    "conversions = content_bandit.conversions + excluded.conversions")


def _credit_sql(sends: int, conversions: int, status: str) -> str:
    # A count only while the outbox row is in ``status``: the caller runs it in the
    # transaction that moves the row on, so each message counts once however many
    # workers race to record it.
    return ("INSERT INTO content_bandit (bandit_key, arm, sends, conversions) "
            f"SELECT ?, ?, {sends}, {conversions} FROM journey_outbox "
            f"WHERE message_id = ? AND status = '{status}' " + _UPSERT_TAIL)


_SENT_SQL = _credit_sql(1, 0, "sending")
_CONVERTED_SQL = _credit_sql(0, 1, "sent")


def count_sends(tx: _Tx, sent: Sequence[tuple[str, str, str]]) -> None:
    """A trial for each (bandit key, arm, message id) whose outbox row is ``sending``.

    Call it in the transaction that records the row as sent, *before* the update: a
    row another worker already recorded is no longer ``sending`` and is not counted
    again."""
    if sent:
        tx.executemany(_SENT_SQL, sent)


def count_conversions(tx: _Tx, converted: Sequence[tuple[str, str, str]]) -> None:
    """A success for each (bandit key, arm, message id) whose message was sent: a user
    whose message was skipped or is still queued never saw the arm, so the arm earns
    nothing from them (and an arm's successes never exceed its trials)."""
    if converted:
        tx.executemany(_CONVERTED_SQL, converted)


@dataclass(frozen=True)
class ArmCounts:
    """Messages sent with an arm, and how many of them reached the goal."""

    sends: int = 0
    conversions: int = 0


class BanditStore(Protocol):
    """Where arm counts live. ``key`` names one decision (journey and node)."""

    def counts(self, key: str) -> Mapping[str, ArmCounts]: ...

    def add(self, key: str, arm: str, *, sends: int = 0, conversions: int = 0) -> None: ...


class MemoryBanditStore:
    """Counts in a dict: tests, dry runs and single-process demos."""

    def __init__(self) -> None:
        self._counts: dict[str, dict[str, ArmCounts]] = {}

    def counts(self, key: str) -> Mapping[str, ArmCounts]:
        return dict(self._counts.get(key, {}))

    def add(self, key: str, arm: str, *, sends: int = 0, conversions: int = 0) -> None:
        arms = self._counts.setdefault(key, {})
        old = arms.get(arm, ArmCounts())
        arms[arm] = ArmCounts(old.sends + sends, old.conversions + conversions)


class _Tx(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any: ...

    def fetchall(self, sql: str, params: Sequence[Any] = ...) -> list[Any]: ...


class _Store(Protocol):
    def transaction(self) -> AbstractContextManager[_Tx]: ...


class StateBanditStore:
    """Counts in the state store (``content_bandit``; SQLite or PostgreSQL).

    Increments are single upserts, so workers recording at the same time never lose a
    count. Inside an open transaction of the same thread, ``add`` joins it, so a count
    commits with the step that caused it.
    """

    def __init__(self, store: _Store) -> None:
        self.store = store

    def counts(self, key: str) -> Mapping[str, ArmCounts]:
        with self.store.transaction() as tx:
            rows: Iterable[Any] = tx.fetchall(
                "SELECT arm, sends, conversions FROM content_bandit WHERE bandit_key = ?",
                (key,))
            return {str(arm): ArmCounts(int(s), int(c)) for arm, s, c in rows}

    def add(self, key: str, arm: str, *, sends: int = 0, conversions: int = 0) -> None:
        with self.store.transaction() as tx:
            tx.execute(
                "INSERT INTO content_bandit (bandit_key, arm, sends, conversions) "
                "VALUES (?, ?, ?, ?) " + _UPSERT_TAIL, (key, arm, sends, conversions))


class ThompsonBandit:
    """Choose arms by Thompson sampling; record sends and conversions as they happen."""

    def __init__(
        self,
        store: BanditStore,
        *,
        prior_alpha: float = 1.0,
        prior_beta: float = 1.0,
        rng: np.random.Generator | None = None,
    ) -> None:
        if prior_alpha <= 0 or prior_beta <= 0:
            raise InvalidInput("bandit.prior", "alpha and beta must be > 0")
        self.store = store
        self.prior_alpha = prior_alpha
        self.prior_beta = prior_beta
        self.rng = rng if rng is not None else np.random.default_rng()

    def _posterior(self, key: str, arms: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        counts = self.store.counts(key)
        sends = np.array([counts.get(a, ArmCounts()).sends for a in arms], dtype=float)
        wins = np.array([counts.get(a, ArmCounts()).conversions for a in arms], dtype=float)
        # Conversions can outrun recorded sends (a late goal after a count reset).
        wins = np.minimum(wins, sends)
        return self.prior_alpha + wins, self.prior_beta + (sends - wins)

    def choose(self, key: str, arms: Sequence[str]) -> str:
        """One arm, by one posterior draw per arm."""
        if not arms:
            raise InvalidInput("bandit.arms", "at least one arm")
        alpha, beta = self._posterior(key, arms)
        draws = self.rng.beta(alpha, beta)
        return arms[int(np.argmax(draws))]

    def record_send(self, key: str, arm: str) -> None:
        self.store.add(key, arm, sends=1)

    def record_conversion(self, key: str, arm: str) -> None:
        self.store.add(key, arm, conversions=1)

    def probability_best(self, key: str, arms: Sequence[str], *, draws: int = 10_000
                         ) -> dict[str, float]:
        """For reporting: the chance each arm is the best, by Monte Carlo."""
        if not arms:
            return {}
        alpha, beta = self._posterior(key, arms)
        samples = self.rng.beta(alpha, beta, size=(draws, len(arms)))
        wins = np.bincount(np.argmax(samples, axis=1), minlength=len(arms))
        return {arm: float(w) / draws for arm, w in zip(arms, wins, strict=True)}
