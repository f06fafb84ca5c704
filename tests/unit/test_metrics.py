"""Metrics: what the typed methods record, as a Prometheus scraper reads it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from sync_service.metrics import Metrics

T0 = 1_750_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the text exposition, keyed by (sample name, labels)."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, frozenset(labels.items())))


def test_run_finished_counts_outcome_duration_and_contact_results() -> None:
    """A finished run counts its outcome, observes its duration and adds its contact results."""
    m = Metrics()
    m.run_finished("crm", "succeeded", 12.5, {"sent": 40, "unchanged": 7, "duplicate": 2})
    m.run_finished("crm", "failed", 3.0, {"sent": 1, "invalid": 5, "rejected": 4})

    assert value(m, "mailtrap_sync_runs_total", pipeline="crm", outcome="succeeded") == 1
    assert value(m, "mailtrap_sync_runs_total", pipeline="crm", outcome="failed") == 1
    assert value(m, "mailtrap_sync_run_duration_seconds_count", pipeline="crm") == 2
    assert value(m, "mailtrap_sync_run_duration_seconds_sum", pipeline="crm") == 15.5
    for result, n in {"sent": 41, "unchanged": 7, "duplicate": 2, "invalid": 5,
                      "rejected": 4}.items():
        assert value(m, "mailtrap_sync_contact_results_total", pipeline="crm", result=result) == n


def test_counts_outside_the_contact_results_are_not_exported() -> None:
    """Extra keys in a run's counts (the job's own tallies) never become label values."""
    m = Metrics()
    m.run_finished("crm", "succeeded", 1.0, {"sent": 1, "rows_read": 99})
    results = {dict(labels)["result"] for name, labels in samples(m)
               if name == "mailtrap_sync_contact_results_total"}
    assert results == {"sent"}


def test_last_success_is_set_only_by_a_succeeded_run() -> None:
    """The last-success gauge takes the clock's time on success and ignores failed runs."""
    clock = Clock()
    m = Metrics(clock=clock)
    m.run_finished("crm", "succeeded", 1.0, {})
    clock.now = T0 + 600
    m.run_finished("crm", "failed", 1.0, {})
    assert value(m, "mailtrap_sync_last_success_timestamp_seconds", pipeline="crm") == T0


def test_busy_run_counts_the_outcome_but_no_duration() -> None:
    """A run that found its pipeline busy is counted, but observes no duration and no contacts."""
    m = Metrics()
    m.run_finished("crm", "busy", 0.0, {"sent": 3})
    assert value(m, "mailtrap_sync_runs_total", pipeline="crm", outcome="busy") == 1
    assert value(m, "mailtrap_sync_run_duration_seconds_count", pipeline="crm") is None
    assert value(m, "mailtrap_sync_contact_results_total", pipeline="crm", result="sent") is None


@pytest.mark.parametrize("call", [
    lambda m: m.run_finished("crm", "exploded", 1.0, {}),
    lambda m: m.import_finished("crm", "started"),
])
def test_unknown_label_values_are_refused(call: Callable[[Metrics], None]) -> None:
    """An outcome or import status outside the fixed set raises instead of adding a series."""
    with pytest.raises(ValueError, match="expected one of"):
        call(Metrics())


def test_import_finished_counts_status_and_over_limit_contacts() -> None:
    """Imports are counted by final status; over-limit contacts add to their own counter."""
    m = Metrics()
    m.import_finished("crm", "finished", over_limit=3)
    m.import_finished("crm", "finished")
    m.import_finished("crm", "rejected")
    assert value(m, "mailtrap_sync_imports_total", pipeline="crm", status="finished") == 2
    assert value(m, "mailtrap_sync_imports_total", pipeline="crm", status="rejected") == 1
    assert value(m, "mailtrap_sync_contacts_over_limit_total", pipeline="crm") == 3


