"""Resilience end to end: faults and 429 bursts under pacing, failed imports, refused contacts,
the contact quota, slow and forgotten imports.

A real source table and state store, the real job, and the Mailtrap double behind spec
validation, as in ``test_sync_e2e``; the command line where the behaviour is a command's.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from click.testing import CliRunner

from sync_service.__main__ import cli
from sync_service.cli.state_view import status_rows
from sync_service.job import SyncJob
from sync_service.mailtrap.client import MailtrapClient
from sync_service.models import BatchStatus, RunKind, RunOutcome
from sync_service.pacing import Pacer
from sync_service.settings import AppSettings
from sync_service.testing.mailtrap.double import (
    DEFAULT_TOKEN,
    ImportPolicy,
    MailtrapDouble,
    RateLimits,
)
from tests.support.churn import (
    UNMANAGED,
    Churn,
    ChurnHarness,
    ChurnSource,
    assert_audience,
    churn,
)
from tests.support.harness import BASE_URL, FIELDS, T0, Harness, Source
from tests.support.openapi import ValidatingTransport

PIPELINE = "customers"
IMPORTS_PATH = "/contacts/imports"


@pytest.fixture
def h(sqlite_url: str, double: MailtrapDouble,
      mailtrap_transport: ValidatingTransport) -> Iterator[Harness]:
    """A pipeline over a SQLite source, state in SQLite, the double behind spec validation."""
    harness = Harness(double, mailtrap_transport, Source(sqlite_url),
                      sqlite_url.replace(".db", "-state.db"))
    yield harness
    harness.close()


def _settings(h: Harness, **mailtrap: Any) -> AppSettings:
    base = h.settings()
    return base.model_copy(update={"mailtrap": base.mailtrap.model_copy(update=mailtrap)})


def _job(h: Harness, client: MailtrapClient | None = None, **mailtrap: Any) -> SyncJob:
    settings = _settings(h, **mailtrap)
    return SyncJob(settings=settings, pipeline=settings.pipelines[0], store=h.store,
                   client=client or h.client())


def _posts(double: MailtrapDouble) -> list[Any]:
    return [r for r in double.requests() if r.method == "POST" and r.path.endswith(IMPORTS_PATH)]


class _Bursts(httpx.BaseTransport):
    """Before every ``every``-th request, tells the double to answer the next ``size`` with 429."""

    def __init__(self, inner: httpx.BaseTransport, double: MailtrapDouble, every: int,
                 size: int) -> None:
        self.inner, self.double, self.every, self.size, self.seen = inner, double, every, size, 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen += 1
        if self.seen % self.every == 0:
            self.double.force_429(self.size)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


class _FailPending(httpx.BaseTransport):
    """The first time an import is posted while ``running`` others still run, tells the double
    to fail all of those (a failure whatever the seeded draws, with other imports in flight)."""

    def __init__(self, inner: httpx.BaseTransport, double: MailtrapDouble, running: int) -> None:
        self.inner, self.double, self.running, self.done = inner, double, running, False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if (not self.done and request.method == "POST"
                and request.url.path.endswith(IMPORTS_PATH)):
            running = [i for i in self.double.imports() if i.status in ("created", "started")]
            if len(running) >= self.running:
                self.done = True
                self.double.finish_imports(failed=True)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


class _Unnamed422(httpx.BaseTransport):
    """Rewrites the emails a 422 names: blanks them, or respells them as Mailtrap might."""

    def __init__(self, inner: httpx.BaseTransport, respell: dict[str, str] | None = None) -> None:
        self.inner, self.respell = inner, respell

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if response.status_code != 422:
            return response
        body = json.loads(response.read())
        for item in body.get("errors", []):
            given = item.get("email", "")
            item["email"] = self.respell.get(given, given) if self.respell is not None else ""
        return httpx.Response(422, json=body, request=request)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def ch(sqlite_url: str, double: MailtrapDouble,
       mailtrap_transport: ValidatingTransport) -> Iterator[ChurnHarness]:
    """The same over a source with plans (lists by column) and soft deletes, scanning keys for
    hard deletes on every run."""
    harness = ChurnHarness(double, mailtrap_transport, ChurnSource(sqlite_url),
                           sqlite_url.replace(".db", "-state.db"))
    yield harness
    harness.close()


def _faults(double: MailtrapDouble, mailtrap_transport: ValidatingTransport) -> MailtrapClient:
    """5 % 500s, 2 % drops, 10 % failed imports (plus, once, every import running when another
    is posted failed: failures with others in flight), and a client paced under 40 requests /
    2 s that meets a burst of three 429s every ninth request."""
    double.rate_limits = RateLimits(account_requests=40, account_window=2.0,
                                    token_requests=150, token_window=10.0)
    double.import_policy = ImportPolicy(polls_to_finish=5)
    double.faults.error_rate, double.faults.drop_rate = 0.05, 0.02
    double.faults.import_failure_rate = 0.10
    double.force("drop_before", "500", "drop_after")  # each kind at least once, whatever the RNG
    pacer = Pacer(token=DEFAULT_TOKEN, account_rate="40/2s", token_rate="150/10s")
    return MailtrapClient(token=DEFAULT_TOKEN, base_url=BASE_URL, pacer=pacer, max_retries=8,
                          transport=_Bursts(_FailPending(mailtrap_transport, double, 1),
                                            double, every=9, size=3),
                          retry_initial=0.01, retry_max=0.2)


def test_backfill_of_20000_under_faults_converges_within_the_rate(
        ch: ChurnHarness, double: MailtrapDouble, mailtrap_transport: ValidatingTransport) -> None:
    """5 % 500s, 2 % drops, 429 bursts and 10 % failed imports: a 20,000-contact backfill in
    batches of 2,000 (lists by plan) ends with Mailtrap equal to the source, and so does the
    next sync of 1,000 list moves, 300 soft and 300 hard deletes (key scan), purges and keys
    coming back, memberships included; never above 40 requests / 2 s."""
    ch.batch_size = 2_000
    ch.crm.insert(range(1, 20_001))
    newsletter = double.add_list(UNMANAGED)
    members = {f"user{i}@example.com" for i in range(1, 20_001, 40)}
    for email in members:
        double.add_contact(email, list_ids=[newsletter])
    client = _faults(double, mailtrap_transport)

    result = _job(ch, client).run(RunKind.BACKFILL)

    assert result.outcome is RunOutcome.SUCCEEDED, result.error
    assert_audience(double, ch.crm, members)
    assert ch.store.count_contacts(PIPELINE) == 20_000
    assert ch.store.open_batches(PIPELINE) == []
    assert any(i.status == "failed" for i in double.imports())
    assert result.counts["imports_failed"] >= 1
    for round_, spec in enumerate([Churn(moves=1_000, soft=300, hard=300, purge=0, back=0),
                                   Churn(moves=300, soft=100, hard=100, purge=50, back=60)]):
        done = churn(ch.crm, random.Random(round_), at=T0 + timedelta(hours=round_ + 1),
                     tag=str(round_), spec=spec,
                     confirmed=lambda keys: ch.store.get_contacts(PIPELINE, keys))
        assert [len(done[kind]) for kind in ("soft", "hard", "purge", "reinserted")] == [
            spec.soft, spec.hard, spec.purge, spec.back]

        churned = _job(ch, client).run()

        assert churned.outcome is RunOutcome.SUCCEEDED, churned.error
        assert churned.counts["key_scans"] == 1
    assert_audience(double, ch.crm, members)
    assert ch.crm.gone() & members  # some of them left the managed lists, kept this one
    requests = double.requests()
    assert {"500", "drop_before", "drop_after", "429"} <= {r.fault for r in requests}
    assert double.max_requests_in_window(2.0, contacts_only=True) <= 40
    assert double.max_requests_in_window(10.0, token=DEFAULT_TOKEN) <= 150
    assert [r for r in requests if r.status == 429 and r.fault is None] == []
    posts_before = len(_posts(double))
    double.faults.error_rate = double.faults.drop_rate = 0.0
    assert _job(ch).run().outcome is RunOutcome.SUCCEEDED
    assert len(_posts(double)) == posts_before


def test_hard_deletes_under_faults_delete_the_contacts(
        ch: ChurnHarness, double: MailtrapDouble, mailtrap_transport: ValidatingTransport) -> None:
    """With on_delete = "delete", under the same faults: 1,000 contacts, then 20 rows removed
    (their contacts deleted in Mailtrap), 20 soft-deleted and 100 list moves, then removed keys
    coming back (created again): Mailtrap equals the source, memberships included."""
    ch.batch_size, ch.on_delete = 500, "delete"
    ch.crm.insert(range(1, 1_001))
    client = _faults(double, mailtrap_transport)
    assert _job(ch, client).run(RunKind.BACKFILL).outcome is RunOutcome.SUCCEEDED
    removed: set[str] = set()
    for round_, spec in enumerate([Churn(moves=100, soft=20, hard=20, purge=0, back=0),
                                   Churn(moves=30, soft=10, hard=10, purge=10, back=15)]):
        done = churn(ch.crm, random.Random(round_), at=T0 + timedelta(hours=round_ + 1),
                     tag=str(round_), spec=spec,
                     confirmed=lambda keys: ch.store.get_contacts(PIPELINE, keys))
        removed = (removed | {f"user{k}@example.com" for k in done["hard"]}) - {
            f"user{k}@example.com" for k in done["reinserted"]}

        result = _job(ch, client).run()

        assert result.outcome is RunOutcome.SUCCEEDED, result.error
        assert result.counts["contacts_deleted"] == spec.hard
        assert removed.isdisjoint(double.contacts())
        assert_audience(double, ch.crm)
    deletes = [r for r in double.requests() if r.method == "DELETE"]
    assert {r.status for r in deletes} >= {204}
    assert any(r.fault is not None for r in deletes)


def test_import_that_keeps_failing_is_split_then_recorded_failed(
        h: Harness, double: MailtrapDouble) -> None:
    """A failing import is posted again, then in halves, then the run fails with nothing
    committed; the next run sends every contact again."""
    h.batch_size = 100
    h.source.insert(range(1, 101))
    double.faults.import_failure_rate = 1.0

    failed = h.run()

    assert failed.outcome is RunOutcome.FAILED
    assert "failed 4 times" in (failed.error or "")
    assert [len(i.contacts) for i in double.imports()] == [100, 100, 50, 25]
    assert h.store.count_contacts(PIPELINE) == 0
    assert h.store.get_watermark(PIPELINE) is None
    last = h.store.last_batch(PIPELINE)
    assert last is not None
    assert (last.status, last.error) == (BatchStatus.FAILED, f"import {last.import_id} "
                                                             "ended failed")
    double.faults.import_failure_rate = 0.0
    assert h.run().outcome is RunOutcome.SUCCEEDED
    assert h.mailtrap_view() == h.source.expected()


def _config(tmp_path: Path, h: Harness, api_url: str = BASE_URL) -> Path:
    fields = "\n".join(f'{tag} = "{tag}"' for tag in FIELDS)
    path = tmp_path / "mailtrap-sync.toml"
    path.write_text(f"""
