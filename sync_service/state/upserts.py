"""The upserts that write one row per key: the watermark, and rejections.

Both go through the dialect's ``INSERT ... ON CONFLICT DO UPDATE`` (SQLite and PostgreSQL), so a
concurrent writer of the same key cannot make them fail with a duplicate-key error.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sync_service.errors import StateError
from sync_service.models import Position, Rejection
from sync_service.state import codec, sql
from sync_service.state.tables import rejections as rejections_table
from sync_service.state.tables import watermarks


def write_watermark(conn: Connection, pipeline: str, position: Position | None) -> None:
    if position is None:
        conn.execute(sa.delete(watermarks).where(watermarks.c.pipeline == pipeline))
        return
    try:
        values = {"cursor_value": codec.encode(position.cursor),
                  "key_value": codec.encode(position.key), "updated_at": sql.now(conn)}
    except TypeError as exc:
        raise StateError(f"cannot store the watermark of pipeline {pipeline!r}: {exc}") from exc
    insert = sql.upsert(conn, watermarks).values(pipeline=pipeline, **values)
    conn.execute(
        insert.on_conflict_do_update(
            index_elements=[watermarks.c.pipeline],
            set_={name: insert.excluded[name] for name in values},
        )
    )


def rejections(
    conn: Connection, pipeline: str, run_id: int | None, found: Sequence[Rejection]
) -> None:
    now = sql.now(conn)
    # One row per key (the last wins): a statement may not update the same row twice.
    latest = {rejection.source_key: rejection for rejection in found}
    rows = [
        {"pipeline": pipeline, "source_key": r.source_key, "email": r.email,
         "kind": r.kind.value, "reason": r.reason, "run_id": run_id, "hash": r.hash,
         "first_seen": now, "last_seen": now, "attempts": 1}
        for r in latest.values()
    ]
    insert = sql.upsert(conn, rejections_table)
    excluded = insert.excluded
    statement = insert.on_conflict_do_update(
        index_elements=[rejections_table.c.pipeline, rejections_table.c.source_key],
        set_={
            "email": excluded.email, "kind": excluded.kind, "reason": excluded.reason,
            "run_id": excluded.run_id, "last_seen": excluded.last_seen, "hash": excluded.hash,
            "attempts": rejections_table.c.attempts + 1,
        },
    )
    for chunk in sql.chunked(rows, sql.INSERT_CHUNK):
        conn.execute(statement, list(chunk))
