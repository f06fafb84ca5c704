"""The re-read skip's tokens (issue 11).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

One new table, nothing changed in the old ones: ``reread_tokens`` holds, per source key, a digest
of the last row the sync mapped (cursor value, hash, pipeline fingerprint), so a row read again
unchanged is accepted before it is mapped (sync_service/reread.py). An upgraded store starts
with no tokens: the first sync after the upgrade maps every row it reads, as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reread_tokens",
        sa.Column("pipeline", sa.String(200), nullable=False),
        sa.Column("source_key", sa.Text(), nullable=False),
        sa.Column("token", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("pipeline", "source_key", name=op.f("pk_reread_tokens")),
    )


def downgrade() -> None:
    op.drop_table("reread_tokens")
