"""Pipelining (issue 11): the next import is posted while earlier ones run, confirmed in order.

A real source table and state store, the real job, and the Mailtrap double behind spec
validation. The double's request log says what ran at the same time: an import "runs" from its
POST to the poll that found it ended (only the oldest import is polled, so that poll is when the
run learns it). A ``_Watch`` transport checks the state store before every request: every open
batch's rows are still after the watermark (invariant 1), at any instant of the run.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from sync_service.job import SyncJob
from sync_service.mailtrap.client import MailtrapClient
from sync_service.models import BatchStatus, Position, RunOutcome
from sync_service.settings import AppSettings
from sync_service.state import StateStore
from sync_service.state.tables import batches
from sync_service.testing.mailtrap.double import (
    DEFAULT_TOKEN,
    ImportPolicy,
    LoggedRequest,
    MailtrapDouble,
)
from tests.integration import test_exactness as exactness
from tests.support.harness import BASE_URL, Harness, Source, customers
from tests.support.openapi import ValidatingTransport
from tests.support.people import People, PeopleHarness
from tests.support.people import small_pages as small_pages  # noqa: PLC0414 - a fixture

IMPORTS = "/contacts/imports"


def _in_flight(settings: AppSettings, count: int) -> AppSettings:
    mailtrap = settings.mailtrap.model_copy(update={"imports_in_flight": count})
    return settings.model_copy(update={"mailtrap": mailtrap})


class _Piped(Harness):
    """``Harness`` with ``imports_in_flight`` set."""

    in_flight = 3

    def settings(self) -> AppSettings:
        return _in_flight(super().settings(), self.in_flight)

    def job_with(self, client_transport: httpx.BaseTransport, **kwargs: Any) -> SyncJob:
        """The job, its client on ``client_transport`` (wrapping ``self.transport``)."""
        client = MailtrapClient(token=DEFAULT_TOKEN, base_url=BASE_URL, transport=client_transport,
                                retry_initial=0.01, retry_max=0.1, max_retries=6)
        settings = self.settings()
        return SyncJob(settings=settings, pipeline=settings.pipelines[0], store=self.store,
                       client=client, **kwargs)


class _PipedPeople(PeopleHarness):
    """``PeopleHarness`` with ``imports_in_flight`` set."""

    in_flight = 3

    def settings(self) -> AppSettings:
        return _in_flight(super().settings(), self.in_flight)


@pytest.fixture
def h(sqlite_url: str, double: MailtrapDouble,
      mailtrap_transport: ValidatingTransport) -> Iterator[_Piped]:
    """500 rows in batches of 100, imports taking 1 s (far longer than reading a batch, even
    on a busy machine), three batches in flight at most."""
    double.import_policy = ImportPolicy(polls_to_finish=None, seconds_to_finish=1.0)
    harness = _Piped(double, mailtrap_transport, Source(sqlite_url),
                     sqlite_url.replace(".db", "-state.db"), batch_size=100)
    harness.source.insert(range(1, 501))
    yield harness
    harness.close()


# what ran when ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Run:
    """One accepted import: when it was posted, and the poll that found it ended."""

    import_id: int
    posted: int  # index in the double's request log
    ended: int
    emails: frozenset[str]


def _runs(double: MailtrapDouble) -> list[_Run]:
    log = double.requests()
    posts = [i for i, r in enumerate(log) if _is_post(r) and r.status == 201]
    found = []
    for index, view in zip(posts, double.imports(), strict=True):
        polls = [i for i, r in enumerate(log)
                 if r.method == "GET" and r.path.endswith(f"{IMPORTS}/{view.id}")]
        found.append(_Run(view.id, index, max(polls), frozenset(str(c["email"])
                                                                  for c in view.contacts)))
    return found


def _is_post(request: LoggedRequest) -> bool:
    return request.method == "POST" and request.path.endswith(IMPORTS)


def _most_running(runs: list[_Run]) -> int:
    """The most imports running at once, as seen at each post."""
    return max(sum(1 for o in runs if o.posted <= r.posted < o.ended) for r in runs)


def _shared_while_running(runs: list[_Run]) -> list[tuple[int, int, set[str]]]:
    """Imports posted while an earlier one with a common address still ran."""
    return [(a.import_id, b.import_id, set(a.emails & b.emails)) for a in runs for b in runs
            if a.posted < b.posted < a.ended and a.emails & b.emails]


def _finish_order(store: StateStore) -> list[int]:
    """Finished batches' ids in the order they were confirmed."""
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(batches.c.id, batches.c.finished_at).where(
            batches.c.status == BatchStatus.FINISHED.value)).all()
    return [r.id for r in sorted(rows, key=lambda r: (r.finished_at, r.id))]


