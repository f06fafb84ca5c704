"""Exactness under real CRM traffic (issue 7): rows edited while a run reads them, identities
that move, swap or are deleted and re-created. Every test edits the source between two pages of
a run, and ends with Mailtrap's list equal to the source after at most two syncs, no retry."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from sync_service.errors import StateError
from sync_service.job import RunResult, SyncJob
from sync_service.models import RejectKind, RunOutcome
from sync_service.state import StateStore
from sync_service.testing.mailtrap.double import MailtrapDouble
from tests.support.openapi import ValidatingTransport
from tests.support.people import PIPELINE, People, PeopleHarness, _Editor, small_pages

pytestmark = pytest.mark.usefixtures(small_pages.__name__)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def h(request: pytest.FixtureRequest, sqlite_url: str, double: MailtrapDouble,
      mailtrap_transport: ValidatingTransport) -> Iterator[PeopleHarness]:
    """Source in SQLite read two rows a page; state in SQLite or PostgreSQL."""
    state = (sqlite_url.replace(".db", "-state.db") if request.param == "sqlite"
             else request.getfixturevalue("pg_url"))
    harness = PeopleHarness(double, mailtrap_transport, People(sqlite_url),  # type: ignore[arg-type]
                            state, fetch_size=2)
    yield harness
    harness.close()


def _src(h: PeopleHarness) -> People:
    assert isinstance(h.source, People)
    return h.source


def _seed(h: PeopleHarness, count: int = 6) -> People:
    src = _src(h)
    for key in range(1, count + 1):
        src.insert(key, f"user{key}@example.com")
    h.sync()
    h.assert_exact()
    return src


def test_field_changed_back_during_the_run_is_sent(h: PeopleHarness) -> None:
    """F1 → X before the run and X → F1 while it reads: Mailtrap ends with F1, hash of F1."""
    src = _seed(h)
    src.update(1, first_name="X")
    for key in (2, 3, 4):
        src.update(key, first_name=f"G{key}")
    h.sync(during={1: [lambda: src.update(1, first_name="F1")]})
    h.assert_exact()
    assert h.listed()["user1@example.com"] == {"first_name": "F1"}
    writes = sum(r.is_write for r in h.double.requests())
    h.sync()
    assert sum(r.is_write for r in h.double.requests()) == writes  # quiet afterwards


def test_new_row_deleted_during_the_run_is_unlisted(h: PeopleHarness) -> None:
    """A row created before the run and soft-deleted while it reads ends up not listed."""
    src = _seed(h)
    src.insert(7, "new@example.com")
    for key in (2, 3, 4):
        src.update(key, first_name=f"G{key}")
    h.sync(during={1: [lambda: src.delete(7)]})
    h.assert_exact()
    assert "new@example.com" not in h.listed()


def test_address_changed_twice_unlists_both_old_addresses(h: PeopleHarness) -> None:
    """x → a before the run and a → b during it: x and a are unlisted, b is listed."""
    src = _seed(h)
    src.update(1, email="a@example.com")
    for key in (2, 3, 4):
        src.update(key, first_name=f"G{key}")
    h.sync(during={1: [lambda: src.update(1, email="b@example.com")]})
    h.assert_exact()
    listed = h.listed()
    assert "user1@example.com" not in listed
    assert "a@example.com" not in listed
    assert listed["b@example.com"] == {"first_name": "F1"}


def test_new_key_whose_address_changes_during_the_run(h: PeopleHarness) -> None:
    """A new key moving p → q while the run reads it: no failure, q listed, p not."""
    src = _seed(h)
    src.insert(7, "p@example.com")
    for key in (2, 3, 4):
        src.update(key, first_name=f"G{key}")
    h.sync(during={1: [lambda: src.update(7, email="q@example.com")]})
    h.assert_exact()
    assert "p@example.com" not in h.listed()


@pytest.mark.parametrize("order", ["delete_first", "create_first"])
def test_deleted_key_releases_its_address_to_a_recreated_person(h: PeopleHarness,
                                                                  order: str) -> None:
    """Key 1 deleted and key 9 created with its address during a run: 9 is synced."""
    src = _seed(h)
    for key in (2, 3):
        src.update(key, first_name=f"G{key}")
    edits = [lambda: src.delete(1), lambda: src.insert(9, "user1@example.com", "Re")]
    if order == "create_first":
        edits.reverse()
    h.sync(during={1: edits})
    h.assert_exact()
    assert h.listed()["user1@example.com"] == {"first_name": "Re"}
    assert h.store.count_rejections(PIPELINE) == 0


def test_recreated_person_waiting_as_duplicate_is_sent_once_the_old_key_is_deleted(
        h: PeopleHarness) -> None:
    """Key 9 refused as a duplicate of key 1; key 1 deleted during the next run: 9 is sent."""
    src = _seed(h)
    src.insert(9, "user1@example.com", "Re")
    h.sync()
    assert [r.kind for r in h.store.list_rejections(PIPELINE)] == [RejectKind.DUPLICATE]
    for key in (2, 3):
        src.update(key, first_name=f"G{key}")
    h.sync(during={1: [lambda: src.delete(1)]})
    h.assert_exact()
    assert h.listed()["user1@example.com"] == {"first_name": "Re"}
    assert h.store.count_rejections(PIPELINE) == 0


def test_two_keys_swapping_addresses_during_the_run(h: PeopleHarness) -> None:
    """Keys 1 and 2 swap addresses while the run reads: each address ends with its new person."""
    src = _seed(h)
    src.update(1, first_name="One")
    src.update(2, first_name="Two")

    def swap() -> None:
        src.update(1, email="tmp@example.com")
        src.update(2, email="user1@example.com")
        src.update(1, email="user2@example.com")

    for key in (3, 4):
        src.update(key, first_name=f"G{key}")
    h.sync(during={1: [swap]})
    h.assert_exact()
    assert h.listed()["user2@example.com"] == {"first_name": "One"}
    assert h.listed()["user1@example.com"] == {"first_name": "Two"}
    assert h.store.count_rejections(PIPELINE) == 0


def test_key_moving_to_an_address_freed_in_the_same_run(h: PeopleHarness) -> None:
    """Key 2 takes key 1's address while key 1 moves away later in the same read."""
    src = _seed(h)
    for key in (3, 4):
        src.update(key, first_name=f"G{key}")

    def move() -> None:
        src.update(2, email="user1@example.com")
        src.update(1, email="elsewhere@example.com")

    h.sync(during={1: [move]})
    h.assert_exact()
    assert h.listed()["user1@example.com"] == {"first_name": "F1"}
    assert "user2@example.com" not in h.listed()
    assert h.store.count_rejections(PIPELINE) == 0


