"""The fast path of Sensors NDJSON import: DuckDB parses, checks and canonicalizes.

The collector's event id is the xxh3-128 of the record's canonical JSON (keys sorted,
no ``_flush_time``, orjson's encoding). Parsing every line with orjson and dumping it
again costs more per line than everything else together, so for lines of the common
shape DuckDB does it in one parallel pass (``from_json`` with a schema of the keys seen
so far, every leaf as JSON text): it rebuilds the canonical text of each line from its
leaves, extracts the columns, applies the collector's checks, and Python only hashes
the canonical texts.

Why the rebuilt text is the collector's canonical text, exactly:

- Only lines that are safe byte-wise are tried: valid UTF-8, no backslash (so no
  escapes anywhere, strings are their raw bytes), no control characters, at most
  8,191 bytes (so no string breaks the length rule), starting with ``{``.
- Every leaf is accepted only in an encoding orjson writes identically and that no
  other JSON text of its value is shorter than: a string, ``true``/``false``, an
  integer of at most 18 digits, a plain decimal that orjson also writes plainly and
  that no exponent form shortens, a list of strings. Anything else (objects below the
  second level, ``NaN``, long numbers, ``1e-3``) leaves the line to Python. The check
  is one pattern over the non-string leaves only (strings need none), and the rebuilt
  text must hold no backslash (DuckDB escaped nothing).
- Keys absent from the schema, explicit nulls and duplicate keys all vanish from the
  rebuilt text, which then is shorter than the line (minus its ``_flush_time`` member).
  Since every rebuilt part is as short as any text of the same value, equal lengths
  mean that nothing vanished and the line was compact: the rebuilt text is the
  record's canonical text. Lines of any other length go to Python.

Lines this path does not accept are handed back by number; the caller runs them
through the per-line Python pass (:mod:`touchline.track.bulk_validate`), which either
accepts them or leaves them to the collector's decoder for its exact error. The schema
grows from samples of those lines, so a file's common shape quickly takes this path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import xxhash

from .bulk_validate import _EDGES, BULK_SCHEMA
from .records import JUNK_IDS, NAME_RE
from .sensors import CONTROL_KEYS, LIB_KEYS
from .validate import MAX_FUTURE_MS, MAX_ID_LENGTH, MAX_PAST_MS, STRICT_RULES

__all__ = ["FastResult", "LineSplit", "SensorsSchema", "fast_sensors", "split_lines"]

MAX_LINE = STRICT_RULES.max_string or 8191  # a longer line may hold a too long string
MAX_LEAVES = 1000  # keys in the schema; lines with more leave for Python
SAMPLE_LINES = 500  # lines parsed in Python to grow the schema
# Lines left over before a chunk's leftovers are sampled to grow the schema: a few odd
# lines in a chunk are cheaper in Python than another DuckDB pass.
REGROW_AT = 64

# Groups are non-capturing: RE2 then matches with its fast automaton.
_INT = r"-?(?:0|[1-9][0-9]{0,17})"
# Decimals orjson and DuckDB write alike (tested: plain, below 1e16) and that no
# exponent form writes shorter (which 0.001 as 1e-3 or 10.0 as 1e1 would be).
_DECIMAL = r"-?(?:0\.0?[1-9][0-9]*|[1-9][0-9]{0,15}\.[0-9]*[1-9]|(?:[1-9][0-9]{0,14})?[1-9]\.0)"
# With no backslash in the line, a string is '"' + bytes other than '"' + '"'.
_STRING = r'"[^"]*"'
# The non-string leaves of a record, comma-separated (see _build_sql).
_OTHER = rf'(?:true|false|{_INT}|{_DECIMAL}|\[(?:{_STRING}(?:,{_STRING})*)?\])'
_OTHERS = rf"(?:{_OTHER}(?:,{_OTHER})*)?"
_MAX_MS = 10**14
_NAME = NAME_RE.pattern.removeprefix("^").removesuffix("$")
_FLUSH = "_flush_time"
# Present and not null, these make a record something other than the common shape.
_NOT_COMMON = ("identities", "login_id", "anonymous_id", "original_id")
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
# Every byte but control characters (other than the newline) and the backslash.
_SAFE_BYTES = bytes(b for b in range(256) if b >= 0x20 and b != 0x5C) + b"\n"


def _safe_key(key: Any) -> bool:
    return (isinstance(key, str) and 0 < len(key) <= 200
            and not any(c in key for c in '"\\') and all(ord(c) >= 0x20 for c in key))


@dataclass
class SensorsSchema:
    """Keys seen so far: top-level key -> None (a leaf) or its child keys (an object)."""

    top: dict[str, list[str] | None] = field(default_factory=dict)
    leaves: int = 0

    def grow(self, records: list[Any]) -> bool:
        """Add the safe keys of parsed records; True when anything was added.

        DuckDB matches struct keys case-insensitively, so a key that differs from a
        known one only in case is left out (its lines go to Python).
        """
        changed = False
        lowered = {k.lower() for k in self.top}
        for record in records:
            if not isinstance(record, dict):
                continue
            for key, value in record.items():
                if self.leaves >= MAX_LEAVES or not _safe_key(key):
                    continue
                if key not in self.top:
                    if key.lower() in lowered:
                        continue
                    lowered.add(key.lower())
                    self.top[key] = [] if isinstance(value, dict) and key != _FLUSH else None
                    self.leaves += 1
                    changed = True
                children = self.top[key]
                if children is None or not isinstance(value, dict):
                    continue
                known = {c.lower() for c in children}
                for child in value:
                    if (child not in children and _safe_key(child)
                            and child.lower() not in known and self.leaves < MAX_LEAVES):
                        children.append(child)
                        known.add(child.lower())
                        self.leaves += 1
                        changed = True
        return changed

    def duckdb_type(self) -> str:
        out: dict[str, Any] = {}
        for key, children in self.top.items():
            if children is None:
                out[key] = "JSON"
            elif children:
                out[key] = {c: "JSON" for c in children}
        return orjson.dumps(out).decode()


@dataclass
class LineSplit:
    """The lines of a block: where each starts and ends, which are safe to try fast."""

    data: bytes | bytearray
    first: int
    starts: np.ndarray  # int64, per line
    ends: np.ndarray  # int64, per line, exclusive, without the newline
    safe: np.ndarray  # bool, per line

    @property
    def count(self) -> int:
        return len(self.starts)

    def line(self, index: int) -> bytes:
        return bytes(self.data[int(self.starts[index]):int(self.ends[index])])


def split_lines(data: bytes | bytearray, first: int) -> LineSplit:
    """Split whole lines (no trailing newline) and mark the byte-wise safe ones."""
    arr = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(arr == 10)
    starts = np.empty(len(newlines) + 1, dtype=np.int64)
    starts[0] = 0
    starts[1:] = newlines + 1
    ends = np.empty_like(starts)
    ends[:-1] = newlines
    ends[-1] = len(data)
    lengths = ends - starts
    safe = (lengths > 0) & (lengths <= MAX_LINE)
    if len(data):
        safe &= arr[np.minimum(starts, len(data) - 1)] == ord("{")
    else:
        safe &= False
    # Control characters (other than the newlines) and backslashes: rare, so a scan
    # in C first (deleting the safe bytes, several times faster than a regex search),
    # and numpy to find their lines only when there are some.
    if not data.translate(None, _SAFE_BYTES):
        bad = np.zeros(0, dtype=np.int64)
    else:
        bad = np.flatnonzero(((arr < 0x20) & (arr != 10)) | (arr == 0x5C))
    if len(bad):
        safe[np.searchsorted(starts, bad, side="right") - 1] = False
    if not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            for index in np.flatnonzero(safe).tolist():
                try:
                    data[starts[index]:ends[index]].decode("utf-8")
                except UnicodeDecodeError:
                    safe[index] = False
    return LineSplit(data, first, starts, ends, safe)


@dataclass
class FastResult:
    rows: pa.Table  # BULK_SCHEMA, accepted
    left: list[int]  # indexes (into the split) of the lines left to Python


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _member(key: str, expr: str) -> str:
    return f"{_lit(orjson.dumps(key).decode() + ':')} || {expr}"


def _name_ok(name: str) -> bool:
    lowered = name.lower()
    return bool(NAME_RE.match(name)) and lowered not in STRICT_RULES.reserved and not (
        lowered.startswith(STRICT_RULES.reserved_prefixes))


def _build_sql(schema: SensorsSchema) -> str:
    # Every leaf's JSON text once, as a column of `leaves`: the canonical text, the
    # stored properties and the checks all read these columns.
    names: dict[tuple[str, str | None], str] = {}
    columns: list[str] = []
    for key in schema.top:
        children = schema.top[key]
        for child in [None] if children is None else children:
            path = f"j.{_ident(key)}" + ("" if child is None else f".{_ident(child)}")
            names[(key, child)] = name = f"l{len(names)}"
            columns.append(f"{path}::VARCHAR AS {name}")

    members: list[str] = []  # canonical member text expression per top-level key
    for key in sorted(schema.top):
        if key == _FLUSH:
            continue
        children = schema.top[key]
        if children is None:
            # An object where the schema has a leaf would come out unsorted: it
            # vanishes, and the length check leaves the line to Python.
            v = names[(key, None)]
            members.append(_member(key, f"CASE WHEN NOT starts_with({v}, '{{') THEN {v} END"))
        elif children:
            parts = [_member(c, names[(key, c)]) for c in sorted(children)]
            inner = f"NULLIF(concat_ws(',', {', '.join(parts)}), '')"
            members.append(f"{_lit(orjson.dumps(key).decode() + ':{')} || {inner} || '}}'")
    canonical = "'{' || concat_ws(',', " + ", ".join(members or ["NULL"]) + ") || '}'"
    # The leaves that are not strings, comma-separated: each must be in an encoding
    # orjson writes alike and no shorter text of its value exists (strings are,
    # with no backslash in the line). An object below the first level, null, NaN or
    # a long number fails; a top-level object vanished above.
    others = [f"CASE WHEN NOT starts_with({names[leaf]}, '\"') THEN {names[leaf]} END"
              for leaf in names if leaf != (_FLUSH, None)]
    others_ok = (f"regexp_full_match(concat_ws(',', {', '.join(others)}), {_lit(_OTHERS)})"
                 if others else "true")
    flush = (f"CASE WHEN {names[(_FLUSH, None)]} IS NULL THEN 0"
             f" ELSE {len(_FLUSH) + 4} + strlen({names[(_FLUSH, None)]}) END"
             if (_FLUSH, None) in names else "0")

    def top(key: str) -> str:
        return names[(key, None)] if (key, None) in names else "NULL"

    props = schema.top.get("properties") or []
    lib = schema.top.get("lib") or []
    stored = [_member(p, names[("properties", p)]) for p in props if p not in CONTROL_KEYS]
    for key in LIB_KEYS:
        if key in lib:
            v = names[("lib", key)]
            own = f"j.properties.{_ident(key)} IS NULL AND " if key in props else ""
            stored.append(f"CASE WHEN {own}starts_with({v}, '\"') THEN {_member(key, v)} END")
    stored_expr = ("'{' || concat_ws(',', " + ", ".join(stored) + ") || '}'") if stored else "'{}'"
    login = (f"coalesce({names[('properties', '$is_login_id')]} = 'true', false)"
             if "$is_login_id" in props else "false")
    names_ok = " AND ".join(f"j.properties.{_ident(p)} IS NULL"
                            for p in props if p not in CONTROL_KEYS and not _name_ok(p)) or "true"
    common = " AND ".join(
        [f"{top('type')} = '\"track\"'", f"starts_with({top('event')}, '\"')",
         f"starts_with({top('distinct_id')}, '\"')",
         f"regexp_full_match({top('time')}, '{_INT}')"]
        # (A key only seen as {} is not in the struct: its lines fail the length check.)
        + [f"j.{_ident(k)} IS NULL" for k in _NOT_COMMON if schema.top.get(k, ...) != []
           and k in schema.top]
        # Properties that are there but not an object: the collector refuses them.
        + (["j.properties IS NULL"] if schema.top.get("properties", ...) is None else [])
        + [f"({top('project')} IS NULL OR {top('project')} IN ('\"\"', $project))"
           if "project" in schema.top else "true"]
    )
    return f"""
