"""CSV in and out for segments: static lists from uploads, member exports.

An upload has a header row; the ``user_id`` column (or the column named by the
caller) holds integer user ids. A bad row is reported with its line number and
the rest of the file is still used.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime

from ..errors import InvalidInput
from .segments import Tx, members_of

__all__ = ["export_members_csv", "read_user_ids"]


def read_user_ids(text: str, column: str = "user_id") -> tuple[list[int], list[InvalidInput]]:
    """The user ids of a CSV upload, and one error per refused row."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    header = next(reader, None)
    if header is None:
        raise InvalidInput("csv", "is empty; expected a header row with a user_id column")
    names = [h.strip() for h in header]
    if column not in names:
        raise InvalidInput("csv", f"has no {column!r} column (columns: {', '.join(names)})")
    index = names.index(column)
    ids: list[int] = []
    errors: list[InvalidInput] = []
    for line, row in enumerate(reader, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        raw = row[index].strip() if index < len(row) else ""
        try:
            ids.append(int(raw))
        except ValueError:
            errors.append(InvalidInput(f"csv line {line}.{column}",
                                       f"must be an integer user id, got {raw!r}"))
    return ids, errors


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def export_members_csv(tx: Tx, project: str, segment: str, page: int = 10_000) -> Iterator[str]:
    """The members as CSV text chunks (``user_id,member_since``), paged by user id."""
    yield "user_id,member_since\r\n"
    after: int | None = None
    while True:
        rows = members_of(tx, project, segment, limit=page, after_user=after)
        if not rows:
            return
        out = io.StringIO()
        writer = csv.writer(out)
        for user, since in rows:
            writer.writerow([user, _iso(since)])
        yield out.getvalue()
        after = rows[-1][0]
