"""Columnar validation of Sensors NDJSON for bulk import.

The split of work:

1. One Python pass per line does what needs the parsed record anyway: orjson parses
   it, the event id is the collector's (xxh3-128 of the canonical record without
   ``_flush_time``, see :mod:`touchline.track.sensors`), and the stored properties
   are built exactly as the collector builds them. Records of the common shape (a
   ``track`` with one identity: its distinct id, or the single entry of an
   ID-Mapping 3 ``identities`` map) become columns; every other line (links,
   profiles, items, anything odd) is kept for the Python decoder.
2. DuckDB checks the columns in bulk with SQL expressions: event name pattern,
   reserved and malformed property names (once per distinct set of names), distinct
   id length and junk values, the time range and window. The constants come from
   :mod:`touchline.track.records` and :mod:`touchline.track.validate`.
3. A line the SQL does not accept is handed to the collector's own decoder
   (:func:`touchline.track.sensors.sensors_record`): it either turns out valid (a
   rare shape) or raises the exact error the HTTP collector would give, with its
   field and rule. The SQL is deliberately the stricter of the two, so it never
   lets through what the collector refuses; tests compare both on random records.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from .records import JUNK_IDS, NAME_RE
from .sensors import CONTROL_KEYS, IDENTITY_PREFIX, LIB_KEYS
from .validate import MAX_FUTURE_MS, MAX_ID_LENGTH, MAX_PAST_MS, STRICT_RULES

__all__ = [
    "BULK_SCHEMA",
    "BulkChunk",
    "ImportIssue",
    "SensorsColumns",
    "StagedChunk",
    "check_sensors_lines_wire",
    "check_sensors_wire",
    "read_tabular",
    "sensors_columns",
    "sensors_columns_at",
    "stage_sensors",
    "stage_sensors_at",
    "validate_columns",
]

_KEY_SEP = "\x1f"  # cannot occur in a valid property name

# What records.is_junk_id strips before comparing: Python's whitespace (more than
# RE2's \s: it includes \x1c-\x1f, NBSP, the Unicode spaces) and quotes. An id that
# starts or ends with one of these is left to the Python decoder.
_STRIPPED = "".join(c for c in map(chr, range(0x3001)) if c.isspace())
_EDGE_CLASS = "[" + "".join(f"\\x{{{ord(c):x}}}" for c in _STRIPPED + "\"'") + "]"
_EDGES = f"^{_EDGE_CLASS}|{_EDGE_CLASS}$"
_MAX_STRING: int = STRICT_RULES.max_string or 8191
_MAX_MS = 10**14

# The accepted common-shape rows, ready for stitching and loading.
BULK_SCHEMA = pa.schema([
    ("line", pa.int64()), ("event_id", pa.string()), ("event", pa.string()),
    ("distinct_id", pa.string()), ("id_type", pa.string()), ("id_value", pa.string()),
    ("time", pa.int64()), ("properties", pa.string()),
])


@dataclass(frozen=True, slots=True)
class ImportIssue:
    """A rejected line: where, which field, which rule."""

    path: str
    line: int
    field: str
    rule: str

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "line": self.line, "field": self.field, "rule": self.rule}


@dataclass
class SensorsColumns:
    """The Python pass's output for one chunk of lines."""

    columns: dict[str, list[Any]] = field(default_factory=lambda: {
        "line": [], "event_id": [], "event": [], "distinct_id": [], "id_type": [],
        "id_value": [], "time": [], "time_free": [], "keys": [], "properties": [],
    })
    others: dict[int, Any] = field(default_factory=dict)  # line -> parsed record
    invalid_json: list[int] = field(default_factory=list)
    blank: int = 0


@dataclass
class StagedChunk:
    """The Python pass's output as Arrow: what moves between processes."""

    table: pa.Table  # the stage schema
    others: dict[int, Any]
    invalid_json: list[int]
    blank: int

    @classmethod
    def from_columns(cls, cols: SensorsColumns) -> StagedChunk:
        return cls(pa.Table.from_pydict(cols.columns, schema=_STAGE_SCHEMA), cols.others,
                   cols.invalid_json, cols.blank)


def stage_sensors(data: bytes, first_line: int, project: str) -> StagedChunk:
    """One chunk of NDJSON (whole lines) through the Python pass, as Arrow."""
    return StagedChunk.from_columns(sensors_columns(data.split(b"\n"), first_line, project))


Wire = tuple[bytes, dict[int, Any], list[int], int]
_worker_con: duckdb.DuckDBPyConnection | None = None