[state]
url = "{h.state_url}"

[mailtrap]
api_url = "{api_url}"
poll_interval = 0.01
poll_max_interval = 0.05

[[pipelines]]
name = "{PIPELINE}"
lists = ["Customers"]
batch_size = {h.batch_size}

[pipelines.source]
connector = "sql"
url = "{h.source.url}"
table = "customers"
key = "id"
cursor = "updated_at"
lookback = 0

[pipelines.mapping.fields]
{fields}
""")
    return path


def _cli(config: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False,
                              env={"MAILTRAP_API_TOKEN": DEFAULT_TOKEN})


def test_three_refused_contacts_land_later_and_only_they(
        tmp_path: Path, h: Harness, double: MailtrapDouble) -> None:
    """Three contacts Mailtrap refuses: the rest land, `rejects` lists the three with Mailtrap's
    reasons, and once fixed at the source the next run sends exactly those three."""
    h.source.insert(range(1, 51))
    refused = {7, 23, 41}
    double.faults.reject_emails = {f"user{i}@example.com" for i in refused}

    first = h.run()

    assert first.outcome is RunOutcome.SUCCEEDED, first.error
    assert first.counts["rejected"] == 3
    expected = h.source.expected()
    assert h.mailtrap_view() == {e: f for e, f in expected.items()
                                 if e not in double.faults.reject_emails}
    listed = _cli(_config(tmp_path, h), "rejects", PIPELINE, "--json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert sorted((r["source_key"], r["email"], r["kind"], r["reason"]) for r in rows) == [
        (str(i), f"user{i}@example.com", "mailtrap", "email: is invalid")
        for i in sorted(refused, key=str)]
    assert h.store.get_contacts(PIPELINE, [str(i) for i in refused]) == {}

    for i in refused:
        h.source.update([i], at=T0 + timedelta(hours=1), email=f"fixed{i}@example.com")
    imports_before = len(double.imports())
    second = h.run()

    assert second.outcome is RunOutcome.SUCCEEDED, second.error
    assert sorted(e for i in double.imports()[imports_before:] for e in i.emails) == sorted(
        f"fixed{i}@example.com" for i in refused)
    assert h.mailtrap_view() == h.source.expected()
    assert h.store.list_rejections(PIPELINE) == []


def test_refused_update_keeps_its_previous_hash(h: Harness, double: MailtrapDouble) -> None:
    """A refused update leaves the key's confirmed hash as it was; it goes out when its row
    changes again."""
    h.source.insert(range(1, 11))
    assert h.run().outcome is RunOutcome.SUCCEEDED
    before = h.store.get_contacts(PIPELINE, ["7"])["7"]
    h.source.update([7, 8], at=T0 + timedelta(hours=1), seats=42)
    double.faults.reject_emails = {"user7@example.com"}

    refused = h.run()

    assert refused.counts["rejected"] == 1
    assert refused.counts["updated"] == 2
    assert h.store.get_contacts(PIPELINE, ["7"])["7"] == before
    assert double.contact("user7@example.com").fields["seats"] == 7  # type: ignore[union-attr]
    assert double.contact("user8@example.com").fields["seats"] == 42  # type: ignore[union-attr]
    double.faults.reject_emails = set()
    h.source.update([7], at=T0 + timedelta(hours=2), seats=43)
    assert h.run().counts["updated"] == 1
    assert h.mailtrap_view() == h.source.expected()


def test_refused_old_address_holds_back_the_email_change(
        h: Harness, double: MailtrapDouble) -> None:
    """When Mailtrap refuses to take a key's old address out of the lists, the key's whole
    change waits, recorded with both addresses; other changes in the batch land."""
    h.source.insert(range(1, 6))
    assert h.run().outcome is RunOutcome.SUCCEEDED
    h.source.update([2], at=T0 + timedelta(hours=1), email="moved@example.com")
    h.source.update([3], at=T0 + timedelta(hours=1, seconds=1), first_name="Third")
    double.faults.reject_emails = {"user2@example.com"}

    result = h.run()

    assert result.outcome is RunOutcome.SUCCEEDED, result.error
    (rejection,) = h.store.list_rejections(PIPELINE)
    assert (rejection.source_key, rejection.email) == ("2", "moved@example.com")
    assert "taking user2@example.com out of the lists: email: is invalid" in rejection.reason
    assert "moved@example.com was not sent" in rejection.reason
    assert h.store.get_contacts(PIPELINE, ["2"])["2"].email == "user2@example.com"
    assert double.contact("moved@example.com") is None
    assert double.contact("user3@example.com").fields["first_name"] == "Third"  # type: ignore[union-attr]
    double.faults.reject_emails = set()
    assert h.job().retry_rejected().outcome is RunOutcome.SUCCEEDED
    assert double.contact("user2@example.com").list_ids == frozenset()  # type: ignore[union-attr]
    assert double.contact("moved@example.com") is not None
    assert h.store.list_rejections(PIPELINE) == []


def test_retry_command_resends_from_the_current_row(
        tmp_path: Path, h: Harness, double: MailtrapDouble, mailtrap_server: str) -> None:
    """`mailtrap-sync retry` re-reads a rejected key's current row and sends it at once."""
    h.source.insert(range(1, 11))
    double.faults.reject_emails = {"user4@example.com"}
    assert h.run().counts["rejected"] == 1
    double.faults.reject_emails = set()
    h.source.update([4], at=T0, first_name="Current")  # same cursor: only retry re-reads it
    imports_before = len(double.imports())

    retried = _cli(_config(tmp_path, h, mailtrap_server), "retry", PIPELINE)

    assert retried.exit_code == 0, retried.output
    assert [i.emails for i in double.imports()[imports_before:]] == [["user4@example.com"]]
    assert double.contact("user4@example.com").fields["first_name"] == "Current"  # type: ignore[union-attr]
    assert h.store.list_rejections(PIPELINE) == []


