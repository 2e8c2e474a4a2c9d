"""Read-only query checking: what user SQL may touch, decided on the parsed tree.

A user query is parsed with sqlglot in the event store's dialect and walked node by
node. It must be exactly one query (SELECT, set operation, or a parenthesized one);
its tables must be the project views (``events``, ``profiles``, ``identities``,
``items``) or the query's own CTEs; its functions must be on an allow-list. Nothing
is matched with regular expressions: a rule either holds for the tree or the query
is refused with a :class:`~touchline.errors.QueryError` naming the rule.

Scoping trick: every CTE the user defines is renamed to a reserved name
(``__tl_cte_N``) everywhere the name appears, and every view reference becomes a
reference to a reserved CTE (``__tl_v_<view>``) that the event store prepends,
filtered to one project. A CTE reference that escapes its scope therefore names a
table that does not exist, instead of silently reaching a real table.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from .errors import QueryError

__all__ = [
    "DENIED_FUNCTION_TYPES",
    "MAX_QUERY_CHARS",
    "RESERVED_PREFIX",
    "VIEW_NAMES",
    "CheckedQuery",
    "FunctionPolicy",
    "check_query",
    "refuse",
    "view_cte_name",
]

# sqlglot logs a warning each time it falls back to parsing a statement as a bare
# Command; such statements are refused anyway, the warning is noise.
logging.getLogger("sqlglot").setLevel(logging.ERROR)

VIEW_NAMES: tuple[str, ...] = ("events", "profiles", "identities", "items")
RESERVED_PREFIX = "__tl_"
MAX_QUERY_CHARS = 100_000

# Statement nodes that may never appear anywhere in a read-only query.
_STATEMENT_TYPES: tuple[type[exp.Expression], ...] = (
    exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Create, exp.Drop, exp.Alter,
    exp.Command, exp.Copy, exp.Pragma, exp.Set, exp.Attach, exp.Detach, exp.Install,
    exp.Use, exp.Transaction, exp.Commit, exp.Rollback, exp.Describe, exp.Into,
    exp.Export, exp.Kill, exp.Cache, exp.Uncache, exp.LoadData, exp.Refresh,
    exp.Analyze, exp.Grant, exp.Revoke, exp.Summarize, exp.Show, exp.Lock,
)

# Functions sqlglot knows by type are ordinary SQL functions, except these, which
# read files or reveal the server's identity and settings.
DENIED_FUNCTION_TYPES: frozenset[type[exp.Func]] = frozenset({
    exp.ReadCSV, exp.ReadParquet, exp.ToFile,
    exp.CurrentAccount, exp.CurrentAccountName, exp.CurrentAvailableRoles,
    exp.CurrentCatalog, exp.CurrentClient, exp.CurrentDatabase, exp.CurrentIpAddress,
    exp.CurrentOrganizationName, exp.CurrentOrganizationUser, exp.CurrentRegion,
    exp.CurrentRole, exp.CurrentRoleType, exp.CurrentSchema, exp.CurrentSchemas,
    exp.CurrentSecondaryRoles, exp.CurrentSession, exp.CurrentStatement,
    exp.CurrentTransaction, exp.CurrentUser, exp.CurrentUserId, exp.CurrentVersion,
    exp.CurrentWarehouse, exp.SessionUser,
})


@dataclass(frozen=True)
class FunctionPolicy:
    """Which functions a dialect allows beyond the ones sqlglot parses into types.

    ``untyped``: lower-case names of functions sqlglot leaves as ``Anonymous`` that
    are pure (no file, network, catalog or setting access). ``table_functions``:
    names allowed in FROM position (row generators only).
    """

    untyped: frozenset[str]
    table_functions: frozenset[str] = field(default_factory=frozenset)
    # Trusted SQL written by Touchline itself (analysis code): no function checks.
    any_function: bool = False


def refuse(rule: str, detail: str) -> QueryError:
    """A QueryError whose message starts with the rule's name."""
    return QueryError(f"{rule}: {detail}")


def view_cte_name(view: str) -> str:
    return f"{RESERVED_PREFIX}v_{view}"


@dataclass(frozen=True)
class CheckedQuery:
    """A query that passed every rule, rewritten to reference reserved CTE names."""

    tree: exp.Query
    dialect: str
    views: frozenset[str]  # the views it references

    def bind(
        self, views: Mapping[str, exp.Query], *, not_materialized: bool, write: str | None = None
    ) -> str:
        """The final SQL: the referenced views prepended as CTEs, then the query.

        ``write`` is the dialect to generate (default: the one the query was read in).
        """
        tree = self.tree.copy()
        ctes = [
            exp.CTE(
                this=views[name].copy(),
                alias=exp.TableAlias(this=exp.to_identifier(view_cte_name(name))),
                # DuckDB may materialize a CTE used twice: a copy of every event.
                materialized=False if not_materialized else None,
            )
            for name in VIEW_NAMES if name in self.views
        ]
        if ctes:
            existing = tree.args.get("with_")
            if isinstance(existing, exp.With):
                existing.set("expressions", [*ctes, *existing.expressions])
            else:
                tree.set("with_", exp.With(expressions=ctes))
        return tree.sql(dialect=write or self.dialect)


