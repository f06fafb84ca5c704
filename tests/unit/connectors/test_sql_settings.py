"""The SQL connector's settings: what a `[pipelines.source]` table may say, and its errors."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from sync_service.connector import Connector, load_connector
from sync_service.connectors.sql import SqlConnector
from sync_service.connectors.sql_settings import SqlSourceSettings, parse_lookback

URL = "postgresql+psycopg://crm:hunter2-secret@db/crm"


def _settings(**overrides: Any) -> SqlSourceSettings:
    raw: dict[str, Any] = {"connector": "sql", "url": URL, "table": "customers", "key": "id",
                           "cursor": "updated_at"}
    raw.update(overrides)
    return SqlSourceSettings.model_validate({k: v for k, v in raw.items() if v is not None})


def _error(**overrides: Any) -> str:
    with pytest.raises(ValidationError) as info:
        _settings(**overrides)
    return str(info.value)


def test_minimal_table_settings_take_the_documented_defaults() -> None:
    """A table, key and cursor suffice; columns all, no deletes, automatic lookback, 5000 a page."""
    settings = _settings()
    assert settings.columns is None
    assert settings.deleted_column is None
    assert settings.lookback is None
    assert settings.fetch_size == 5000
    assert settings.db_schema is None


def test_schema_is_spelled_schema_in_toml() -> None:
    """The TOML key is `schema` (the attribute is db_schema, as BaseModel owns `schema`)."""
    assert _settings(schema="crm").db_schema == "crm"


@pytest.mark.parametrize(("table", "query"), [(None, None), ("customers", "SELECT 1")])
def test_exactly_one_of_table_or_query(table: str | None, query: str | None) -> None:
    """Neither or both of `table` and `query` is refused with one clear sentence."""
    message = _error(table=table, query=query)
    assert "set exactly one of `table` or `query`" in message


def test_schema_with_query_is_refused() -> None:
    """`schema` qualifies `table` only; with `query` it would silently do nothing."""
    assert "`schema` applies to `table` only" in _error(table=None, query="SELECT 1", schema="x")


def test_query_loses_its_trailing_semicolon() -> None:
    """A trailing `;` would end the statement inside the subquery the query is wrapped in."""
    assert _settings(table=None, query=" SELECT * FROM t ;\n").query == "SELECT * FROM t"


def test_unknown_keys_are_refused() -> None:
    """Extra keys are typos: refused, not ignored (inherited from ConnectorSettings)."""
    assert "cursour" in _error(cursour="x")


def test_fetch_size_must_be_at_least_one() -> None:
    """fetch_size 0 would never read a row; the message says the bound."""
    assert "greater than or equal to 1" in _error(fetch_size=0)


def test_url_must_parse_as_a_sqlalchemy_url() -> None:
    """A URL SQLAlchemy cannot parse is refused before any connection."""
    assert "is not a SQLAlchemy URL" in _error(url="not a url")


def test_url_and_its_password_stay_out_of_repr() -> None:
    """The settings' repr (which ends up in logs and tracebacks) leaves the URL out."""
    assert "hunter2-secret" not in repr(_settings())


def test_empty_columns_list_is_refused() -> None:
    """`columns = []` is a mistake: reading no columns at all cannot be meant."""
    assert "at least one column" in _error(columns=[])


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("1h", timedelta(hours=1)),
        ("1d", timedelta(days=1)),
        ("1.5h", timedelta(minutes=90)),
        (" 2 M ", timedelta(minutes=2)),
        ("300", 300),
        ("0", 0),
        ("0s", timedelta(0)),
        (300, 300),
        (2.5, 2.5),
        (timedelta(minutes=1), timedelta(minutes=1)),
        (None, None),
    ],
)
def test_lookback_accepts_durations_and_plain_numbers(given: Any, expected: Any) -> None:
    """Durations with s/m/h/d become timedeltas; plain numbers stay numbers (unit decided later)."""
    assert parse_lookback(given) == expected
    assert type(parse_lookback(given)) is type(expected)


@pytest.mark.parametrize("given", ["5 minutes", "5w", "-5m", "m", "", -1, True, [5]])
def test_bad_lookback_is_refused_with_the_accepted_forms(given: Any) -> None:
    """A lookback that is not a duration or a non-negative number names what would be accepted."""
    message = _error(lookback=given)
    assert "lookback must be a duration such as '30s', '5m', '1h' or '1d'" in message


def test_sql_connector_is_registered_and_satisfies_the_protocol() -> None:
    """The `sql` entry point loads SqlConnector, whose instances are Connectors."""
    factory = load_connector("sql")
    assert factory is SqlConnector
    assert factory.settings_model is SqlSourceSettings
    connector = SqlConnector(_settings(url="sqlite://"))
    try:
        assert isinstance(connector, Connector)
    finally:
        connector.close()