def test_duplicate_rechecked_when_owner_moves_away_in_a_later_run(h: PeopleHarness) -> None:
    """Key 2 refused as a duplicate; its owner moves away in the next run: 2 is sent then."""
    src = _seed(h)
    src.update(2, email="user1@example.com")
    h.sync()
    assert [r.kind for r in h.store.list_rejections(PIPELINE)] == [RejectKind.DUPLICATE]
    for key in (3, 4):
        src.update(key, first_name=f"G{key}")
    h.sync(during={1: [lambda: src.update(1, email="moved@example.com")]})
    h.assert_exact()
    assert h.store.count_rejections(PIPELINE) == 0


class _NoRenewal(StateStore):
    """A state store whose lease renewals fail, as when the holder is cut off from it."""

    def renew_lease(self, pipeline: str, owner: str, ttl_seconds: float,
                    generation: int | None = None) -> bool:
        raise StateError("renewal refused by the test")


def test_stale_run_is_fenced_after_a_takeover(h: PeopleHarness) -> None:
    """Renewals fail for lease_ttl, a second run takes over and syncs: the stale run posts and
    commits nothing more, and Mailtrap equals the source."""
    src = _seed(h)
    for key in (1, 2, 3, 4):
        src.update(key, first_name="Stale")
    stale_store = _NoRenewal.from_url(h.state_url)
    settings = h.settings()
    imports_before = len(h.double.imports())
    newer: list[RunResult] = []

    def take_over() -> None:
        time.sleep(1.3)  # the stale run's lease (ttl 1 s) expires; its renewals keep failing
        for key in (1, 2, 3, 4):
            src.update(key, first_name="Newer")
        newer.append(h.job().run())

    stale = SyncJob(settings=settings, pipeline=settings.pipelines[0], store=stale_store,
                    client=h.client(), lease_ttl=1.0, observer=_Editor({1: [take_over]}))
    try:
        result = stale.run()
    finally:
        stale_store.close()
    assert newer[0].outcome is RunOutcome.SUCCEEDED, newer[0].error
    assert result.outcome is RunOutcome.FAILED
    assert result.error is not None
    assert "lease" in result.error
    # Every import after the takeover is the newer run's; none carries the stale value.
    assert len(h.double.imports()) == imports_before + newer[0].counts["imports"]
    h.assert_exact()
    edited = {f"user{key}@example.com" for key in (1, 2, 3, 4)}
    assert {v["first_name"] for k, v in h.listed().items() if k in edited} == {"Newer"}
    runs = {r.id: r for r in h.store.list_runs(PIPELINE)}
    assert runs[newer[0].run_id].outcome is RunOutcome.SUCCEEDED  # type: ignore[index]


