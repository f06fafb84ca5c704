"""Schema management: Alembic migrations match tables.py, and ensure_schema's decisions."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from sync_service.errors import StateError
from sync_service.models import Position
from sync_service.state import StateStore
from sync_service.state.schema import migrations_dir
from sync_service.state.tables import metadata

STATE_TABLES = set(metadata.tables)
HEAD = StateStore(sa.create_engine("sqlite://")).head_revision()  # the newest shipped migration

EXTRA_REVISION = '''"""A later revision, for tests of a database that is behind."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0099"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("extra", sa.Column("id", sa.Integer(), primary_key=True))


def downgrade() -> None:
    op.drop_table("extra")
'''


def _tables(store: StateStore) -> set[str]:
    return set(sa.inspect(store.engine).get_table_names())


@pytest.fixture
def newer_migrations(tmp_path: Path) -> Path:
    """A copy of the migrations with one more revision (0099) on top of head."""
    target = tmp_path / "migrations"
    shutil.copytree(migrations_dir(), target, ignore=shutil.ignore_patterns("__pycache__"))
    (target / "versions" / "0099_extra.py").write_text(EXTRA_REVISION.replace("{head}", HEAD))
    return target


def test_upgrade_creates_every_table_on_an_empty_database(new_store: StateStore) -> None:
    """upgrade() on an empty database creates all tables and records the head revision."""
    new_store.upgrade()
    assert _tables(new_store) == STATE_TABLES | {"alembic_version"}
    assert new_store.schema_revision() == new_store.head_revision() == HEAD


def test_migrated_database_has_no_drift_from_tables_py(store: StateStore) -> None:
    """Autogenerate finds no difference between the migrated database and tables.metadata."""
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_downgrade_to_base_drops_everything_and_upgrade_recreates_it(store: StateStore) -> None:
    """Downgrading to base removes every state table; upgrading again restores them."""
    store.downgrade("base")
    assert _tables(store) & STATE_TABLES == set()
    assert store.schema_revision() is None
    store.upgrade()
    assert _tables(store) >= STATE_TABLES


def test_ensure_schema_sets_up_a_new_database(new_store: StateStore) -> None:
    """ensure_schema() on an empty database migrates it to head."""
    new_store.ensure_schema()
    assert new_store.schema_revision() == HEAD
    assert _tables(new_store) >= STATE_TABLES


def test_ensure_schema_leaves_a_current_database_alone(store: StateStore) -> None:
    """ensure_schema() at head changes nothing: stored state survives it."""
    store.set_watermark("p", Position(1, 2))
    store.ensure_schema()
    assert store.get_watermark("p") is not None
    assert store.schema_revision() == HEAD


def test_ensure_schema_refuses_a_database_behind_this_version(
    store: StateStore, store_url: str, newer_migrations: Path
) -> None:
    """A database behind the code's head is refused with the `db upgrade` hint, not migrated."""
    newer = StateStore.from_url(store_url, migrations_dir=newer_migrations)
    try:
        with pytest.raises(StateError, match=rf"is at {HEAD}, this version needs 0099: run "
                                              r"`mailtrap-sync db upgrade`"):
            newer.ensure_schema()
        assert "extra" not in _tables(newer)
        newer.upgrade()
        newer.ensure_schema()
        assert "extra" in _tables(newer)
    finally:
        newer.close()


def test_ensure_schema_refuses_a_database_ahead_of_this_version(
    store: StateStore, store_url: str, newer_migrations: Path
) -> None:
    """A database migrated by a newer version (unknown revision) is refused, not touched."""
    newer = StateStore.from_url(store_url, migrations_dir=newer_migrations)
    try:
        newer.upgrade()
    finally:
        newer.close()
    with pytest.raises(StateError, match="0099, which this version of mailtrap-sync does not"):
        store.ensure_schema()


def test_ensure_schema_refuses_state_tables_without_a_revision(new_store: StateStore) -> None:
    """State tables with no alembic_version (made by hand) are refused with their names."""
    metadata.tables["leases"].create(new_store.engine)
    with pytest.raises(StateError, match=r"has tables \(leases\) but no Alembic revision"):
        new_store.ensure_schema()


def test_ensure_schema_ignores_unrelated_tables(new_store: StateStore) -> None:
    """Another application's tables in the same database do not stop a new schema."""
    with new_store.engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE someone_elses (id INTEGER PRIMARY KEY)"))
    new_store.ensure_schema()
    assert _tables(new_store) >= STATE_TABLES


def test_state_calls_on_a_database_without_schema_raise_state_error(
    new_store: StateStore,
) -> None:
    """Before any migration, reads fail as StateError (the plan command relies on this)."""
    with pytest.raises(StateError, match="state store pipelines failed"):
        new_store.pipelines()
