"""Alembic environment for the state store.

Two ways in:

- From the application (``StateStore.upgrade()`` / ``ensure_schema()``): the caller puts an open
  connection, already inside a transaction, in ``config.attributes["connection"]``. Migrations
  run in that transaction and the caller commits, so an upgrade is all or nothing (SQLite and
  PostgreSQL both have transactional DDL).
- From the ``alembic`` command line (developers; see ``alembic.ini``): the URL comes from
  ``-x url=...``, else ``sqlalchemy.url`` in the ini file, and the engine is built by the same
  code as the application's, so SQLite gets the same pragmas.
"""

from __future__ import annotations

from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy.engine import Connection

from sync_service.state.engine import DEFAULT_URL, create_state_engine
from sync_service.state.tables import UtcDateTime, metadata

config = context.config

# Only the command line configures logging from the ini file; inside the application, fileConfig
# would replace the application's logging set-up.
if config.config_file_name is not None and config.attributes.get("connection") is None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    # Revisions are frozen snapshots: spell the storage type, not the application's decorator.
    if type_ == "type" and isinstance(obj, UtcDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_item=_render_item,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        transactional_ddl=True,
        compare_type=True,
    )


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url")
    return url or config.get_main_option("sqlalchemy.url") or DEFAULT_URL


def run_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=metadata,
        render_item=_render_item,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_state_engine(_url())
    try:
        with engine.begin() as conn:
            _configure(conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