def test_refused_contact_is_not_posted_again_until_its_row_changes(h: PeopleHarness) -> None:
    """A 422-refused contact inside the lookback window is not re-posted on every run; it is
    when its row changes, or on retry."""
    h.lookback = "1d"  # every run re-reads every row
    src = _seed(h)
    src.update(2, first_name="Refused")
    h.double.faults.reject_emails = {"user2@example.com"}
    h.sync()
    assert [r.kind for r in h.store.list_rejections(PIPELINE)] == [RejectKind.MAILTRAP]
    posts = len(h.double.imports())
    again = h.sync()
    assert len(h.double.imports()) == posts  # nothing posted: the row still holds that value
    assert again.counts["still_refused"] == 1
    h.double.faults.reject_emails = set()
    retried = h.job().retry_rejected()
    assert retried.outcome is RunOutcome.SUCCEEDED, retried.error
    h.assert_exact()
    assert h.store.count_rejections(PIPELINE) == 0


def test_refused_contact_goes_out_when_its_row_changes(h: PeopleHarness) -> None:
    """The refused hash is remembered per value: a changed row is posted at once."""
    h.lookback = "1d"
    src = _seed(h)
    src.update(2, first_name="Refused")
    h.double.faults.reject_emails = {"user2@example.com"}
    h.sync()
    h.double.faults.reject_emails = set()
    src.update(2, first_name="Fixed")
    h.sync()
    h.assert_exact()
    assert h.store.count_rejections(PIPELINE) == 0


@pytest.fixture
def loose(sqlite_url: str, double: MailtrapDouble,
          mailtrap_transport: ValidatingTransport) -> Iterator[PeopleHarness]:
    """A source table without a unique key (two rows may share an id)."""
    harness = PeopleHarness(double, mailtrap_transport,  # type: ignore[arg-type]
                            People(sqlite_url, unique_key=False),
                            sqlite_url.replace(".db", "-state.db"), fetch_size=2)
    yield harness
    harness.close()


def test_duplicate_source_key_rejects_the_later_row_not_the_run(loose: PeopleHarness) -> None:
    """Two rows with one key: the first is synced, the later one is rejected as duplicate_key,
    the other rows are synced, and later runs keep it that way (issue 8, case 2)."""
    src = _src(loose)
    for key in (1, 2, 3, 4):
        src.insert(key, f"user{key}@example.com")
    src.insert(1, "other@example.com", "Twin")
    loose.lookback = "1d"
    for _ in range(2):
        loose.sync()
        assert set(loose.listed()) == {f"user{k}@example.com" for k in (1, 2, 3, 4)}
        rejected = loose.store.list_rejections(PIPELINE)
        assert [(r.source_key, r.kind) for r in rejected] == [("1", RejectKind.DUPLICATE_KEY)]
        assert "2 rows" in rejected[0].reason
    with src.engine.begin() as conn:  # the duplicate is removed from the source
        conn.execute(src.table.delete().where(src.table.c.first_name == "Twin"))
    src.update(1, first_name="Single")
    loose.sync()
    assert loose.listed()["user1@example.com"] == {"first_name": "Single"}
    assert loose.store.count_rejections(PIPELINE) == 0


