"""The state store's side of the re-read skip (``sync_service/reread.py`` says how it works).

``seen`` reads, for a chunk of keys, the stored token with the key's confirmed hash, address and
import id, leaving out keys that have a rejection on record; ``note`` writes tokens in one
statement per call (an upsert: a key gets its first token before its contact is confirmed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from sync_service.reread import Seen
from sync_service.state import sql
from sync_service.state.tables import contacts, rejections, reread_tokens

t = reread_tokens


def seen(conn: Connection, pipeline: str, keys: Sequence[str]) -> dict[str, Seen]:
    """Key → its token and confirmed contact, for keys with both and no rejection on record."""
    found: dict[str, Seen] = {}
    rejected = sa.exists().where(rejections.c.pipeline == pipeline,
                                 rejections.c.source_key == t.c.source_key)
    joined = t.join(contacts, sa.and_(contacts.c.pipeline == t.c.pipeline,
                                      contacts.c.source_key == t.c.source_key))
    for among in sql.matching(conn, t.c.source_key, list(dict.fromkeys(keys))):
        rows = conn.execute(
            sa.select(t.c.source_key, t.c.token, contacts.c.hash, contacts.c.email,
                      contacts.c.import_id)
            .select_from(joined)
            .where(t.c.pipeline == pipeline, among, ~rejected)
        )
        for key, token, hash_, email, import_id in rows.all():
            found[key] = Seen(token, hash_, email, import_id)
    return found


def note(conn: Connection, pipeline: str, tokens: Mapping[str, str]) -> None:
    """Store these keys' tokens (replacing older ones), in one statement: the rows come from
    two arrays (PostgreSQL) or one JSON object (SQLite) that the database unpacks.

    A first sync, and the sync after a bulk touch, write a token per row read: as an
    executemany of one row per key that cost 24 µs a key on PostgreSQL (issue 11)."""
    if not tokens:
        return
    rows = _rows(conn, pipeline, tokens)
    insert = sql.upsert(conn, t)
    if rows is not None:
        insert = insert.from_select(["pipeline", "source_key", "token"], rows)
    upsert = insert.on_conflict_do_update(index_elements=[t.c.pipeline, t.c.source_key],
                                          set_={"token": insert.excluded.token})
    if rows is not None:
        conn.execute(upsert)
    else:  # one row per key
        conn.execute(upsert, [{"pipeline": pipeline, "source_key": key, "token": token}
                              for key, token in tokens.items()])


def _rows(conn: Connection, pipeline: str, tokens: Mapping[str, str]
          ) -> sa.Select[tuple[str, str, str]] | None:
    """(pipeline, key, token) rows unpacked by the database from one or two parameters; None
    where it cannot (SQLite without JSON functions, a key JSON cannot carry)."""
    if conn.dialect.name != "postgresql" and not sql.has_json(conn):
        return None
    encode = t.c.source_key.type.bind_processor(conn.dialect)  # as SafeText stores a key
    keys = [encode(key) for key in tokens] if encode else list(tokens)
    name = sa.literal(pipeline, t.c.pipeline.type)
    if conn.dialect.name == "postgresql":
        pairs = sa.func.unnest(
            sa.bindparam(None, keys, type_=postgresql.ARRAY(sa.Text)),
            sa.bindparam(None, list(tokens.values()), type_=postgresql.ARRAY(sa.Text)),
        ).table_valued("key", "token").render_derived()
        return sa.select(name, pairs.c.key, pairs.c.token)
    text = sql.json_text(dict(zip(keys, tokens.values(), strict=True)))
    if text is None:
        return None
    each = sa.func.json_each(sa.bindparam(None, text, type_=sa.Text)).table_valued(
        "key", "value")
    # A WHERE clause, or SQLite's parser takes the upsert's ON CONFLICT for a join's ON.
    return sa.select(name, each.c.key, each.c.value).where(each.c.key.is_not(None))


def prune(conn: Connection, pipeline: str) -> int:
    """Drop the pipeline's tokens of keys that no longer have a contact; returns how many."""
    orphan = ~sa.exists().where(contacts.c.pipeline == t.c.pipeline,
                                contacts.c.source_key == t.c.source_key)
    return int(conn.execute(sa.delete(t).where(t.c.pipeline == pipeline, orphan)).rowcount)
