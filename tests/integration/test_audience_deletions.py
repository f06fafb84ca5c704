"""Hard deletes found by the key scan, handled by each ``on_delete`` policy, and the
mass-delete brake (issue 12)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from sync_service.__main__ import cli
from sync_service.job import RunResult, SyncJob
from sync_service.models import RunKind, RunOutcome
from sync_service.testing.mailtrap.double import MailtrapDouble
from tests.support.harness import FIELDS, T0, Harness, Source, customers
from tests.support.openapi import ValidatingTransport

TOKEN = "tok-audience-del-7c2e"


@pytest.fixture
def h(sqlite_url: str, double: MailtrapDouble,
      mailtrap_transport: ValidatingTransport) -> Iterator[Harness]:
    """100 source rows synced once into the list "Customers" (requests validated)."""
    harness = Harness(double, mailtrap_transport, Source(sqlite_url),
                      sqlite_url.replace(".db", "-state.db"))
    harness.source.insert(range(1, 101))
    assert harness.run().outcome is RunOutcome.SUCCEEDED
    yield harness
    harness.close()


def _run(h: Harness, kind: RunKind = RunKind.SYNC, *, allow: bool = False,
         **pipeline: Any) -> RunResult:
    settings = h.settings()
    chosen = settings.pipelines[0].model_copy(update={"delete_scan_every": 1, **pipeline})
    job = SyncJob(settings=settings, pipeline=chosen, store=h.store, client=h.client())
    return job.run(kind, allow_mass_delete=allow)


def _delete_rows(source: Source, ids: range) -> None:
    with source.engine.begin() as conn:
        conn.execute(sa.delete(customers).where(customers.c.id.in_(list(ids))))


def _listed(double: MailtrapDouble) -> set[str]:
    (list_id,) = double.lists()
    return {e for e, c in double.contacts().items() if list_id in c.list_ids}


GONE = {f"user{i}@example.com" for i in range(1, 11)}
ALL = {f"user{i}@example.com" for i in range(1, 101)}


def test_remove_from_lists_unlists_the_contacts_of_hard_deleted_rows(
        h: Harness, double: MailtrapDouble) -> None:
    """10 rows deleted at the source are found by the key scan; their contacts leave the
    pipeline's list and stay in Mailtrap; a second run sends nothing."""
    _delete_rows(h.source, range(1, 11))
    result = _run(h)
    assert result.outcome is RunOutcome.SUCCEEDED, result.error
    assert result.counts["key_scans"] == 1
    assert _listed(double) == ALL - GONE
    assert set(double.contacts()) == ALL
    imports = len(double.imports())
    assert _run(h).outcome is RunOutcome.SUCCEEDED
    assert len(double.imports()) == imports


def test_delete_removes_the_contacts_of_hard_deleted_rows(
        h: Harness, double: MailtrapDouble) -> None:
    """With on_delete = "delete" the 10 contacts are deleted in Mailtrap (DELETE, validated
    against the spec) and their keys forgotten; a row coming back is created again."""
    _delete_rows(h.source, range(1, 11))
    result = _run(h, on_delete="delete")
    assert result.outcome is RunOutcome.SUCCEEDED, result.error
    assert result.counts["contacts_deleted"] == 10
    assert set(double.contacts()) == ALL - GONE
    assert h.store.get_contacts("customers", ["1", "11"]).keys() == {"11"}
    h.source.insert([1], at=T0)
    assert _run(h, RunKind.BACKFILL, on_delete="delete").outcome is RunOutcome.SUCCEEDED
    assert "user1@example.com" in _listed(double)


def test_ignore_leaves_the_contacts_of_hard_deleted_rows_alone(
        h: Harness, double: MailtrapDouble) -> None:
    """With on_delete = "ignore" nothing is sent for the 10 deleted rows."""
    _delete_rows(h.source, range(1, 11))
    imports = len(double.imports())
    result = _run(h, on_delete="ignore")
    assert result.outcome is RunOutcome.SUCCEEDED, result.error
    assert result.counts["deletions_ignored"] == 10
    assert _listed(double) == ALL
    assert len(double.imports()) == imports


def test_the_key_scan_waits_for_delete_scan_every_runs(
        h: Harness, double: MailtrapDouble) -> None:
    """With delete_scan_every = 3 a sync does not scan until three runs went by without a
    scan; backfill always scans."""
    _delete_rows(h.source, range(1, 11))
    assert "key_scans" not in _run(h, delete_scan_every=3).counts  # runs 2 of 3
    assert _listed(double) == ALL
    assert _run(h, delete_scan_every=3).counts["key_scans"] == 1  # run 3
    assert _listed(double) == ALL - GONE
    _delete_rows(h.source, range(11, 13))
    assert _run(h, RunKind.BACKFILL, delete_scan_every=50).counts["key_scans"] == 1
    assert "user11@example.com" not in _listed(double)