def _confirmed_in_read_order(double: MailtrapDouble) -> bool:
    """Whether the finished imports ended in the order their rows were read (by key: every
    row of ``h`` has the same cursor), each one's rows all after the one before."""
    finished = {i.id for i in double.imports() if i.status == "finished"}
    ended = sorted((r for r in _runs(double) if r.import_id in finished), key=lambda r: r.ended)
    spans = [sorted(int(e.removeprefix("user").split("@")[0]) for e in r.emails) for r in ended]
    return all(a[-1] < b[0] for a, b in itertools.pairwise(spans))


class _Watch(httpx.BaseTransport):
    """Before each request: no open batch has a row at or before the watermark; ``then`` runs
    after each answer (a test's trigger)."""

    def __init__(self, inner: httpx.BaseTransport, store: StateStore, source: Source,
                 then: Callable[[httpx.Request, httpx.Response], None] | None = None) -> None:
        self.inner, self.store, self.source, self.then = inner, store, source, then
        self.checks = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        _assert_open_batches_after_the_mark(self.store, self.source)
        self.checks += 1
        response = self.inner.handle_request(request)
        if self.then is not None:
            self.then(request, response)
        return response

    def close(self) -> None:
        self.inner.close()


def _assert_open_batches_after_the_mark(store: StateStore, source: Source) -> None:
    mark = store.get_watermark("customers")
    after = _keys_after(source, mark)
    for batch in store.open_batches("customers"):
        keys = {e.source_key for e in store.batch_entries(batch.id)}
        assert keys <= after, f"the watermark passed open batch {batch.id}"


def _keys_after(source: Source, mark: Position | None) -> set[str]:
    with source.engine.connect() as conn:
        rows = conn.execute(sa.select(customers.c.id, customers.c.updated_at)).all()
    return {str(key) for key, cursor in rows
            if mark is None or (cursor, key) > (mark.cursor, int(mark.key))}


# the tests ----------------------------------------------------------------------------------
def test_next_import_is_posted_while_the_previous_one_runs(h: _Piped) -> None:
    """With slow imports the next batch is posted before the previous import ended, never more
    than three run at once, batches are confirmed in posting order, and the watermark never
    passes an open batch; Mailtrap ends equal to the source, each contact sent once."""
    watch = _Watch(h.transport, h.store, h.source)

    result = h.job_with(watch).run()

    assert result.outcome is RunOutcome.SUCCEEDED, result.error
    runs = _runs(h.double)
    assert len(runs) == 5
    assert any(b.posted < a.ended for a, b in itertools.pairwise(runs))
    assert _most_running(runs) == 3
    assert _finish_order(h.store) == sorted(_finish_order(h.store))
    assert _confirmed_in_read_order(h.double)
    assert watch.checks > 10
    assert h.mailtrap_view() == h.source.expected()
    assert h.store.open_batches("customers") == []
    assert result.counts["imports"] == 5
    assert result.counts["sent"] == 500
    mark = h.store.get_watermark("customers")
    assert mark is not None
    assert mark.key == 500
    assert h.run().counts.get("imports", 0) == 0  # nothing left to send