class _CodedHarness(PeopleHarness):
    table_name = "accounts"
    key_column = "code"


@pytest.mark.postgres
def test_nul_in_email_and_text_key_with_a_postgres_state_store(
        sqlite_url: str, pg_url: str, double: MailtrapDouble,
        mailtrap_transport: ValidatingTransport) -> None:
    """A NUL byte in an email or a text key does not fail the run on a PostgreSQL state store:
    the email's row is rejected naming its key, the key's row is synced and its state kept
    (issue 8, case 4)."""
    import sqlalchemy as sa

    source = sa.create_engine(sqlite_url)
    with source.begin() as conn:
        conn.execute(sa.text("CREATE TABLE accounts (code TEXT PRIMARY KEY, email TEXT, "
                             "first_name TEXT, deleted BOOLEAN NOT NULL, updated_at DATETIME)"))
        conn.execute(sa.text("INSERT INTO accounts VALUES (:c, :e, 'F', 0, :t)"), [
            {"c": "a\x00b", "e": "key@example.com", "t": "2026-03-01 12:00:00.000000"},
            {"c": "plain", "e": "bad\x00@example.com", "t": "2026-03-01 12:00:01.000000"},
            {"c": "ok", "e": "ok@example.com", "t": "2026-03-01 12:00:02.000000"}])
    source.dispose()
    h = _CodedHarness(double, mailtrap_transport, People.__new__(People), pg_url)
    h.source.url = sqlite_url
    h.source.engine = sa.create_engine(sqlite_url)
    try:
        for _ in range(2):
            result = h.job().run()
            assert result.outcome is RunOutcome.SUCCEEDED, result.error
        assert set(h.listed()) == {"key@example.com", "ok@example.com"}
        assert set(h.store.get_contacts(PIPELINE, ["a\x00b", "ok"])) == {"a\x00b", "ok"}
        rejected = h.store.list_rejections(PIPELINE)
        assert [(r.source_key, r.email, r.kind) for r in rejected] == [
            ("plain", "bad\x00@example.com", RejectKind.INVALID_EMAIL)]
        assert result.counts.get("created", 0) == 0  # the second run found nothing new
    finally:
        h.close()


def test_a_422_saying_the_contact_limit_is_reached_is_over_quota(h: PeopleHarness) -> None:
    """Every contact refused for the contacts limit: no rejections, nothing confirmed, the run
    fails saying the quota is full, and the next run sends everything once there is room."""
    src = _src(h)
    for key in range(1, 5):
        src.insert(key, f"user{key}@example.com")
    h.double.faults.quota_422 = True
    full = h.job().run()
    assert full.outcome is RunOutcome.FAILED
    assert full.error is not None
    assert "quota" in full.error
    assert h.store.count_rejections(PIPELINE) == 0
    assert h.store.get_watermark(PIPELINE) is None
    h.double.faults.quota_422 = False
    h.sync()
    h.assert_exact()


def test_an_import_that_accounts_for_fewer_contacts_commits_nothing(h: PeopleHarness) -> None:
    """created + updated + over_limit below the contacts sent: the batch is not confirmed, the
    run says how many are unaccounted for, and the next run sends them again."""
    src = _seed(h)
    for key in (1, 2, 3):
        src.update(key, first_name="Edited")
    h.double.faults.uncounted = 1
    short = h.job().run()
    assert short.outcome is RunOutcome.FAILED
    assert short.error is not None
    assert "1 are unaccounted for" in short.error
    assert short.counts["unaccounted"] == 1
    stored = h.store.get_contacts(PIPELINE, ["1"])["1"]
    h.double.faults.uncounted = 0
    h.sync()
    h.assert_exact()
    assert h.store.get_contacts(PIPELINE, ["1"])["1"].hash != stored.hash


def test_a_job_holding_no_lease_is_never_told_its_lease_expired(h: PeopleHarness) -> None:
    """Outside a run (a plan takes no lease) the lease timer is not consulted: a plan that
    starts long after the job was made reads to the end."""
    h.lookback = "1d"  # the plan re-reads every row
    _seed(h)
    job = h.job(lease_ttl=0.05)
    time.sleep(0.1)
    job.check_stop()  # raises nothing
    plan = job.plan()
    assert plan.counts["unchanged"] == 6
