"""The SQL connector passes the connector contract suite on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from sync_service.connectors.sql import SqlConnector, SqlSourceSettings
from sync_service.testing.contract import ContractSource, KeyListingContract, Row

T0 = datetime(2024, 3, 1, 9, 0, 0)


class SqlSource(ContractSource):
    """A ``customers`` table; a deletion sets ``deleted_at`` and advances ``updated_at``."""

    several_emails = False  # one column holds one address
    bad_credentials_hint = "source.url: the database refused the credentials"

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = sa.create_engine(url)
        self.table = sa.Table(
            "customers", sa.MetaData(),
            sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
            sa.Column("email", sa.String(200), nullable=True),
            sa.Column("name", sa.String(200), nullable=False),
            sa.Column("updated_at", sa.DateTime(), nullable=False),
            sa.Column("deleted_at", sa.DateTime(), nullable=True),
        )
        self.table.create(self.engine)
        self.clock = 10_000

    def put(self, rows: Sequence[Row]) -> None:
        with self.engine.begin() as conn:
            for row in rows:
                values = {"email": row.emails[0] if row.emails else None, "name": row.name,
                          "updated_at": T0 + timedelta(seconds=row.tick), "deleted_at": None}
                found = conn.execute(sa.update(self.table)
                                     .where(self.table.c.id == int(row.key)).values(**values))
                if found.rowcount == 0:
                    conn.execute(sa.insert(self.table).values(id=int(row.key), **values))

    def delete(self, keys: Sequence[str]) -> None:
        self.clock += 1
        moment = T0 + timedelta(seconds=self.clock)
        with self.engine.begin() as conn:
            conn.execute(sa.update(self.table).where(self.table.c.id.in_([int(k) for k in keys]))
                         .values(deleted_at=moment, updated_at=moment))

    def connect(self, *, page_size: int, url: str | None = None) -> SqlConnector:
        return SqlConnector(SqlSourceSettings(
            connector="sql", url=url or self.url, table="customers", key="id",
            cursor="updated_at", deleted_column="deleted_at", lookback=0, fetch_size=page_size))

    def connect_with_bad_credentials(self) -> SqlConnector:
        """A user the server does not know (PostgreSQL), a wrong password (MariaDB), or a
        SQLite file that is not there."""
        url = make_url(self.url)
        if url.get_backend_name() == "postgresql":
            return self.connect(page_size=3, url=url.set(username="no_such_role_x")
                                .render_as_string(hide_password=False))
        if url.get_backend_name() in ("mysql", "mariadb"):
            return self.connect(page_size=3, url=url.set(password="wrong-password")
                                .render_as_string(hide_password=False))
        # SQLite has no credentials: a file that is not there is its "access refused".
        self.bad_credentials_hint = "SQLite source file .* does not exist"
        missing = url.set(database=f"{url.database}.missing.db")
        return self.connect(page_size=3, url=missing.render_as_string(hide_password=False))


class TestSqlConnectorContract(KeyListingContract):
    """The built-in SQL connector against the contract suite."""

    @pytest.fixture
    def source(self, any_db_url: str) -> Iterator[ContractSource]:
        found = SqlSource(any_db_url)
        yield found
        found.engine.dispose()