def test_one_import_in_flight_waits_for_each_before_the_next(h: _Piped) -> None:
    """``imports_in_flight = 1``: every import has ended before the next is posted (the
    behaviour before pipelining), with the same result."""
    h.in_flight = 1

    result = h.run()

    assert result.outcome is RunOutcome.SUCCEEDED, result.error
    runs = _runs(h.double)
    assert len(runs) == 5
    assert all(a.ended < b.posted for a, b in itertools.pairwise(runs))
    assert _most_running(runs) == 1
    assert h.mailtrap_view() == h.source.expected()


def test_stop_with_imports_in_flight_leaves_them_for_the_next_run(h: _Piped) -> None:
    """A stop request once three imports are out: nothing more is posted, the imports in flight
    stay POSTED with the watermark before them, and the next run polls (never re-posts) them
    and ends with Mailtrap equal to the source."""
    h.double.import_policy = ImportPolicy(polls_to_finish=None, seconds_to_finish=5.0)
    stop = threading.Event()

    def third_post(request: httpx.Request, response: httpx.Response) -> None:
        if sum(_is_post(r) and r.status == 201 for r in h.double.requests()) == 3:
            stop.set()

    job = h.job_with(_Watch(h.transport, h.store, h.source, third_post), stop=stop)
    stopped = job.run()

    assert stopped.outcome is RunOutcome.INTERRUPTED
    assert len(h.double.imports()) == 3
    left = h.store.open_batches("customers")
    assert [b.status for b in left] == [BatchStatus.POSTED] * 3
    assert [b.import_id for b in left] == [i.id for i in h.double.imports()]
    _assert_open_batches_after_the_mark(h.store, h.source)

    h.double.import_policy = ImportPolicy(polls_to_finish=None, seconds_to_finish=0.05)
    assert h.run().outcome is RunOutcome.SUCCEEDED
    assert all(h.store.get_batch(b.id).status is BatchStatus.FINISHED for b in left)
    assert h.mailtrap_view() == h.source.expected()
    assert len(h.double.imports()) == 5  # 500 contacts in batches of 100, none twice
    assert h.store.open_batches("customers") == []


def test_failed_imports_with_others_in_flight_are_posted_again_in_order(h: _Piped) -> None:
    """Every import running when the third is posted fails: each is posted again when its turn
    comes, later batches wait to be confirmed behind it, the watermark never passes an
    unconfirmed batch, and the run ends with Mailtrap equal to the source."""
    failed: list[int] = []

    def fail_running(request: httpx.Request, response: httpx.Response) -> None:
        running = [i for i in h.double.imports() if i.status in ("created", "started")]
        if not failed and len(running) == 3:
            failed.extend(i.id for i in running[:2])
            h.double.finish_imports(failed=True)  # the third too: all three ended failed

    result = h.job_with(_Watch(h.transport, h.store, h.source, fail_running)).run()

    assert result.outcome is RunOutcome.SUCCEEDED, result.error
    assert len(failed) == 2
    assert result.counts["imports_failed"] == 3
    assert result.counts["imports"] == 5
    assert _confirmed_in_read_order(h.double)
    assert h.mailtrap_view() == h.source.expected()
    assert h.store.open_batches("customers") == []
    mark = h.store.get_watermark("customers")
    assert mark is not None
    assert mark.key == 500


