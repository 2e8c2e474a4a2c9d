"""Message templates in Liquid (python-liquid), checked at apply time, strict at send time.

Templates see three roots: ``profile`` (the user's traits), ``event`` (the event that
triggered the step) and ``journey`` (journey data: entry properties, coupon codes...).

- :func:`check_template` runs when a journey is applied: syntax errors, unknown filters
  and variables outside the three roots come back as :class:`TemplateProblem` with a
  line and column, so nothing broken is ever applied.
- :func:`render_message` runs at send time in strict mode: a variable that is missing
  (or null) uses its ``| default:`` fallback, or the whole send is skipped with
  :class:`SkipSend`. A half-rendered message is never produced. Missing variables in
  ``{% if %}`` conditions are simply false.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from liquid import BoundTemplate, Environment, Expression, FalsyStrictUndefined, Node
from liquid.builtin.expressions import FilteredExpression, Path
from liquid.exceptions import LiquidError, LiquidSyntaxError, UndefinedError

from ..errors import InvalidInput, TouchlineError

__all__ = [
    "ROOTS",
    "SkipSend",
    "TemplateProblem",
    "check_template",
    "render_message",
    "render_template",
    "template_variables",
]

ROOTS: tuple[str, ...] = ("profile", "event", "journey")


class SkipSend(TouchlineError):
    """The message cannot be rendered completely, so it is not sent."""

    def __init__(self, reason: str, *, part: str = "", variable: str = "") -> None:
        self.reason = reason
        self.part = part
        self.variable = variable
        super().__init__(f"{part}: {reason}" if part else reason)


@dataclass(frozen=True)
class TemplateProblem:
    """One thing wrong with a template. ``field`` is where the caller keeps it
    (e.g. ``nodes.coupon.message.body``); ``rule`` is the kind of problem."""

    field: str
    rule: str
    detail: str
    line: int | None = None
    column: int | None = None
    severity: Literal["error", "warning"] = "error"

    def as_error(self) -> InvalidInput:
        where = f" at {self.line}:{self.column}" if self.line is not None else ""
        return InvalidInput(self.field, f"{self.rule}{where}: {self.detail}")


class _SendUndefined(FalsyStrictUndefined):
    """Strict when output or filtered, false in conditions, and ``default`` applies."""

    force_liquid_default = True


class _Env(Environment):
    # Limits: a template is operator input, so loops and output are bounded.
    loop_iteration_limit = 10_000
    output_stream_limit = 1_000_000
    context_depth_limit = 30
    local_namespace_limit = 100_000


_ENV = _Env(undefined=_SendUndefined)


def _position(source: str, index: int) -> tuple[int | None, int | None]:
    if index < 0:
        return None, None
    before = source[:index]
    return before.count("\n") + 1, index - (before.rfind("\n") + 1) + 1


@lru_cache(maxsize=1024)
def _compile(source: str) -> BoundTemplate:
    return _ENV.from_string(source)


def check_template(
    source: str,
    *,
    field: str = "template",
    roots: Collection[str] = ROOTS,
    warnings: bool = False,
) -> list[TemplateProblem]:
    """Every problem in ``source``; an empty list means it may be applied.

    With ``warnings``, also what is legal but probably not meant (severity
    "warning"): a ``default`` placed after another filter, which a missing value
    never reaches.
    """
    try:
        template = _ENV.from_string(source)
    except LiquidSyntaxError as exc:
        token = exc.token
        index = token.start_index if token is not None else -1
        line, col = _position(source, index)
        return [TemplateProblem(field, "syntax", str(exc.message), line, col)]
    except LiquidError as exc:
        return [TemplateProblem(field, "syntax", str(exc))]
    analysis = template.analyze()
    problems: list[TemplateProblem] = []
    for name, spans in analysis.filters.items():
        if name not in _ENV.filters:
            for span in spans:
                line, col = _position(source, span.index)
                problems.append(
                    TemplateProblem(field, "unknown filter", f"{name!r}", line, col))
    for name, variables in analysis.globals.items():
        if name not in roots:
            for var in variables:
                line, col = _position(source, var.span.index)
                problems.append(TemplateProblem(
                    field, "unknown variable",
                    f"{name!r} (templates see {', '.join(sorted(roots))})", line, col))
    if warnings:
        problems += _late_defaults(template, source, field)
    return sorted(problems, key=lambda p: (p.line or 0, p.column or 0, p.rule))


def _expressions(nodes: Iterable[Node]) -> Iterator[Expression]:
    for node in nodes:
        stack = list(node.expressions())
        while stack:
            expr = stack.pop()
            yield expr
            stack.extend(expr.children())
        # Block tags (if, for, case...) hold their bodies as child nodes; no partials
        # are loaded, so no render context is needed to list them.
        yield from _expressions(node.children(None, include_partials=False))  # type: ignore[arg-type]


def _late_defaults(template: BoundTemplate, source: str, field: str) -> list[TemplateProblem]:
    """``{{ profile.city | upcase | default: 'x' }}`` never reaches its default: the
    first filter already fails on the missing value, so the send is skipped. Say so at
    apply time instead of surprising the operator at send time."""
    problems: list[TemplateProblem] = []
    try:
        expressions = list(_expressions(template.nodes))
    except Exception:  # the lint is a courtesy; an unusual node must not break checks
        return problems
    for expr in expressions:
        if not isinstance(expr, FilteredExpression):
            continue
        filters = expr.filters or []
        names = [f.name for f in filters]
        if "default" in names[1:] and isinstance(expr.left, Path):
            first = filters[0]
            line, col = _position(source, expr.token.start_index)
            problems.append(TemplateProblem(
                field, "default not first",
                f"'default' comes after {first.name!r}, so a missing {expr.left} skips "
                "the send; put default first", line, col, "warning"))
    return problems


def template_variables(source: str) -> list[str]:
    """The dotted paths of the root variables ``source`` reads, sorted and unique."""
    analysis = _compile(source).analyze()
    paths = {
        ".".join(str(s) for s in var.segments)
        for variables in analysis.globals.values() for var in variables
    }
    return sorted(paths)


def _without_nulls(value: Any) -> Any:
    """Nulls become missing keys, so ``default`` (or a skip) applies to them too."""
    if isinstance(value, Mapping):
        return {str(k): _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_without_nulls(v) for v in value]
    return value


def render_template(source: str, context: Mapping[str, Any], *, part: str = "") -> str:
    """``source`` rendered over ``context``; :class:`SkipSend` if that cannot be done fully."""
    try:
        template = _compile(source)
    except LiquidError as exc:
        raise SkipSend(f"template does not parse: {exc}", part=part) from None
    data = _without_nulls(context)
    try:
        return template.render(**data)
    except UndefinedError as exc:
        raise SkipSend(f"missing {exc.message} and no default", part=part,
                       variable=_undefined_name(exc)) from None
    except LiquidError as exc:
        raise SkipSend(f"render failed: {getattr(exc, 'message', exc)}", part=part) from None


def _undefined_name(exc: UndefinedError) -> str:
    message = str(exc.message)
    return message.removesuffix(" is undefined").strip("'")


def render_message(
    parts: Mapping[str, str], context: Mapping[str, Any]
) -> dict[str, str]:
    """Render every part (subject, body, each data value...) or none: the first part
    that cannot be rendered raises :class:`SkipSend` naming it."""
    return {name: render_template(source, context, part=name) for name, source in parts.items()}