def check_sensors_wire(
    data: bytes, first_line: int, project: str, *, now_ms: int, time_window: bool,
    extra_junk: frozenset[str],
) -> Wire:
    """Both steps for one chunk in a worker process, the result in a picklable form.

    Each worker keeps one in-memory DuckDB connection for its chunks.
    """
    global _worker_con
    if _worker_con is None:
        _worker_con = duckdb.connect()
    staged = stage_sensors(data, first_line, project)
    return validate_columns(_worker_con, staged, now_ms=now_ms, time_window=time_window,
                            extra_junk=extra_junk).to_wire()


def check_sensors_lines_wire(
    numbers: list[int], lines: list[bytes], project: str, *, now_ms: int, time_window: bool,
    extra_junk: frozenset[str],
) -> Wire:
    """:func:`check_sensors_wire` for numbered lines (what the fast path left over)."""
    global _worker_con
    if _worker_con is None:
        _worker_con = duckdb.connect()
    staged = stage_sensors_at(zip(numbers, lines, strict=True), project)
    return validate_columns(_worker_con, staged, now_ms=now_ms, time_window=time_window,
                            extra_junk=extra_junk).to_wire()


@dataclass
class BulkChunk:
    """A validated chunk: bulk rows, and the lines the Python decoder must judge."""

    rows: pa.Table  # BULK_SCHEMA
    others: dict[int, Any]  # line -> parsed record, for the Python decoder
    invalid_json: list[int]
    blank: int

    def to_wire(self) -> Wire:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, self.rows.schema) as writer:
            writer.write_table(self.rows)
        return sink.getvalue().to_pybytes(), self.others, self.invalid_json, self.blank

    @classmethod
    def from_wire(cls, wire: Wire) -> BulkChunk:
        data, others, invalid_json, blank = wire
        rows = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
        return cls(rows, others, invalid_json, blank)


_CONTROL = frozenset(CONTROL_KEYS)
_LIB = frozenset(LIB_KEYS)
_STR, _LIST, _DICT, _INT = str, list, dict, int


def sensors_columns(lines: Sequence[bytes], first_line: int, project: str) -> SensorsColumns:
    """The per-line Python pass (see the module docstring) over consecutive lines."""
    return sensors_columns_at(enumerate(lines, first_line), project)


def stage_sensors_at(numbered: Iterable[tuple[int, bytes]], project: str) -> StagedChunk:
    """:func:`stage_sensors` for lines given with their numbers (not consecutive)."""
    return StagedChunk.from_columns(sensors_columns_at(numbered, project))


def sensors_columns_at(numbered: Iterable[tuple[int, bytes]], project: str) -> SensorsColumns:
    """The per-line Python pass over (line number, line) pairs.

    This loop is the hot path of lines the fast path (:mod:`touchline.track.bulk_json`)
    leaves over: it is written flat, with local names, and does only what needs the
    parsed record.
    """
    out = SensorsColumns()
    c = out.columns
    add_line, add_id, add_event = c["line"].append, c["event_id"].append, c["event"].append
    add_did, add_type, add_time = c["distinct_id"].append, c["id_type"].append, c["time"].append
    add_value = c["id_value"].append
    add_free, add_keys, add_props = c["time_free"].append, c["keys"].append, c["properties"].append
    others = out.others
    loads, dumps = orjson.loads, orjson.dumps
    sort_keys = orjson.OPT_SORT_KEYS
    digest = xxhash.xxh3_128_hexdigest
    control, lib_keys, sep, max_string = _CONTROL, _LIB, _KEY_SEP, _MAX_STRING
    accepted_projects = (None, "", project)
    for number, line in numbered:
        if not line or line.isspace():
            out.blank += 1
            continue
        try:
            record = loads(line)
        except orjson.JSONDecodeError:
            out.invalid_json.append(number)
            continue
        if type(record) is not _DICT:
            others[number] = record
            continue
        # A file holds what was sent; the flush time only corrects live clocks.
        record.pop("_flush_time", None)
        get = record.get
        props = get("properties")
        if props is None:
            props = {}
        elif type(props) is not _DICT:
            others[number] = record
            continue
        event, did, when = get("event"), get("distinct_id"), get("time")
        if (
            get("type") != "track" or type(event) is not _STR or type(did) is not _STR
            or type(when) is not _INT or get("project") not in accepted_projects
        ):
            others[number] = record
            continue
        # Exactly one identity: the distinct id (typed by $is_login_id), or the one
        # entry of an ID-Mapping 3 `identities` map. A top-level login_id or
        # anonymous_id of another type would add a second one (a link).
        given = get("identities")
        if given is None:
            id_type = "login_id" if props.get("$is_login_id") is True else "anonymous_id"
            id_value: Any = did
        elif type(given) is _DICT and len(given) == 1:
            ((id_type, id_value),) = given.items()
            if id_type.startswith(IDENTITY_PREFIX):
                id_type = id_type[len(IDENTITY_PREFIX):]
        else:
            others[number] = record
            continue
        if type(id_value) is not _STR or (
            (id_type != "login_id" and get("login_id") is not None)
            or (id_type != "anonymous_id" and get("anonymous_id") is not None)
        ):
            others[number] = record
            continue
        # The collector's value rules for flat properties; the names go to SQL.
        stored = {}
        ok = True
        for key, value in props.items():
            if key in control:
                continue
            t = type(value)
            if t is _STR:
                ok = len(value) <= max_string
            elif t is _LIST:
                ok = all(type(e) is _STR and len(e) <= max_string for e in value)
            elif t is _DICT:
                ok = False
            if not ok:
                break
            stored[key] = value
        if not ok:
            others[number] = record
            continue
        # The names the collector checks are those sent (minus control keys); the
        # lib fields are added after its checks, never over a sent property.
        keys = sep + sep.join(stored) if stored else ""  # "" = no names at all
        lib = get("lib")
        if type(lib) is _DICT:
            for key, value in lib.items():
                if (key in lib_keys and key not in stored and type(value) is _STR
                        and len(value) <= max_string):
                    stored[key] = value
        add_line(number)
        add_id(digest(dumps(record, option=sort_keys)))
        add_event(event)
        add_did(did)
        add_type(id_type)
        add_value(id_value)
        add_time(when)
        add_free(get("time_free") is True)
        add_keys(keys)
        add_props(dumps(stored).decode())
    return out