WITH parsed AS (
    SELECT line, nbytes, from_json(raw, {_lit(schema.duckdb_type())}) AS j FROM __tl_fast WHERE safe
), leaves AS (
    SELECT line, nbytes, j, {', '.join(columns)} FROM parsed
), built AS (
    SELECT *, {canonical} AS canonical, {flush} AS flush, {common} AS common FROM leaves
), shaped AS (
    SELECT line, canonical,
        strlen(canonical) = nbytes - flush AND common AND NOT contains(canonical, '\\')
            AND {others_ok} AND {names_ok} AS ok,
        substr({top('event')}, 2, strlen({top('event')}) - 2) AS event,
        substr({top('distinct_id')}, 2, strlen({top('distinct_id')}) - 2) AS distinct_id,
        CASE WHEN {login} THEN 'login_id' ELSE 'anonymous_id' END AS id_type,
        TRY_CAST({top('time')} AS BIGINT) AS time,
        coalesce({top('time_free')} = 'true', false) AS time_free,
        {stored_expr} AS properties
    FROM built
), checked AS (
SELECT line, canonical, event, distinct_id, id_type, time, properties,
    coalesce(ok
        AND regexp_full_match(event, {_lit(_NAME)})
        AND length(distinct_id) BETWEEN 1 AND {MAX_ID_LENGTH}
        AND NOT list_contains($junk, lower(distinct_id))
        AND NOT regexp_matches(distinct_id, {_lit(_EDGES)})
        AND time >= 0 AND time < {_MAX_MS}
        AND (time_free OR NOT $window
             OR time BETWEEN $now - {MAX_PAST_MS} AND $now + {MAX_FUTURE_MS}), false) AS ok
FROM shaped
)
-- Only the accepted lines: the others are left to Python by number.
SELECT line, canonical, event, distinct_id, id_type, time, properties FROM checked WHERE ok
"""


def _hash_rows(canonical: pa.Array) -> pa.Array:
    """Event ids of canonical texts: hex xxh3-128, as :func:`decode.content_hash`."""
    n = len(canonical)
    if canonical.type != pa.large_string():
        canonical = canonical.cast(pa.large_string())
    offsets_buf, data_buf = canonical.buffers()[1], canonical.buffers()[2]
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[canonical.offset:canonical.offset + n + 1]
    view = memoryview(data_buf) if data_buf is not None else memoryview(b"")
    bounds = offsets.tolist()
    digest = xxhash.xxh3_128_digest
    raw = b"".join([digest(view[bounds[i]:bounds[i + 1]]) for i in range(n)])
    digits = np.frombuffer(raw, dtype=np.uint8)
    text = np.empty(2 * len(digits), dtype=np.uint8)
    text[0::2] = _HEX[digits >> 4]
    text[1::2] = _HEX[digits & 15]
    ids = pa.StringArray.from_buffers(
        n, pa.py_buffer(np.arange(0, 32 * n + 1, 32, dtype=np.int32)), pa.py_buffer(text))
    return ids


def fast_sensors(
    con: duckdb.DuckDBPyConnection, split: LineSplit, schema: SensorsSchema, *, project: str,
    now_ms: int, time_window: bool, extra_junk: frozenset[str],
) -> FastResult:
    """Accept what the fast path can of a block's lines; see the module docstring."""
    todo = split.safe.copy()
    accepted: list[pa.Table] = []
    for attempt in range(2):
        if attempt or not schema.top:
            # Grow the schema from a sample of what is left, then retry those lines.
            pending = np.flatnonzero(todo)
            if len(pending) < (1 if not schema.top else REGROW_AT):
                break
            sample = pending[np.linspace(0, len(pending) - 1,
                                         min(SAMPLE_LINES, len(pending))).astype(int)]
            records = []
            for index in sample.tolist():
                try:
                    records.append(orjson.loads(split.line(index)))
                except orjson.JSONDecodeError:
                    pass
            if not schema.grow(records) and attempt:
                break
        if not todo.any() or not schema.top:
            break
        table, invalid = _run(con, split, todo, schema, project=project, now_ms=now_ms,
                              time_window=time_window, extra_junk=extra_junk)
        todo[invalid] = False
        if table.num_rows:
            todo[table.column("line").to_numpy() - split.first] = False
            accepted.append(table)
    left: list[int] = np.flatnonzero(~_accepted_mask(split, accepted)).tolist()
    if not accepted:
        return FastResult(BULK_SCHEMA.empty_table(), left)
    good = pa.concat_tables(accepted)
    ids = _hash_rows(good.column("canonical").combine_chunks())

    def own(name: str) -> pa.Array:
        # A copy: a column DuckDB exported keeps its whole result alive, canonical
        # texts included (some 100 MB a 64 MB chunk), until the chunk is loaded.
        return pa.concat_arrays(good.column(name).chunks)

    distinct_id = own("distinct_id")
    rows = pa.table({
        "line": own("line"), "event_id": ids, "event": own("event"),
        "distinct_id": distinct_id, "id_type": own("id_type"), "id_value": distinct_id,
        "time": own("time"), "properties": own("properties"),
    }).cast(BULK_SCHEMA)
    return FastResult(rows, left)


