"""The state store's schema, managed only by Alembic: upgrade, downgrade, and the start-up check.

Alembic is driven from code: the ``Config`` is built here with ``script_location`` pointing at
the installed ``sync_service.migrations`` package (found with ``importlib.resources``, never
through the working directory), and the caller's connection travels in
``config.attributes["connection"]``, so ``migrations/env.py`` runs inside the caller's transaction
and no ``alembic.ini`` is needed in the working directory.

Each call holds a lock for its whole transaction (an advisory lock on PostgreSQL, the write lock
on SQLite), so replicas starting together on a new database do not both create the tables.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection

from sync_service.errors import StateError
from sync_service.state import tables

UPGRADE_HINT = "run `mailtrap-sync db upgrade`"
# Any fixed 64-bit number; it only has to differ from other advisory locks on the same server.
_PG_SCHEMA_LOCK = 0x6D74_7379_6E63  # "mtsync"


MIGRATIONS_PACKAGE = "sync_service.migrations"


def migrations_dir() -> Path:
    """The directory of the installed ``sync_service.migrations`` package (env.py, versions/).

    Resolved through the import system from the package itself, so a ``migrations/`` folder in
    the working directory (or another distribution's top-level ``migrations``) cannot stand in.
    """
    try:
        folder = importlib.resources.files(MIGRATIONS_PACKAGE)
    except ModuleNotFoundError as exc:
        raise StateError(f"the `{MIGRATIONS_PACKAGE}` package is not installed") from exc
    if not isinstance(folder, Path) or not folder.joinpath("env.py").is_file():
        # Alembic reads its scripts from a real directory; a zipped install has none.
        raise StateError(f"the `{MIGRATIONS_PACKAGE}` package is not a directory: {folder}")
    return folder


def alembic_config(script_location: Path, connection: Connection | None = None) -> Config:
    """An Alembic Config built in code; env.py uses ``connection`` when one is given."""
    config = Config()
    # Config values go through configparser interpolation, where "%" is special.
    config.set_main_option("script_location", str(script_location).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def lock(conn: Connection) -> None:
    """Serialise schema work; released when the transaction ends."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_SCHEMA_LOCK)))


def current_revisions(conn: Connection) -> tuple[str, ...]:
    """The revisions recorded in the database's alembic_version table (empty if none)."""
    return tuple(sorted(MigrationContext.configure(conn).get_current_heads()))


def head_revisions(script_location: Path) -> tuple[str, ...]:
    """The revisions this version of the code needs."""
    script = ScriptDirectory.from_config(alembic_config(script_location))
    return tuple(sorted(script.get_heads()))


def upgrade(conn: Connection, script_location: Path, revision: str = "head") -> None:
    _run(lambda config: command.upgrade(config, revision), conn, script_location)


def downgrade(conn: Connection, script_location: Path, revision: str = "base") -> None:
    _run(lambda config: command.downgrade(config, revision), conn, script_location)


def ensure(conn: Connection, script_location: Path) -> None:
    """Upgrade a new database; accept one at head; refuse one behind, ahead or unknown."""
    lock(conn)
    current = current_revisions(conn)
    heads = head_revisions(script_location)
    if current == heads:
        return
    if not current:
        _refuse_unversioned_tables(conn)
        upgrade(conn, script_location)
        return
    shown_current, shown_heads = ", ".join(current), ", ".join(heads)
    script = ScriptDirectory.from_config(alembic_config(script_location))
    unknown = [rev for rev in current if not _known(script, rev)]
    if unknown:
        raise StateError(
            f"state store schema is at {shown_current}, which this version of mailtrap-sync does"
            f" not know (it needs {shown_heads}); was the database upgraded by a newer version?"
        )
    raise StateError(
        f"state store schema is at {shown_current}, this version needs {shown_heads}:"
        f" {UPGRADE_HINT}"
    )


def _known(script: ScriptDirectory, revision: str) -> bool:
    try:
        return script.get_revision(revision) is not None
    except CommandError:
        return False


def _refuse_unversioned_tables(conn: Connection) -> None:
    # Tables without an alembic_version row were not made by these migrations (or the version
    # was deleted): upgrading would fail half-way on "table exists", so say what is wrong instead.
    existing = set(sa.inspect(conn).get_table_names()) & set(tables.metadata.tables)
    if existing:
        raise StateError(
            "the state store has tables (" + ", ".join(sorted(existing)) + ") but no Alembic"
            " revision; it was not created by mailtrap-sync's migrations"
        )


def _run(action: Callable[[Config], None], conn: Connection, script_location: Path) -> None:
    lock(conn)
    config = alembic_config(script_location, conn)
    try:
        action(config)
    except CommandError as exc:
        raise StateError(f"state store migration failed: {exc}") from exc