@pytest.mark.parametrize("policy", ["remove_from_lists", "delete"])
def test_deleting_half_the_source_trips_the_brake(
        h: Harness, double: MailtrapDouble, policy: str) -> None:
    """50 % of the rows deleted: nothing is removed, the run's other changes are sent, the run
    fails naming the numbers and --allow-mass-delete; with the flag the deletions are applied."""
    _delete_rows(h.source, range(1, 51))
    h.source.update([99], at=T0.replace(hour=13), first_name="Changed")
    held = _run(h, on_delete=policy)
    assert held.outcome is RunOutcome.FAILED
    assert held.error is not None
    assert "50 of 100 tracked contacts (50%)" in held.error
    assert "--allow-mass-delete" in held.error
    assert held.counts["deletions_held"] == 50
    assert _listed(double) == ALL
    assert double.contacts()["user99@example.com"].fields["first_name"] == "Changed"
    assert _run(h, on_delete=policy).outcome is RunOutcome.FAILED  # still held

    applied = _run(h, on_delete=policy, allow=True)
    assert applied.outcome is RunOutcome.SUCCEEDED, applied.error
    assert _listed(double) == {f"user{i}@example.com" for i in range(51, 101)}


def test_max_delete_count_trips_the_brake_below_the_share(
        h: Harness, double: MailtrapDouble) -> None:
    """max_delete_count = 5 holds 10 deletions although they are only 10 %."""
    _delete_rows(h.source, range(1, 11))
    held = _run(h, max_delete_count=5)
    assert held.outcome is RunOutcome.FAILED
    assert held.error is not None
    assert "max_delete_count = 5" in held.error
    assert _listed(double) == ALL


# through the command line ------------------------------------------------------------------
CONFIG = """
[state]
url = "{state}"

[mailtrap]
poll_interval = 0.05

[[pipelines]]
name = "customers"
lists = ["Customers"]
delete_scan_every = 1

[pipelines.source]
connector = "sql"
url = "{source}"
table = "customers"
key = "id"
cursor = "updated_at"
lookback = 0

[pipelines.mapping]
email = "email"
"""


@pytest.fixture
def config(tmp_path: Path, double: MailtrapDouble, mailtrap_server: str,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Source]]:
    """100 rows and a pipeline scanning keys every run, against the served double."""
    double.grant(TOKEN, 1001)
    for tag, data_type in FIELDS.items():
        double.add_field(tag, data_type)
    monkeypatch.setenv("MAILTRAP_API_URL", mailtrap_server)
    monkeypatch.setenv("MAILTRAP_API_TOKEN", TOKEN)
    for name in ("MAILTRAP_ACCOUNT_ID", "MAILTRAP_SYNC_STATE_URL", "MAILTRAP_SYNC_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    source = Source(f"sqlite:///{tmp_path}/crm.db")
    source.insert(range(1, 101))
    path = tmp_path / "mailtrap-sync.toml"
    path.write_text(CONFIG.format(state=f"sqlite:///{tmp_path}/state.db",
                                  source=f"sqlite:///{tmp_path}/crm.db"))
    yield path, source
    source.close()


def _cli(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_an_empty_source_table_never_removes_anyone_without_the_flag(
        config: tuple[Path, Source], double: MailtrapDouble) -> None:
    """Every row deleted: `sync` and `backfill` exit 1 naming --allow-mass-delete and remove
    nobody; `plan` shows the count and that the brake would hold; `sync --allow-mass-delete`
    applies the deletions."""
    path, source = config
    assert _cli("--config", str(path), "sync").exit_code == 0
    with source.engine.begin() as conn:
        conn.execute(sa.delete(customers))
    for command in (["sync"], ["backfill", "customers"]):
        held = _cli("--config", str(path), *command)
        assert held.exit_code == 1, held.output
        assert "100 of 100 tracked contacts" in held.output
        assert "--allow-mass-delete" in held.output
        assert _listed(double) == ALL
    plan = _cli("--config", str(path), "plan", "customers", "--json")
    assert plan.exit_code == 0, plan.output
    report = orjson.loads(plan.stdout)
    assert (report["deletions"], report["brake_would_hold"]) == (100, True)
    applied = _cli("--config", str(path), "sync", "--allow-mass-delete")
    assert applied.exit_code == 0, applied.output
    assert _listed(double) == set()


def test_held_deletions_are_looked_for_again_on_the_next_sync(
        h: Harness, double: MailtrapDouble) -> None:
    """A backfill whose deletions the brake held makes the next sync scan again (although
    delete_scan_every is not due) and hold again, until the flag applies them."""
    _delete_rows(h.source, range(1, 41))
    assert _run(h, RunKind.BACKFILL, delete_scan_every=50).outcome is RunOutcome.FAILED
    again = _run(h, delete_scan_every=50)
    assert again.outcome is RunOutcome.FAILED
    assert again.counts["deletions_held"] == 40
    assert _listed(double) == ALL
    assert _run(h, delete_scan_every=50, allow=True).outcome is RunOutcome.SUCCEEDED
    assert _listed(double) == {f"user{i}@example.com" for i in range(41, 101)}
