"""Typed custom fields: declared in the mapping, created in Mailtrap with their types, filled with
typed values; clashes and limits stop check and sync before anything is sent (issue 12)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from sync_service.__main__ import cli
from sync_service.job import SyncJob
from sync_service.mailtrap.client import MailtrapClient
from sync_service.models import RunOutcome
from sync_service.settings import AppSettings
from sync_service.state import StateStore
from sync_service.testing.mailtrap.double import DEFAULT_TOKEN, MailtrapDouble
from tests.support.openapi import ValidatingTransport

BASE_URL = "https://mailtrap.test"
TOKEN = "tok-audience-41d7e8"
T0 = datetime(2026, 3, 1, 12, 0, 0)
TYPED: dict[str, Any] = {
    "company": {"column": "company", "type": "text", "name": "Company"},
    "seats": {"column": "seats", "type": "integer", "name": "Seats"},
    "score": {"column": "score", "type": "float", "name": "Score"},
    "active": {"column": "active", "type": "boolean", "name": "Active"},
    "signed_up": {"column": "signed_up", "type": "date", "name": "Signed up"},
}
CONFIG = """
[state]
url = "{state}"

[mailtrap]
poll_interval = 0.05

[[pipelines]]
name = "people"
lists = ["People"]

[pipelines.source]
connector = "sql"
url = "{source}"
table = "people"
key = "id"
cursor = "updated_at"
lookback = 0

[pipelines.mapping]
email = "email"

[pipelines.mapping.fields]
company = "company"

[pipelines.mapping.fields.seats]
column = "seats"
type = "integer"
name = "Seats"