_STAGE_SCHEMA = pa.schema([
    ("line", pa.int64()), ("event_id", pa.string()), ("event", pa.string()),
    ("distinct_id", pa.string()), ("id_type", pa.string()), ("id_value", pa.string()),
    ("time", pa.int64()),
    ("time_free", pa.bool_()), ("keys", pa.string()), ("properties", pa.string()),
])

# RE2 (DuckDB) full-match form of records.NAME_RE.
_NAME_PATTERN = NAME_RE.pattern.removeprefix("^").removesuffix("$")

_PREFIX_CHECKS = " ".join(
    f"AND NOT starts_with(lower(k), '{prefix}')" for prefix in STRICT_RULES.reserved_prefixes)

# Checks that depend on few distinct values (property name sets, event names,
# identity types) run once per distinct value and are joined back; per-row checks
# are plain comparisons. An id checked as the distinct id is not checked twice.
_VALIDATE_SQL = f"""
WITH key_sets AS (
    SELECT keys, keys = '' OR list_bool_and(list_transform(
        string_split(substr(keys, 2), chr(31)), lambda k:
            regexp_full_match(k, $name)
            AND NOT list_contains($reserved, lower(k))
            {_PREFIX_CHECKS})) AS keys_ok
    FROM (SELECT DISTINCT keys FROM __tl_chunk)
), names AS (
    SELECT event, id_type,
        regexp_full_match(event, $name)
        AND regexp_full_match(id_type, $name) AND NOT starts_with(id_type, '$') AS names_ok
    FROM (SELECT DISTINCT event, id_type FROM __tl_chunk)
)
SELECT c.line, c.event_id, c.event, c.distinct_id, c.id_type, c.id_value, c.time,
    c.properties,
    k.keys_ok AND n.names_ok
    AND length(c.distinct_id) BETWEEN 1 AND {MAX_ID_LENGTH}
    AND NOT list_contains($junk, lower(c.distinct_id))
    -- is_junk_id strips whitespace and quotes first: leave such ids to Python.
    AND NOT regexp_matches(c.distinct_id, $edges)
    AND (c.id_value = c.distinct_id OR (
        length(c.id_value) BETWEEN 1 AND {MAX_ID_LENGTH}
        AND NOT list_contains($junk, lower(c.id_value))
        AND NOT regexp_matches(c.id_value, $edges)))
    AND c.time >= 0 AND c.time < {_MAX_MS}
    AND (c.time_free OR NOT $window
         OR c.time BETWEEN $now - {MAX_PAST_MS} AND $now + {MAX_FUTURE_MS}) AS ok
FROM __tl_chunk AS c
JOIN key_sets AS k ON k.keys = c.keys
JOIN names AS n ON n.event = c.event AND n.id_type = c.id_type
"""


