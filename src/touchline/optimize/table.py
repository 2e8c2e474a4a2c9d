"""The report as a readable table: one block per experiment, one line per arm."""

from __future__ import annotations

from typing import Any

__all__ = ["report_table"]

_HEAD = ("arm", "users", "conv", "rate", "GMV", "ARPU", "msgs", "cost", "ROI",
         "conv uplift [95% CI]", "p", "ARPU uplift [95% CI]", "p", "verdict")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:+.2%}" if v != 0 else "0.00%"


def _num(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def _ci(u: dict[str, Any], pct: bool) -> str:
    fmt = _pct if pct else _num
    ci = u.get("absolute_ci")
    inner = "" if ci is None else f" [{fmt(ci[0])}, {fmt(ci[1])}]"
    return f"{fmt(u.get('absolute'))}{inner}"


def _p(v: float | None) -> str:
    return "-" if v is None else "<0.001" if v < 0.001 else f"{v:.3f}"


def _line(row: dict[str, Any], goal: str) -> tuple[str, ...]:
    up = row.get("uplift")
    conv = up["conversion"] if up else None
    arpu = up["arpu"] if up else None
    rate = row["conversion_rate"]
    name = row["arm"] + (" (control)" if row.get("control") else "")
    return (name, str(row["users"]), str(row["converted"].get(goal, 0)),
            "-" if rate is None else f"{rate:.2%}", _num(row["gmv"]), _num(row["arpu"]),
            str(row["messages"]), _num(row["cost"]), _pct(row.get("roi")),
            _ci(conv, True) if conv else "baseline", _p(conv["p_value"]) if conv else "",
            _ci(arpu, False) if arpu else "baseline", _p(arpu["p_value"]) if arpu else "",
            row.get("verdict", ""))


def _grid(lines: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in lines) for i in range(len(lines[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in lines]


def report_table(report: dict[str, Any]) -> str:
    goal = report["goal"]
    j = report["journey"]
    t = report["totals"]
    out = [f"journey {j['id']} (version {j['version']}, {j['status']}): goal {goal!r}, "
           f"money from {report['value_property']!r}",
           f"all entries: {t['users']} users, {t['converted'].get(goal, 0)} converted "
           f"({_num((t['conversion_rate'] or 0) * 100)}%), GMV {_num(t['gmv'])}, "
           f"ARPU {_num(t['arpu'])}, {t['messages']} messages, cost {_num(t['cost'])}"]
    if not report["experiments"]:
        out.append("no experiment split or content variants in this journey: "
                   "nothing to compare")
    for s in report["experiments"]:
        label = ("split" if s["kind"] == "split"
                 else f"content {s['strategy']}") + f" {s['experiment']!r}"
        out += ["", f"node {s['node']}: {label}, compared with {s['baseline']!r}"]
        if s.get("note"):
            out.append(f"  note: {s['note']}")
        rows = [*s["arms"], *([s["pooled"]] if "pooled" in s else [])]
        out += ["  " + line for line in _grid([_HEAD, *(_line(r, goal) for r in rows)])]
        out += [f"  {r['arm']}: {r['note']}" for r in rows if r.get("note")]
    return "\n".join(out)
