"""Read the Grafana dashboard's PromQL: for the tests that check it against a live server and run it
through a real Prometheus (tests/integration/test_dashboard.py, tests/e2e/test_prometheus.py)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

# PromQL words that look like metric names but are not.
_KEYWORDS = frozenset(
    {
        *("sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile"),
        *("group", "count_values", "by", "without", "on", "ignoring", "group_left", "group_right"),
        *("and", "or", "unless", "offset", "bool", "inf", "nan", "atan2"),
    }
)


@dataclass(frozen=True)
class Query:
    panel: str  # panel title, or "$name" for a template variable's query
    expr: str  # as Grafana stores it, variables included
    instant: bool  # a table/stat of current values rather than a time series


def dashboard_queries(path: Path) -> list[Query]:
    """Every query of the dashboard at ``path``: panel targets and template-variable queries."""
    dashboard = json.loads(path.read_text())
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append(Query(panel["title"], target["expr"], bool(target.get("instant"))))
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            inner = re.fullmatch(r"label_values\((\w+),\s*\w+\)", var["definition"])
            if inner is None:
                raise ValueError(f"unsupported variable query {var['definition']!r}")
            out.append(Query(f"${var['name']}", inner.group(1), True))
    return out


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads. Enough for dashboards: names given as
    ``{__name__=...}`` matchers and ``@`` modifiers are not handled."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals (label values, regexes)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)  # Grafana variables
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word = match.group(0)
        if expr[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if word.lower() in _KEYWORDS:
            continue
        before = expr[match.start() - 1] if match.start() else " "
        if before.isdigit() or before == ".":
            continue  # the exponent of a number such as 1e3
        names.add(word)
    return names


def to_promql(expr: str, *, rate_interval: str, variables: dict[str, str]) -> str:
    """``expr`` with Grafana's variables replaced, ready for Prometheus' HTTP API."""
    expr = expr.replace("$__rate_interval", rate_interval)
    for name, value in variables.items():
        expr = expr.replace(f"${{{name}}}", value).replace(f"${name}", value)
    if "$" in expr:
        raise ValueError(f"unreplaced Grafana variable in {expr!r}")
    return expr
