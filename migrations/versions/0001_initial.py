"""Initial state store schema: watermarks, contacts, runs, batches, rejections, leases.

Revision ID: 0001
Revises:
Create Date: 2026-11-29

A frozen snapshot: later changes go in new revisions, never here. Timestamps are
``DateTime(timezone=True)`` (``timestamptz`` on PostgreSQL); the application stores UTC.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "watermarks",
        sa.Column("pipeline", sa.String(200), nullable=False),
        sa.Column("cursor_value", sa.Text(), nullable=False),
        sa.Column("key_value", sa.Text(), nullable=False),
        sa.Column("updated_at", UTC_TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("pipeline", name=op.f("pk_watermarks")),
    )
    op.create_table(
        "contacts",
        sa.Column("pipeline", sa.String(200), nullable=False),
        sa.Column("source_key", sa.Text(), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("hash", sa.String(128), nullable=False),
        sa.Column("updated_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("import_id", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("pipeline", "source_key", name=op.f("pk_contacts")),
    )
    op.create_index(op.f("ix_contacts_pipeline_email"), "contacts", ["pipeline", "email"])
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("pipeline", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("started_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("finished_at", UTC_TIMESTAMP, nullable=True),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("counts", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
    )
    op.create_index(op.f("ix_runs_pipeline_id"), "runs", ["pipeline", "id"])
    _create_batches()
    _create_rejections()
    op.create_table(
        "leases",
        sa.Column("pipeline", sa.String(200), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("acquired_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("expires_at", UTC_TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("pipeline", name=op.f("pk_leases")),
    )


def _create_batches() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("pipeline", sa.String(200), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("import_id", sa.BigInteger(), nullable=True),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("created_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("posted_at", UTC_TIMESTAMP, nullable=True),
        sa.Column("finished_at", UTC_TIMESTAMP, nullable=True),
        sa.Column("created_count", sa.Integer(), nullable=True),
        sa.Column("updated_count", sa.Integer(), nullable=True),
        sa.Column("over_limit_count", sa.Integer(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_batches_run_id_runs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
    )
    op.create_index(op.f("ix_batches_pipeline_status"), "batches", ["pipeline", "status"])
    op.create_index(op.f("ix_batches_run_id"), "batches", ["run_id"])
    op.create_table(
        "batch_contacts",
        sa.Column("batch_id", sa.Integer(), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("source_key", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("hash", sa.String(128), nullable=True),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
            name=op.f("fk_batch_contacts_batch_id_batches"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("batch_id", "email", name=op.f("pk_batch_contacts")),
    )


def _create_rejections() -> None:
    op.create_table(
        "rejections",
        sa.Column("pipeline", sa.String(200), nullable=False),
        sa.Column("source_key", sa.Text(), nullable=False),
        sa.Column("email", sa.Text(), nullable=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("first_seen", UTC_TIMESTAMP, nullable=False),
        sa.Column("last_seen", UTC_TIMESTAMP, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_rejections_run_id_runs"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("pipeline", "source_key", name=op.f("pk_rejections")),
    )
    op.create_index(op.f("ix_rejections_run_id"), "rejections", ["run_id"])


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_index(op.f("ix_rejections_run_id"), table_name="rejections")
    op.drop_table("rejections")
    op.drop_table("batch_contacts")
    op.drop_index(op.f("ix_batches_run_id"), table_name="batches")
    op.drop_index(op.f("ix_batches_pipeline_status"), table_name="batches")
    op.drop_table("batches")
    op.drop_index(op.f("ix_runs_pipeline_id"), table_name="runs")
    op.drop_table("runs")
    op.drop_index(op.f("ix_contacts_pipeline_email"), table_name="contacts")
    op.drop_table("contacts")
    op.drop_table("watermarks")