def test_request_done_counts_by_endpoint_and_status_and_tallies_429s() -> None:
    """Requests count per endpoint group and status ("error": no response); 429s also as limited."""
    m = Metrics()
    m.request_done("imports", 201)
    m.request_done("imports", 429)
    m.request_done("contacts", 429)
    m.request_done("lists", None)
    m.request_done("lists", 0)
    assert value(m, "mailtrap_sync_api_requests_total", endpoint="imports", status="201") == 1
    assert value(m, "mailtrap_sync_api_requests_total", endpoint="imports", status="429") == 1
    assert value(m, "mailtrap_sync_api_requests_total", endpoint="lists", status="error") == 2
    assert value(m, "mailtrap_sync_api_rate_limited_total", endpoint="imports") == 1
    assert value(m, "mailtrap_sync_api_rate_limited_total", endpoint="contacts") == 1


def test_watermark_lag_grows_between_scrapes() -> None:
    """The lag is computed at scrape time, so it keeps growing while the watermark stands still."""
    clock = Clock()
    m = Metrics(clock=clock)
    m.set_watermark("crm", datetime.fromtimestamp(T0 - 30, tz=UTC))
    assert value(m, "mailtrap_sync_watermark_lag_seconds", pipeline="crm") == 30
    clock.now += 100
    assert value(m, "mailtrap_sync_watermark_lag_seconds", pipeline="crm") == 130


@pytest.mark.parametrize(("cursor", "lag"), [
    (datetime.fromtimestamp(T0 - 60, tz=UTC).replace(tzinfo=None), 60.0),
    (datetime.fromtimestamp(T0 - 60, tz=UTC).astimezone(timezone(timedelta(hours=5))), 60.0),
    (datetime.fromtimestamp(T0, tz=UTC).date(), T0 % 86400),
])
def test_temporal_cursors_give_a_lag(cursor: object, lag: float) -> None:
    """Naive datetimes count as UTC, aware ones keep their zone, dates start at midnight UTC."""
    m = Metrics(clock=Clock())
    m.set_watermark("crm", cursor)
    assert value(m, "mailtrap_sync_watermark_lag_seconds", pipeline="crm") == pytest.approx(lag)


def test_non_temporal_cursor_clears_the_lag() -> None:
    """An integer or string cursor has no lag: the pipeline's series disappears."""
    m = Metrics(clock=Clock())
    m.set_watermark("crm", datetime.fromtimestamp(T0, tz=UTC))
    m.set_watermark("crm", 123456)
    m.set_watermark("ids", "00042")
    assert not [k for k in samples(m) if k[0] == "mailtrap_sync_watermark_lag_seconds"]


def test_tracked_and_rejected_gauges_hold_the_last_value() -> None:
    """Tracked and rejected counts are gauges: each set replaces the previous value."""
    m = Metrics()
    m.set_tracked("crm", 1000)
    m.set_tracked("crm", 990)
    m.set_rejected("crm", 4)
    assert value(m, "mailtrap_sync_contacts_tracked", pipeline="crm") == 990
    assert value(m, "mailtrap_sync_rejected_contacts", pipeline="crm") == 4


def test_instances_do_not_share_a_registry() -> None:
    """Two Metrics instances count independently (no global registry)."""
    a, b = Metrics(), Metrics()
    a.request_done("imports", 200)
    assert value(a, "mailtrap_sync_api_requests_total", endpoint="imports", status="200") == 1
    assert value(b, "mailtrap_sync_api_requests_total", endpoint="imports", status="200") is None


def test_exposition_negotiates_openmetrics() -> None:
    """A scraper asking for OpenMetrics gets it; anyone else gets text format 0.0.4."""
    m = Metrics()
    body, content_type = m.exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
    _, plain = m.exposition("")
    assert plain == "text/plain; version=0.0.4; charset=utf-8"


def test_a_422_to_an_import_counts_a_rejected_import_for_the_bound_pipeline() -> None:
    """imports_total{status="rejected"} counts 422 answers to imports, per the run's pipeline."""
    metrics = Metrics()
    with structlog.contextvars.bound_contextvars(pipeline="customers"):
        metrics.request_done("imports", 422)
        metrics.request_done("imports", 201)
        metrics.request_done("lists", 422)
    metrics.request_done("imports", 422)  # no pipeline bound: nothing to label it with
    text = metrics.render().decode()
    assert 'mailtrap_sync_imports_total{pipeline="customers",status="rejected"} 1.0' in text
    seen = metrics.last_api_answer()
    assert seen is not None
    assert seen[1] == 422