def validate_columns(
    con: duckdb.DuckDBPyConnection,
    chunk: StagedChunk,
    *,
    now_ms: int,
    time_window: bool,
    extra_junk: frozenset[str] = frozenset(),
) -> BulkChunk:
    """Run the SQL checks; rows that fail join the lines left to Python."""
    staged = chunk.table
    others = dict(chunk.others)
    if staged.num_rows == 0:
        return BulkChunk(BULK_SCHEMA.empty_table(), others, chunk.invalid_json, chunk.blank)
    con.register("__tl_chunk", staged)
    try:
        checked = con.sql(_VALIDATE_SQL, params={
            "name": _NAME_PATTERN, "reserved": sorted(STRICT_RULES.reserved),
            "junk": sorted(JUNK_IDS | extra_junk), "now": int(now_ms),
            "window": bool(time_window), "edges": _EDGES,
        }).to_arrow_table()
    finally:
        con.unregister("__tl_chunk")
    ok = checked.column("ok").to_pylist()
    rejected = [i for i, flag in enumerate(ok) if not flag]
    if rejected:
        lines = checked.column("line").to_pylist()
        for i in rejected:
            others[lines[i]] = None  # re-read from the source by line number
    rows = checked.filter(pc.fill_null(checked.column("ok"), False)).select(
        BULK_SCHEMA.names).cast(BULK_SCHEMA)
    return BulkChunk(rows, others, chunk.invalid_json, chunk.blank)


# -- CSV and Parquet --------------------------------------------------------------------

# How each column type becomes milliseconds since the epoch: data, not branches.
_TIME_EXPR: dict[str, str] = {
    "BIGINT": "CAST({c} AS BIGINT)", "INTEGER": "CAST({c} AS BIGINT)",
    "HUGEINT": "TRY_CAST({c} AS BIGINT)", "UBIGINT": "TRY_CAST({c} AS BIGINT)",
    "DOUBLE": "TRY_CAST({c} AS BIGINT)", "DATE": "epoch_ms(CAST({c} AS TIMESTAMP))",
    "TIMESTAMP": "epoch_ms({c})", "TIMESTAMP_MS": "epoch_ms({c})",
    "TIMESTAMP_NS": "epoch_ms(CAST({c} AS TIMESTAMP))", "TIMESTAMP_S": "epoch_ms({c})",
    "TIMESTAMP WITH TIME ZONE": "epoch_ms({c})",
    "VARCHAR": "COALESCE(TRY_CAST({c} AS BIGINT), epoch_ms(TRY_CAST({c} AS TIMESTAMP)))",
}
_READERS: dict[str, str] = {
    "csv": "read_csv($path, header = true)",
    "parquet": "read_parquet($path)",
}
# Rows before the first record: the CSV header line.
_FIRST_LINE: dict[str, int] = {"csv": 2, "parquet": 1}
_LOGIN_FLAG_COLUMNS = ("$is_login_id", "is_login_id")
_REQUIRED = ("event", "distinct_id", "time")
_TABULAR_BATCH = 250_000


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _property_name_rule(name: str) -> str | None:
    """The collector's rule a property name breaks, or None (validate._check_key)."""
    if not NAME_RE.match(name):
        return "property name must match [a-zA-Z_$][a-zA-Z0-9_$]{0,99}"
    lowered = name.lower()
    if lowered in STRICT_RULES.reserved or lowered.startswith(STRICT_RULES.reserved_prefixes):
        return "reserved property name"
    return None


