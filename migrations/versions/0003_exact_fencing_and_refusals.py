"""Lease generations (fencing tokens) and the hash Mailtrap refused.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

- ``leases.generation``: a number that grows each time the lease changes hands; every state-store
  write of a run checks it in its own transaction, so a run that lost its lease can no longer
  commit anything (invariant 7).
- ``rejections.hash``: for a contact Mailtrap refused (422), the hash of what was refused; the job
  does not post it again while the row still maps to that hash (invariant 8).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("leases") as batch:
        batch.add_column(sa.Column("generation", sa.BigInteger, nullable=False,
                                   server_default="0"))
    with op.batch_alter_table("rejections") as batch:
        batch.add_column(sa.Column("hash", sa.String(128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rejections") as batch:
        batch.drop_column("hash")
    with op.batch_alter_table("leases") as batch:
        batch.drop_column("generation")