def check_query(
    sql: str,
    *,
    dialect: str,
    functions: FunctionPolicy,
    views: Collection[str] = VIEW_NAMES,
) -> CheckedQuery:
    """Parse ``sql`` and apply every rule; raise QueryError naming the broken one."""
    if not isinstance(sql, str) or not sql.strip():
        raise refuse("empty", "the query is empty")
    if len(sql) > MAX_QUERY_CHARS:
        raise refuse("too_long", f"the query is longer than {MAX_QUERY_CHARS} characters")
    try:
        statements = [s for s in sqlglot.parse(sql, read=dialect) if s is not None]
    except (SqlglotError, RecursionError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise refuse("syntax", _first_line(str(exc)) or type(exc).__name__) from None
    if len(statements) != 1:
        raise refuse("single_statement", f"expected one statement, got {len(statements)}")
    tree = statements[0]
    if not isinstance(tree, exp.Query):
        raise refuse("select_only", f"only SELECT queries are allowed, not {tree.key.upper()}")

    view_set = {v.lower() for v in views}
    try:
        nodes: list[exp.Expression] = [n for n in tree.walk() if isinstance(n, exp.Expression)]
    except RecursionError:
        raise refuse("too_deep", "the query nests too deeply") from None
    for node in nodes:
        _check_node(node, functions)

    # Rename the user's CTEs first (definitions), so view detection below sees them.
    cte_names: dict[str, str] = {}
    for node in nodes:
        if isinstance(node, exp.CTE):
            name = node.alias_or_name.lower()
            new = cte_names.setdefault(name, f"{RESERVED_PREFIX}cte_{len(cte_names)}")
            alias = node.args.get("alias")
            if isinstance(alias, exp.TableAlias):
                alias.set("this", exp.to_identifier(new))

    used: set[str] = set()
    for node in nodes:
        if not isinstance(node, exp.Table):
            continue
        target = node.this
        if not isinstance(target, exp.Identifier):
            fname = _function_name(target) if isinstance(target, exp.Func) else None
            allowed = functions.any_function or fname in functions.table_functions
            if fname is None or not allowed or node.args.get("db"):
                raise refuse("table_function", f"{node.sql(dialect=dialect)[:80]} is not allowed")
            continue
        if node.args.get("db") or node.args.get("catalog"):
            raise refuse("qualified_name", f"{node.sql(dialect=dialect)[:80]}: only bare view names")
        name = target.name.lower()
        if name in cte_names:
            new = cte_names[name]
        elif name in view_set:
            new = view_cte_name(name)
            used.add(name)
        else:
            raise refuse(
                "unknown_table",
                f"{target.name!r}: only {', '.join(sorted(view_set))} and the query's own CTEs",
            )
        if not node.alias:
            node.set("alias", exp.TableAlias(this=exp.to_identifier(target.name)))
        node.set("this", exp.to_identifier(new))
    return CheckedQuery(tree=tree, dialect=dialect, views=frozenset(used))


def _check_node(node: exp.Expression, functions: FunctionPolicy) -> None:
    if isinstance(node, _STATEMENT_TYPES):
        raise refuse("select_only", f"{node.key.upper()} is not allowed inside a query")
    if isinstance(node, exp.Select):
        for arg in ("into", "settings", "format", "locks"):
            if node.args.get(arg):
                raise refuse("select_only", f"{arg.upper()} clauses are not allowed")
    if isinstance(node, exp.Identifier) and node.name.lower().startswith(RESERVED_PREFIX):
        raise refuse("reserved_name", f"names starting with {RESERVED_PREFIX} are reserved")
    if isinstance(node, exp.In) and node.args.get("field") is not None:
        # ClickHouse reads `x IN some_table` as membership in a table.
        if not isinstance(node.args["field"], exp.Unnest):
            raise refuse("unknown_table", "IN needs a list or a subquery")
    if isinstance(node, exp.Dot) and isinstance(node.expression, exp.Func):
        raise refuse("function_allow_list", "qualified or method-style calls are not allowed")
    if functions.any_function:
        return
    if isinstance(node, exp.Func) and not isinstance(node.parent, exp.Table):
        if isinstance(node, exp.Anonymous):
            name = node.name.lower()
            if name not in functions.untyped:
                raise refuse("function_allow_list", f"function {node.name}() is not allowed")
        elif type(node) in DENIED_FUNCTION_TYPES:
            raise refuse("function_allow_list", f"function {node.key}() is not allowed")


def _function_name(func: exp.Func) -> str:
    if isinstance(func, exp.Anonymous):
        return func.name.lower()
    return func.sql_name().lower()


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:200] if text.strip() else ""
