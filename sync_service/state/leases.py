"""Pipeline leases: one holder per pipeline at a time, even across replicas (invariant 7).

Taking a lease is one statement, ``INSERT ... ON CONFLICT (pipeline) DO UPDATE ... WHERE <free>
RETURNING``. PostgreSQL evaluates the WHERE against the latest committed row, after waiting for
any concurrent writer of that row, so of several racing callers exactly one sees its row come
back; SQLite serialises writers outright. Times come from ``sql.now`` (the database's clock on
PostgreSQL), so replicas whose clocks drift still agree on expiry.

**Fencing.** Every acquisition bumps the lease's ``generation``. A run keeps the generation it
got, and every state-store write of the run checks, in its own transaction, that the lease row
still names it with that generation (``check_fence``; on PostgreSQL the row is read ``FOR SHARE``,
so a takeover waits for the write to commit, and the write sees a takeover that committed
first). A run that lost its lease can therefore commit nothing.

**Dead holders.** Expiry (``lease_ttl``) is the last resort. While it holds a lease, a holder
also holds a ``HolderLock`` that the operating system or the database releases the moment the
holder's process dies: an advisory lock on a dedicated PostgreSQL session (the server drops it
when the connection closes, which the kernel does at once for a killed process), or an ``flock``
on a file next to a SQLite database. A newcomer that gets the HolderLock knows the previous
holder is dead and takes the lease over at once, whatever its expiry; one that cannot get it
leaves a live holder alone until its lease expires.

A holder keeps its lease while the row still names it: renewing after the expiry time is
allowed as long as nobody took the lease meanwhile, because taking it would have changed the
generation and releasing it deletes the row.
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sync_service.errors import LeaseLost
from sync_service.state import sql
from sync_service.state.tables import leases

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX: expiry alone frees a dead holder's lease
    fcntl = None  # type: ignore[assignment]


def acquire(conn: Connection, pipeline: str, owner: str, ttl_seconds: float, *,
            force: bool = False) -> int | None:
    """Take the lease if free, expired, this owner's, or ``force``; its new generation or None."""
    now = sql.now(conn)
    insert = sql.upsert(conn, leases).values(
        pipeline=pipeline, owner=owner, acquired_at=now, expires_at=_expiry(now, ttl_seconds),
        generation=1,
    )
    excluded = insert.excluded
    free = sa.or_(leases.c.owner == excluded.owner, leases.c.expires_at <= now)
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
            "generation": leases.c.generation + 1,
        },
        where=sa.true() if force else free,
    ).returning(leases.c.generation)
    generation = conn.execute(taken).scalar()
    return None if generation is None else int(generation)


def renew(conn: Connection, pipeline: str, owner: str, ttl_seconds: float,
          generation: int | None = None) -> bool:
    now = sql.now(conn)
    where = [leases.c.pipeline == pipeline, leases.c.owner == owner]
    if generation is not None:
        where.append(leases.c.generation == generation)
    result = conn.execute(
        sa.update(leases).where(*where).values(expires_at=_expiry(now, ttl_seconds))
    )
    return result.rowcount == 1


def release(conn: Connection, pipeline: str, owner: str) -> None:
    conn.execute(sa.delete(leases).where(leases.c.pipeline == pipeline, leases.c.owner == owner))


def holder(conn: Connection, pipeline: str) -> tuple[str, datetime] | None:
    row = conn.execute(
        sa.select(leases.c.owner, leases.c.expires_at).where(leases.c.pipeline == pipeline)
    ).first()
    return None if row is None else (row.owner, row.expires_at)


def check_fence(conn: Connection, pipeline: str, owner: str, generation: int) -> None:
    """Raise LeaseLost unless ``owner`` still holds the lease at ``generation`` (see above)."""
    query = sa.select(leases.c.owner, leases.c.generation).where(leases.c.pipeline == pipeline)
    row = conn.execute(query.with_for_update(read=True)).first()
    if row is None or row.owner != owner or row.generation != generation:
        who = "nobody" if row is None else f"{row.owner} (generation {row.generation})"
        raise LeaseLost(f"the lease of pipeline {pipeline!r} is no longer held by this run "
                        f"(generation {generation}); it is held by {who}: nothing more is "
                        "written")


def _expiry(now: datetime, ttl_seconds: float) -> datetime:
    if ttl_seconds < 0:
        raise ValueError(f"lease ttl must not be negative, got {ttl_seconds}")
    return now + timedelta(seconds=ttl_seconds)


class HolderLock:
    """A lock that lives exactly as long as the holding process (see the module docstring)."""

    def __init__(self, engine: Engine, pipeline: str) -> None:
        self.engine, self.pipeline = engine, pipeline
        digest = hashlib.blake2b(f"mailtrap-sync:{pipeline}".encode(), digest_size=8).digest()
        self._key = int.from_bytes(digest, "big", signed=True)
        self._conn: Any = None
        self._file: IO[bytes] | None = None

    def try_acquire(self) -> bool:
        """True when this process now holds the lock (so no live process holds the lease)."""
        if self.engine.dialect.name == "postgresql":
            return self._try_postgres()
        return self._try_file()

    def release(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
                conn.commit()
            except sa.exc.SQLAlchemyError:
                conn.invalidate()  # the session (and its lock) goes with the connection
            finally:
                conn.close()
        if self._file is not None:
            file, self._file = self._file, None
            file.close()  # closing the descriptor drops the flock

    def _try_postgres(self) -> bool:
        conn = self.engine.connect()
        try:
            got = bool(conn.execute(sa.text("SELECT pg_try_advisory_lock(:key)"),
                                    {"key": self._key}).scalar())
            conn.commit()
        except sa.exc.SQLAlchemyError:
            conn.close()
            return False
        if not got:
            conn.close()
            return False
        self._conn = conn
        return True

    def _try_file(self) -> bool:
        database = self.engine.url.database
        if fcntl is None or not database or database == ":memory:":
            return False
        name = hashlib.blake2b(self.pipeline.encode(), digest_size=6).hexdigest()
        path = Path(f"{database}.lease-{name}.lock")
        try:
            file = open(path, "ab")  # noqa: SIM115 - held open for as long as the lease
        except OSError:
            return False
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            file.close()
            return False
        os.set_inheritable(file.fileno(), False)
        self._file = file
        return True
