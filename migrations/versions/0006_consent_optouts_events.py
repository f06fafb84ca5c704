"""Opt-outs, custom events and reconcile marks (consent branch).

Revision ID: 0006
Revises: 0002
Create Date: 2026-12-02

Three new tables, nothing changed in the old ones: ``consent_optouts`` (per key: opted out at the
source or unsubscribed in Mailtrap; pending until Mailtrap answered), ``consent_events`` (custom
events by source key, with their write-ahead status) and ``consent_marks`` (the events source's
watermark and the last reconcile).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "consent_optouts",
        sa.Column("pipeline", sa.String(200), nullable=False),
        sa.Column("source_key", sa.Text(), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("origin", sa.String(20), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("recorded_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("done_at", UTC_TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("pipeline", "source_key", name=op.f("pk_consent_optouts")),
    )
    op.create_index(op.f("ix_consent_optouts_pipeline_status"), "consent_optouts",
                    ["pipeline", "status"])
    op.create_table(
        "consent_events",
        sa.Column("pipeline", sa.String(200), nullable=False),
        sa.Column("source_key", sa.Text(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("params", sa.Text(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lost", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("queued_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("sent_at", UTC_TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("pipeline", "source_key", name=op.f("pk_consent_events")),
    )
    op.create_index(op.f("ix_consent_events_pipeline_status_seq"), "consent_events",
                    ["pipeline", "status", "seq"])
    op.create_table(
        "consent_marks",
        sa.Column("pipeline", sa.String(200), nullable=False),
        sa.Column("events_cursor", sa.Text(), nullable=True),
        sa.Column("events_key", sa.Text(), nullable=True),
        sa.Column("reconciled_at", UTC_TIMESTAMP, nullable=True),
        sa.Column("updated_at", UTC_TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("pipeline", name=op.f("pk_consent_marks")),
    )


def downgrade() -> None:
    op.drop_table("consent_marks")
    op.drop_index(op.f("ix_consent_events_pipeline_status_seq"), table_name="consent_events")
    op.drop_table("consent_events")
    op.drop_index(op.f("ix_consent_optouts_pipeline_status"), table_name="consent_optouts")
    op.drop_table("consent_optouts")
