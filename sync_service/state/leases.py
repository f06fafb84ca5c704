"""Pipeline leases: one holder per pipeline at a time, even across replicas (invariant 7).

Taking a lease is one statement, ``INSERT ... ON CONFLICT (pipeline) DO UPDATE ... WHERE <free>
RETURNING``. PostgreSQL evaluates the WHERE against the latest committed row, after waiting for
any concurrent writer of that row, so of several racing callers exactly one sees its row come
back; SQLite serialises writers outright. Times come from ``sql.now`` (the database's clock on
PostgreSQL), so replicas whose clocks drift still agree on expiry.

A holder keeps its lease while the row still names it: renewing after the expiry time is
allowed as long as nobody took the lease meanwhile, because taking it would have changed the
owner and releasing it deletes the row.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sync_service.state import sql
from sync_service.state.tables import leases


def acquire(conn: Connection, pipeline: str, owner: str, ttl_seconds: float) -> bool:
    now = sql.now(conn)
    insert = sql.upsert(conn, leases).values(
        pipeline=pipeline, owner=owner, acquired_at=now, expires_at=_expiry(now, ttl_seconds)
    )
    excluded = insert.excluded
    taken = insert.on_conflict_do_update(
        index_elements=[leases.c.pipeline],
        set_={
            "owner": excluded.owner,
            # A holder re-taking its own lease keeps its original acquisition time.
            "acquired_at": sa.case(
                (leases.c.owner == excluded.owner, leases.c.acquired_at),
                else_=excluded.acquired_at,
            ),
            "expires_at": excluded.expires_at,
        },
        where=sa.or_(leases.c.owner == excluded.owner, leases.c.expires_at <= now),
    ).returning(leases.c.owner)
    return conn.execute(taken).first() is not None


def renew(conn: Connection, pipeline: str, owner: str, ttl_seconds: float) -> bool:
    now = sql.now(conn)
    result = conn.execute(
        sa.update(leases)
        .where(leases.c.pipeline == pipeline, leases.c.owner == owner)
        .values(expires_at=_expiry(now, ttl_seconds))
    )
    return result.rowcount == 1


def release(conn: Connection, pipeline: str, owner: str) -> None:
    conn.execute(sa.delete(leases).where(leases.c.pipeline == pipeline, leases.c.owner == owner))


def holder(conn: Connection, pipeline: str) -> tuple[str, datetime] | None:
    row = conn.execute(
        sa.select(leases.c.owner, leases.c.expires_at).where(leases.c.pipeline == pipeline)
    ).first()
    return None if row is None else (row.owner, row.expires_at)


def _expiry(now: datetime, ttl_seconds: float) -> datetime:
    if ttl_seconds < 0:
        raise ValueError(f"lease ttl must not be negative, got {ttl_seconds}")
    return now + timedelta(seconds=ttl_seconds)