def test_422_naming_no_contact_is_narrowed_down(h: Harness, double: MailtrapDouble,
                                                mailtrap_transport: ValidatingTransport) -> None:
    """A 422 that names no contact of the batch is narrowed down by halves to the one refused
    contact, which is recorded; the others land, in a bounded number of posts."""
    h.batch_size = 40
    h.source.insert(range(1, 41))
    double.faults.reject_emails = {"user13@example.com"}
    client = MailtrapClient(token=DEFAULT_TOKEN, base_url=BASE_URL, retry_initial=0.01,
                            transport=_Unnamed422(mailtrap_transport))

    result = _job(h, client).run()

    assert result.outcome is RunOutcome.SUCCEEDED, result.error
    assert [(r.source_key, r.email) for r in h.store.list_rejections(PIPELINE)] == [
        ("13", "user13@example.com")]
    expected = h.source.expected()
    del expected["user13@example.com"]
    assert h.mailtrap_view() == expected
    refused = [r for r in _posts(double) if r.status == 422]
    assert 2 <= len(refused) <= 2 * 6 + 2


def test_422_respelling_the_address_still_names_it(
        h: Harness, double: MailtrapDouble, mailtrap_transport: ValidatingTransport) -> None:
    """A 422 naming an address in another spelling (case, Unicode domain) is matched to it."""
    h.source.insert(range(1, 6))
    h.source.insert([6], email="Zoë@Bücher.example")
    h.source.insert([7], email="ana@bücher.example")
    double.faults.reject_emails = {"ana@xn--bcher-kva.example"}
    client = MailtrapClient(token=DEFAULT_TOKEN, base_url=BASE_URL, retry_initial=0.01,
                            transport=_Unnamed422(mailtrap_transport, respell={
                                "ana@xn--bcher-kva.example": "ANA@BÜCHER.EXAMPLE"}))

    result = _job(h, client).run()

    assert result.counts["rejected"] == 1
    assert [r.source_key for r in h.store.list_rejections(PIPELINE)] == ["7"]
    assert len(_posts(double)) == 2