def _accepted_mask(split: LineSplit, accepted: list[pa.Table]) -> np.ndarray:
    mask = np.zeros(split.count, dtype=bool)
    for table in accepted:
        mask[table.column("line").to_numpy() - split.first] = True
    return mask


def _run(
    con: duckdb.DuckDBPyConnection, split: LineSplit, todo: np.ndarray, schema: SensorsSchema,
    *, project: str, now_ms: int, time_window: bool, extra_junk: frozenset[str],
) -> tuple[pa.Table, list[int]]:
    """One DuckDB pass over the `todo` lines; (result, lines DuckDB could not parse)."""
    # The lines as one Arrow string column over the block's bytes: no copy. Each
    # holds its newline, which JSON parsing skips; `len` is the length without it.
    n = split.count
    offsets = np.empty(n + 1, dtype=np.int64)
    offsets[:-1] = split.starts
    offsets[-1] = len(split.data)
    raw = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(split.data))
    invalid: list[int] = []
    sql = _build_sql(schema)
    # Patterns and the schema are literals: as parameters DuckDB would not treat
    # them as constants.
    params = {
        "project": orjson.dumps(project).decode(), "junk": sorted(JUNK_IDS | extra_junk),
        "now": int(now_ms), "window": bool(time_window),
    }
    if "project" not in schema.top:  # the only parameter the SQL may not use
        del params["project"]
    while True:
        safe = todo.copy()
        safe[invalid] = False
        chunk = pa.table({
            "line": pa.array(np.arange(split.first, split.first + n, dtype=np.int64)),
            "raw": raw, "nbytes": pa.array(split.ends - split.starts), "safe": pa.array(safe),
        })
        con.register("__tl_fast", chunk)
        try:
            return con.sql(sql, params=params).to_arrow_table(), invalid
        except duckdb.InvalidInputException:
            # A line DuckDB cannot parse: find such lines and leave them to Python.
            bad = con.sql("SELECT line FROM __tl_fast WHERE safe AND NOT json_valid(raw)"
                          ).fetchall()
            if not bad:
                raise
            invalid.extend(int(b[0]) - split.first for b in bad)
        finally:
            con.unregister("__tl_fast")