[pipelines.mapping.fields.signed_up]
column = "signed_up"
type = "date"
"""

_metadata = sa.MetaData()
people = sa.Table(
    "people", _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("email", sa.String(255)),
    sa.Column("company", sa.String(100)),
    sa.Column("seats", sa.String(20)),  # text, so a row can hold a value that is no integer
    sa.Column("score", sa.Float),
    sa.Column("active", sa.Boolean),
    sa.Column("signed_up", sa.Date),
    sa.Column("updated_at", sa.DateTime),
)


def _people(url: str, rows: int = 5, **override: Any) -> None:
    engine = sa.create_engine(url)
    _metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(people.insert(), [
            {"id": i, "email": f"p{i}@example.com", "company": f"Co {i}", "seats": str(i * 10),
             "score": i + 0.5, "active": i % 2 == 0, "signed_up": date(2025, 1, i),
             "updated_at": T0, **override.get(str(i), {})}
            for i in range(1, rows + 1)])
    engine.dispose()


def _settings(tmp_path: Path, fields: dict[str, Any]) -> AppSettings:
    return AppSettings(
        state={"url": f"sqlite:///{tmp_path}/state.db"},
        mailtrap={"api_url": BASE_URL, "poll_interval": 0.01, "poll_max_interval": 0.05},
        pipelines=[{
            "name": "people", "lists": ["People"],
            "source": {"connector": "sql", "url": f"sqlite:///{tmp_path}/crm.db",
                       "table": "people", "key": "id", "cursor": "updated_at", "lookback": 0},
            "mapping": {"email": "email", "fields": fields},
        }],
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    found = StateStore.from_url(f"sqlite:///{tmp_path}/state.db")
    found.ensure_schema()
    yield found
    found.close()


def _job(settings: AppSettings, store: StateStore, transport: ValidatingTransport) -> SyncJob:
    client = MailtrapClient(token=DEFAULT_TOKEN, base_url=BASE_URL, transport=transport,
                            retry_initial=0.01, retry_max=0.1, max_retries=3)
    return SyncJob(settings=settings, pipeline=settings.pipelines[0], store=store,
                   client=client)


def test_a_field_of_each_type_is_created_and_filled_with_typed_values(
        tmp_path: Path, double: MailtrapDouble, mailtrap_transport: ValidatingTransport,
        store: StateStore) -> None:
    """The first sync creates every declared field with its type and name, then sends values
    of that type (requests validated against the spec)."""
    _people(f"sqlite:///{tmp_path}/crm.db")
    result = _job(_settings(tmp_path, TYPED), store, mailtrap_transport).run()
    assert result.outcome is RunOutcome.SUCCEEDED, result.error
    created = {tag: (f.name, f.data_type) for tag, f in double.fields().items()}
    assert created == {"company": ("Company", "text"), "seats": ("Seats", "integer"),
                       "score": ("Score", "float"), "active": ("Active", "boolean"),
                       "signed_up": ("Signed up", "date")}
    contact = double.contacts()["p2@example.com"]
    assert dict(contact.fields) == {"company": "Co 2", "seats": 20, "score": 2.5,
                                    "active": True, "signed_up": "2025-01-02"}
    assert len(double.contacts()) == 5


def test_an_uncoercible_value_rejects_only_its_contact(
        tmp_path: Path, double: MailtrapDouble, mailtrap_transport: ValidatingTransport,
        store: StateStore) -> None:
    """A row whose value cannot become the field's type is rejected with the field named; the
    other rows are sent."""
    _people(f"sqlite:///{tmp_path}/crm.db", **{"3": {"seats": "three"}})
    result = _job(_settings(tmp_path, TYPED), store, mailtrap_transport).run()
    assert result.outcome is RunOutcome.SUCCEEDED, result.error
    assert sorted(double.contacts()) == [f"p{i}@example.com" for i in (1, 2, 4, 5)]
    (rejection,) = store.list_rejections("people")
    assert rejection.source_key == "3"
    assert "field seats" in rejection.reason
    assert "'three'" in rejection.reason


def test_a_field_existing_with_another_type_stops_the_sync(
        tmp_path: Path, double: MailtrapDouble, mailtrap_transport: ValidatingTransport,
        store: StateStore) -> None:
    """An existing field whose type differs from the declared one fails the run as a
    configuration error naming it; nothing is created or sent."""
    _people(f"sqlite:///{tmp_path}/crm.db")
    double.add_field("seats", "text")
    result = _job(_settings(tmp_path, TYPED), store, mailtrap_transport).run()
    assert result.outcome is RunOutcome.FAILED
    assert result.config_error
    assert result.error is not None
    assert "field seats exists in Mailtrap as text, the mapping declares integer" in result.error
    assert set(double.fields()) == {"seats"}
    assert double.contacts() == {}
    assert double.lists() == {}


def test_the_account_field_limit_is_checked_before_anything_is_created(
        tmp_path: Path, double: MailtrapDouble, mailtrap_transport: ValidatingTransport,
        store: StateStore) -> None:
    """With 38 fields in the account, declaring 5 new ones is refused naming the limit of 40,
    and no field is created."""
    _people(f"sqlite:///{tmp_path}/crm.db")
    for index in range(38):
        double.add_field(f"other_{index}", "text")
    result = _job(_settings(tmp_path, TYPED), store, mailtrap_transport).run()
    assert result.outcome is RunOutcome.FAILED
    assert result.config_error
    assert result.error is not None
    assert "limit of 40 custom fields" in result.error
    assert len(double.fields()) == 38


def test_field_names_and_merge_tags_over_50_characters_are_refused() -> None:
    """A merge tag or display name longer than Mailtrap's 50 characters is a configuration
    error naming it, before anything is sent."""
    base: dict[str, Any] = {"name": "p", "source": {"connector": "sql", "url": "sqlite://",
                                                     "table": "t", "key": "id",
                                                     "cursor": "updated_at"}}
    with pytest.raises(ValueError, match="must be 1-50 letters"):
        AppSettings(pipelines=[{**base, "mapping": {"fields": {"x" * 51: "c"}}}])
    with pytest.raises(ValueError, match="at most 50 characters"):
        AppSettings(pipelines=[{**base, "mapping": {"fields": {
            "x": {"column": "c", "type": "text", "name": "n" * 51}}}}])


# through the command line ------------------------------------------------------------------
@pytest.fixture
def config(tmp_path: Path, double: MailtrapDouble, mailtrap_server: str,
           monkeypatch: pytest.MonkeyPatch) -> Path:
    """The CONFIG pipeline against the served double; `company` exists as text."""
    double.grant(TOKEN, 1001)
    double.add_field("company", "text")
    monkeypatch.setenv("MAILTRAP_API_URL", mailtrap_server)
    monkeypatch.setenv("MAILTRAP_API_TOKEN", TOKEN)
    for name in ("MAILTRAP_ACCOUNT_ID", "MAILTRAP_SYNC_STATE_URL", "MAILTRAP_SYNC_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    _people(f"sqlite:///{tmp_path}/crm.db")
    path = tmp_path / "mailtrap-sync.toml"
    path.write_text(CONFIG.format(state=f"sqlite:///{tmp_path}/state.db",
                                  source=f"sqlite:///{tmp_path}/crm.db"))
    return path


def _cli(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_plan_and_check_list_the_fields_to_create_and_create_none(
        config: Path, double: MailtrapDouble) -> None:
    """`plan` and `check` name the declared fields that are missing, with their types, and
    create nothing."""
    plan = _cli("--config", str(config), "plan", "people", "--json")
    assert plan.exit_code == 0, plan.output
    assert orjson.loads(plan.stdout)["fields_to_create"] == ["seats (integer)",
                                                             "signed_up (date)"]
    check = _cli("--config", str(config), "check")
    assert check.exit_code == 0, check.output
    assert "fields to create on first run: seats (integer), signed_up (date)" in check.output
    assert set(double.fields()) == {"company"}
    assert double.lists() == {}


def test_check_fix_creates_the_missing_fields_and_lists(
        config: Path, double: MailtrapDouble) -> None:
    """`check --fix` creates the declared fields (name defaults to the merge tag) and the
    lists; a second `check` has nothing left to create."""
    fixed = _cli("--config", str(config), "check", "--fix")
    assert fixed.exit_code == 0, fixed.output
    assert {t: (f.name, f.data_type) for t, f in double.fields().items()} == {
        "company": ("company", "text"), "seats": ("Seats", "integer"),
        "signed_up": ("signed_up", "date")}
    assert list(double.lists().values()) == ["People"]
    again = _cli("--config", str(config), "check")
    assert again.exit_code == 0
    assert "to create" not in again.output


def test_check_and_sync_exit_2_on_a_field_of_another_type(
        config: Path, double: MailtrapDouble) -> None:
    """A declared field existing with another type stops `check` and `sync` with exit 2 and a
    message naming the field and both types."""
    double.add_field("seats", "float")
    check = _cli("--config", str(config), "check", "--fix")
    assert check.exit_code == 2, check.output
    assert "field seats exists in Mailtrap as float, the mapping declares integer" \
        in check.output
    sync = _cli("--config", str(config), "sync")
    assert sync.exit_code == 2, sync.output
    assert "field seats exists in Mailtrap as float" in sync.output
    assert double.contacts() == {}
    assert set(double.fields()) == {"company", "seats"}