def test_422_that_never_names_a_contact_fails_the_run(
        h: Harness, double: MailtrapDouble, mailtrap_transport: ValidatingTransport) -> None:
    """When every import is refused without naming a contact, the run fails after a bounded
    number of posts, with nothing committed."""
    h.batch_size = 40
    h.source.insert(range(1, 41))
    double.faults.reject_emails = {f"user{i}@example.com" for i in range(1, 41)}
    client = MailtrapClient(token=DEFAULT_TOKEN, base_url=BASE_URL, retry_initial=0.01,
                            transport=_Unnamed422(mailtrap_transport))

    result = _job(h, client).run()

    assert result.outcome is RunOutcome.FAILED
    assert "without naming a contact" in (result.error or "")
    assert len(_posts(double)) <= 2 * 6 + 3
    assert h.store.get_watermark(PIPELINE) is None
    assert double.contacts() == {}


def test_import_timeout_leaves_the_batch_for_the_next_run(
        h: Harness, double: MailtrapDouble) -> None:
    """An import still running after import_timeout fails the run with the batch left posted;
    the next run polls that import and commits it, without posting again."""
    h.source.insert(range(1, 21))
    double.import_policy = ImportPolicy(polls_to_finish=None, seconds_to_finish=3600)

    slow = _job(h, import_timeout=0.2).run()

    assert slow.outcome is RunOutcome.FAILED
    assert "still started after" in (slow.error or "")
    (batch,) = h.store.open_batches(PIPELINE)
    assert batch.status is BatchStatus.POSTED
    assert h.store.get_watermark(PIPELINE) is None
    double.finish_imports()
    resumed = h.run()
    assert resumed.outcome is RunOutcome.SUCCEEDED, resumed.error
    assert len(double.imports()) == 1
    closed = h.store.get_batch(batch.id)
    assert (closed.status, closed.import_id) == (BatchStatus.FINISHED, batch.import_id)
    assert h.mailtrap_view() == h.source.expected()


