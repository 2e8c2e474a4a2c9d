"""The boundary between collection protocols and the ingest pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .records import Record

__all__ = ["MemorySink", "Project", "ProjectDirectory", "Sink", "StaticProjects"]


@dataclass(frozen=True, slots=True)
class Project:
    name: str
    write_key: str
    time_zone: str = "Asia/Shanghai"


class Sink(Protocol):
    async def submit(self, records: Sequence[Record]) -> None:
        """Accept records; return only once they are durable (on disk)."""
        ...


class ProjectDirectory(Protocol):
    def by_name(self, name: str) -> Project | None: ...

    def by_write_key(self, key: str) -> Project | None: ...


class MemorySink:
    """A sink that keeps records in a list: for tests of the protocol adapters."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    async def submit(self, records: Sequence[Record]) -> None:
        self.records.extend(records)


class StaticProjects:
    """A fixed set of projects: for tests."""

    def __init__(self, projects: Sequence[Project]) -> None:
        self._by_name = {p.name: p for p in projects}
        self._by_key = {p.write_key: p for p in projects}

    def by_name(self, name: str) -> Project | None:
        return self._by_name.get(name)

    def by_write_key(self, key: str) -> Project | None:
        return self._by_key.get(key)