def test_over_quota_stops_posting_and_finishes_the_imports_in_flight(h: _Piped) -> None:
    """The contact quota fills up at the second import while the third is out: the run fails,
    posts nothing more, polls the import in flight behind it to its end (none stays open), and
    the watermark stays after the first batch; with room again, the next run sends the rest."""
    h.double.max_contacts = 150

    failed = h.job_with(_Watch(h.transport, h.store, h.source)).run()

    assert failed.outcome is RunOutcome.FAILED
    assert "quota" in (failed.error or "")
    runs = _runs(h.double)
    # The third was out before the first was confirmed (a fourth may have been posted once it
    # was, before the second ended); nothing was posted after the second ended over the quota.
    assert len(runs) in (3, 4)
    assert all(r.posted < runs[1].ended for r in runs)
    assert h.store.open_batches("customers") == []
    assert [h.store.get_batch(i).status for i in range(1, len(runs) + 1)] == [
        BatchStatus.FINISHED, *[BatchStatus.FAILED] * (len(runs) - 1)]
    mark = h.store.get_watermark("customers")
    assert mark is not None
    assert mark.key == 100

    h.double.max_contacts = None
    assert h.run().outcome is RunOutcome.SUCCEEDED
    assert h.mailtrap_view() == h.source.expected()


# clashes with batches in flight ---------------------------------------------------------------
@pytest.fixture
def people(request: pytest.FixtureRequest, sqlite_url: str, double: MailtrapDouble,
           mailtrap_transport: ValidatingTransport) -> Iterator[_PipedPeople]:
    """The exactness harness with one change per batch, so earlier changes are in flight when a
    later record is decided (imports finish on their second poll); two records a chunk."""
    request.getfixturevalue(small_pages.__name__)
    harness = _PipedPeople(double, mailtrap_transport, People(sqlite_url),
                           sqlite_url.replace(".db", "-state.db"), fetch_size=2, batch_size=1)
    yield harness
    harness.close()


def test_key_read_again_waits_for_its_import_in_flight(people: _PipedPeople) -> None:
    """Key 1 edited again while the run reads, its first change in flight: the second change is
    posted only after the first import ended, and Mailtrap ends with the newest row."""
    src = exactness._seed(people)
    seeded = len(people.double.imports())
    for key in (1, 2, 3, 4):
        src.update(key, first_name=f"G{key}")
    people.sync(during={1: [lambda: src.update(1, first_name="Newest")]})
    people.assert_exact()
    assert people.listed()["user1@example.com"] == {"first_name": "Newest"}
    runs = _runs(people.double)[seeded:]
    ones = [r for r in runs if "user1@example.com" in r.emails]
    assert len(ones) == 2
    assert ones[0].ended < ones[1].posted
    assert _most_running(runs) > 1  # the others did overlap
    assert _shared_while_running(runs) == []


SCENARIOS = [
    exactness.test_field_changed_back_during_the_run_is_sent,
    exactness.test_new_row_deleted_during_the_run_is_unlisted,
    exactness.test_address_changed_twice_unlists_both_old_addresses,
    exactness.test_new_key_whose_address_changes_during_the_run,
    exactness.test_two_keys_swapping_addresses_during_the_run,
    exactness.test_key_moving_to_an_address_freed_in_the_same_run,
    exactness.test_duplicate_rechecked_when_owner_moves_away_in_a_later_run,
    exactness.test_recreated_person_waiting_as_duplicate_is_sent_once_the_old_key_is_deleted,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__.removeprefix("test_"))
def test_identity_scenarios_with_batches_in_flight(people: _PipedPeople,
                                                   scenario: Callable[[PeopleHarness], None]
                                                   ) -> None:
    """The exactness scenarios (edits, moves, swaps, deletes while the run reads) with every
    change in a batch of its own and three in flight: each ends exact, and no address is in
    two imports running at once."""
    scenario(people)
    assert _shared_while_running(_runs(people.double)) == []


@pytest.mark.parametrize("order", ["delete_first", "create_first"])
def test_released_address_with_batches_in_flight(people: _PipedPeople, order: str) -> None:
    """A deleted key's address taken by a new key in the same run, with batches in flight:
    exact, and the release is confirmed before the new owner's import is posted."""
    exactness.test_deleted_key_releases_its_address_to_a_recreated_person(people, order)
    assert _shared_while_running(_runs(people.double)) == []

