"""Helpers for the observability tests: the PromQL expressions the deployment ships (dashboards
and alert rules), the metric names they use, and the names a scrape really exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.conftest import ROOT, load_yaml_documents

DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
RULES = ROOT / "deploy" / "prometheus" / "rules"

#: PromQL words that take a parenthesised list of label names, not an expression.
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
#: Aggregations, which may be followed by ``by (...)`` rather than by their parenthesis.
_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count"}
_AGGREGATIONS |= {"count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio"}
#: PromQL words that are neither functions nor metric names.
_KEYWORDS = _LABEL_LISTS | _AGGREGATIONS | {"bool", "and", "or", "unless", "offset", "inf", "nan"}
_KEYWORDS |= {"atan2", "start", "end"}
_TOKEN = re.compile(
    r"""
      "(?:[^"\\]|\\.)*" | '(?:[^'\\]|\\.)*' | `[^`]*`   # strings
    | \{[^}]*\}                                       # label matchers
    | \[[^\]]*\]                                      # ranges and subqueries
    | \d[\w.]*                                        # numbers and durations
    | [A-Za-z_:][\w:]*                                # identifiers
    | \S                                              # anything else, one character
    """,
    re.VERBOSE,
)
#: Grafana's variables ($__rate_interval, ${route}, $currency) are never metric names.
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions,
    aggregations, keywords or the label names of a by/without/on/ignoring/group_* list."""
    tokens = _TOKEN.findall(_GRAFANA_VARIABLE.sub("", expr))
    names: set[str] = set()
    i = 0
    while i < len(tokens):
        token = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else ""
        if re.fullmatch(r"[A-Za-z_:][\w:]*", token):
            if token in _LABEL_LISTS and following == "(":
                i = tokens.index(")", i)  # skip the label names
            elif following != "(" and token.lower() not in _KEYWORDS:
                names.add(token)
        i += 1
    return names


def dashboards() -> dict[str, dict[str, Any]]:
    files = sorted(DASHBOARDS.glob("*.json"))
    return {path.name: json.loads(path.read_text(encoding="utf-8")) for path in files}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows and the panels of collapsed rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, expr) for every query of every dashboard panel and variable."""
    found = []
    for name, dashboard in dashboards().items():
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                found.append((f"{name}: {panel['title']} [{target.get('refId')}]", target["expr"]))
        for variable in dashboard.get("templating", {}).get("list", []):
            query = variable.get("query")
            if variable.get("type") == "query" and query:
                text = query["query"] if isinstance(query, dict) else query
                match = re.fullmatch(r"label_values\((.*),\s*\w+\)", text.strip())
                found.append((f"{name}: variable {variable['name']}", match[1] if match else text))
    return found


def rule_exprs() -> list[tuple[str, str]]:
    """(where, expr) for every alerting and recording rule."""
    return [
        (f"{path.name}: {rule.get('alert') or rule.get('record')}", rule["expr"])
        for path in sorted(RULES.glob("*.yml"))
        for document in load_yaml_documents(path)
        for group in document["groups"]
        for rule in group["rules"]
    ]


def recorded_names() -> set[str]:
    return {
        rule["record"]
        for path in sorted(RULES.glob("*.yml"))
        for document in load_yaml_documents(path)
        for group in document["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


_SERIES_OF = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "info": ("_info",),
}


def exported_names(exposition: str) -> set[str]:
    """Every series name a text exposition exports: its samples' names, and for each family
    (even one without samples yet) the names its type implies (a counter ``x`` is exported as
    ``x_total`` and ``x_created``, a histogram as ``x_bucket``, ``x_count``, ``x_sum``...)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in _SERIES_OF.get(family.type, ("",)))
    return names


def sample_names(exposition: str) -> set[str]:
    """The names of the samples really present (a labelled metric shows none until used)."""
    return {
        sample.name
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT))