def test_import_mailtrap_no_longer_knows_is_abandoned(h: Harness, double: MailtrapDouble) -> None:
    """A recorded import id that Mailtrap answers 404 for is abandoned; its contacts are re-read."""
    h.source.insert(range(1, 11))
    run_id = h.store.start_run(PIPELINE, RunKind.SYNC)
    orphan = h.store.record_batch(PIPELINE, run_id, [])
    h.store.mark_batch_posted(orphan, 424_242)
    h.store.finish_run(run_id, RunOutcome.INTERRUPTED, {})

    result = h.run()

    assert result.outcome is RunOutcome.SUCCEEDED, result.error
    assert h.store.get_batch(orphan).status is BatchStatus.ABANDONED
    assert h.mailtrap_view() == h.source.expected()


def test_full_contact_quota_is_recorded_logged_and_shown(
        tmp_path: Path, h: Harness, double: MailtrapDouble) -> None:
    """An import over the contact quota commits nothing, logs import.over_limit as an error,
    fails the run, and `status` shows it; with room again the next run sends everything."""
    h.source.insert(range(1, 101))
    double.max_contacts = 60

    with structlog.testing.capture_logs() as logs:
        full = h.run()

    assert full.outcome is RunOutcome.FAILED
    assert "quota is full: 40 contacts" in (full.error or "")
    assert full.counts["over_limit"] == 40
    assert [e["log_level"] for e in logs if e["event"] == "import.over_limit"] == ["error"]
    assert h.store.count_contacts(PIPELINE) == 0
    assert h.store.get_watermark(PIPELINE) is None
    (row,) = status_rows(h.store, [PIPELINE])
    assert row["last_import"]["status"] == "failed"
    assert row["last_import"]["over_limit"] == 40
    shown = _cli(_config(tmp_path, h), "status")
    assert shown.exit_code == 0, shown.output
    assert "OVER QUOTA: 40" in shown.output
    double.max_contacts = None
    assert h.run().outcome is RunOutcome.SUCCEEDED
    assert h.mailtrap_view() == h.source.expected()