def read_tabular(
    con: duckdb.DuckDBPyConnection,
    path: Any,
    fmt: str,
    *,
    project: str,
    now_ms: int,
    time_window: bool,
    extra_junk: frozenset[str] = frozenset(),
) -> Iterator[tuple[pa.Table, list[ImportIssue], int]]:
    """Read a CSV or Parquet file with DuckDB and check every row in SQL.

    Yields (good rows as BULK_SCHEMA, issues, rows read) per batch. Columns other
    than event, distinct_id, time (and an optional is_login_id flag) become
    properties; a column whose name breaks the property rules is reported once, on
    the header line, and left out.
    """
    where = str(path)
    reader = _READERS[fmt]
    first = _FIRST_LINE[fmt]
    try:
        described = con.sql(f"DESCRIBE SELECT * FROM {reader}", params={"path": where}).fetchall()
    except duckdb.Error as exc:
        yield BULK_SCHEMA.empty_table(), [ImportIssue(where, 0, "file", str(exc).splitlines()[0])], 0
        return
    types = {str(row[0]): str(row[1]) for row in described}
    missing = [c for c in _REQUIRED if c not in types]
    if missing:
        issue = ImportIssue(where, 1, missing[0], "missing column")
        yield BULK_SCHEMA.empty_table(), [issue], 0
        return
    header_issues: list[ImportIssue] = []
    props: list[str] = []
    login_col = next((c for c in _LOGIN_FLAG_COLUMNS if c in types), None)
    for name in types:
        if name in _REQUIRED or name == login_col:
            continue
        rule = _property_name_rule(name)
        if rule is None:
            props.append(name)
        else:
            header_issues.append(ImportIssue(where, 1, f"properties.{name}", rule))

    time_expr = _TIME_EXPR.get(types["time"], "TRY_CAST({c} AS BIGINT)").format(c='"time"')
    props_expr = ("json_object(" + ", ".join(f"{_lit(p)}, {_ident(p)}" for p in props) + ")"
                  if props else "'{}'::JSON")
    id_type = (f"CASE WHEN TRY_CAST({_ident(login_col)} AS BOOLEAN) THEN 'login_id'"
               " ELSE 'anonymous_id' END" if login_col else "'anonymous_id'")
    string_checks = "".join(
        f" WHEN length(CAST({_ident(p)} AS VARCHAR)) > {_MAX_STRING}"
        f" THEN {_lit(f'properties.{p}|string longer than {_MAX_STRING} characters')}"
        for p in props if types[p] == "VARCHAR"
    )
    name_rule = "must match [a-zA-Z_$][a-zA-Z0-9_$]{0,99}"
    sql = f"""
    WITH src AS (
        SELECT row_number() OVER () - 1 + {first} AS line, *, {time_expr} AS __time_ms,
               CAST(distinct_id AS VARCHAR) AS __did
        FROM {reader}
    ), checked AS (
        SELECT line, CAST(event AS VARCHAR) AS event, __did AS distinct_id,
               {id_type} AS id_type, __did AS id_value, __time_ms AS time,
               {props_expr} AS properties,
               CASE
                 WHEN event IS NULL THEN 'event|must be a string'
                 WHEN NOT regexp_full_match(CAST(event AS VARCHAR), $name)
                   THEN {_lit('event|' + name_rule)}
                 WHEN __did IS NULL OR __did = '' THEN 'distinct_id|must be a non-empty string'
                 WHEN length(__did) > {MAX_ID_LENGTH}
                   THEN 'distinct_id|longer than {MAX_ID_LENGTH} characters'
                 WHEN list_contains($junk, lower(trim(trim(trim(__did, $ws), '"'''), $ws)))
                   THEN 'distinct_id|junk id ' || chr(39) || __did || chr(39) || ' refused'
                 WHEN __time_ms IS NULL
                   THEN 'time|must be milliseconds since the epoch or an ISO 8601 time'
                 WHEN __time_ms < 0 OR __time_ms >= {_MAX_MS}
                   THEN 'time|milliseconds since the epoch out of range'
                 WHEN $window AND __time_ms > $now + {MAX_FUTURE_MS}
                   THEN 'time|more than 1 hour in the future (set time_free to keep it)'
                 WHEN $window AND __time_ms < $now - {MAX_PAST_MS}
                   THEN 'time|more than 2 years in the past (set time_free to keep it)'
                 {string_checks}
                 ELSE NULL END AS problem
        FROM src
    )
    SELECT line,
           md5(json_object('event', event, 'distinct_id', distinct_id, 'time', time,
                           'properties', properties)) AS event_id,
           event, distinct_id, id_type, id_value, time,
           CAST(properties AS VARCHAR) AS properties,
           problem
    FROM checked ORDER BY line
    """
    try:
        result = con.sql(sql, params={
            "path": where, "name": _NAME_PATTERN, "junk": sorted(JUNK_IDS | extra_junk),
            "now": int(now_ms), "window": bool(time_window), "ws": _STRIPPED,
        }).to_arrow_reader(_TABULAR_BATCH)
        batches = iter(result)
        first_batch = True
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            table = pa.Table.from_batches([batch])
            problem = table.column("problem")
            bad = table.filter(pc.is_valid(problem))
            issues = list(header_issues) if first_batch else []
            first_batch = False
            for line, text in zip(bad.column("line").to_pylist(),
                                  bad.column("problem").to_pylist(), strict=True):
                field_name, _, rule = text.partition("|")
                issues.append(ImportIssue(where, int(line), field_name, rule))
            good = table.filter(pc.is_null(problem)).select(BULK_SCHEMA.names).cast(BULK_SCHEMA)
            yield good, issues, table.num_rows
        if first_batch and header_issues:
            yield BULK_SCHEMA.empty_table(), header_issues, 0
    except duckdb.Error as exc:
        yield BULK_SCHEMA.empty_table(), [ImportIssue(where, 0, "file", str(exc).splitlines()[0])], 0
