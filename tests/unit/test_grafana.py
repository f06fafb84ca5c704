"""The Grafana dashboard asks only for series the product exports, with labels they carry."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sync_service.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "mailtrap-sync.json"
_SERIES = re.compile(r"\b(mailtrap_sync_[a-z_]+)\b(\{[^}]*\})?")
_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


def _exported() -> dict[str, set[str]]:
    """Every series name the product exports → its label names (each family given a value)."""
    metrics = Metrics()
    metrics.run_finished("p", "succeeded", 1.0, {"sent": 1, "unchanged": 1, "invalid": 1,
                                                  "duplicate": 1, "rejected": 1})
    metrics.import_finished("p", "finished", over_limit=1)
    metrics.request_done("imports", 429)
    metrics.set_watermark("p", datetime.now(UTC))
    metrics.set_tracked("p", 1)
    metrics.set_rejected("p", 1)
    series: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


def _queries(node: Any) -> Iterator[str]:
    """Every PromQL text in the dashboard: panel targets and templating queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            # A datasource variable's "query" is a plugin name, not PromQL.
            promql = key in ("expr", "definition") or (key == "query" and node.get("type")
                                                       != "datasource")
            if promql and isinstance(value, str):
                yield value
            else:
                yield from _queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from _queries(item)


def test_every_dashboard_query_names_exported_series_and_labels() -> None:
    """Each query names at least one exported metric; every label it filters on exists there."""
    dashboard = json.loads(DASHBOARD.read_text())
    exported = _exported()
    queries = list(_queries(dashboard))
    assert len(queries) >= 10
    for query in queries:
        found = _SERIES.findall(query)
        assert found, f"query names no mailtrap_sync metric: {query}"
        for name, selector in found:
            assert name in exported, f"{name} is not exported (query: {query})"
            for label in _LABEL.findall(selector):
                assert label in exported[name], f"{name} has no label {label!r}: {query}"


def test_dashboard_covers_the_operators_questions() -> None:
    """Runs by outcome, contacts sent, rejects, 429s, watermark lag and last success each have a
    panel built on the matching metric."""
    panels = {p["title"]: " ".join(t["expr"] for t in p["targets"])
              for p in json.loads(DASHBOARD.read_text())["panels"]}
    wanted = {
        "Runs by outcome": "mailtrap_sync_runs_total",
        "Contacts sent": 'result="sent"',
        "Rejects": "mailtrap_sync_contact_results_total",
        "Mailtrap 429 answers": "mailtrap_sync_api_rate_limited_total",
        "Watermark lag": "mailtrap_sync_watermark_lag_seconds",
        "Last successful run (age)": "mailtrap_sync_last_success_timestamp_seconds",
    }
    for title, needle in wanted.items():
        assert needle in panels[title], title
