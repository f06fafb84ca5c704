"""The state store's side of the re-read skip (``sync_service/reread.py`` says how it works).

``seen`` reads, for a chunk of keys, the stored token with the key's confirmed hash, address and
import id, leaving out keys that have a rejection on record; ``note`` writes tokens in one
statement per call (an upsert: a key gets its first token before its contact is confirmed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import sqlalchemy as sa
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
    """Store these keys' tokens (replacing older ones)."""
    if not tokens:
        return
    insert = sql.upsert(conn, t)
    conn.execute(
        insert.on_conflict_do_update(index_elements=[t.c.pipeline, t.c.source_key],
                                     set_={"token": insert.excluded.token}),
        [{"pipeline": pipeline, "source_key": key, "token": token}
         for key, token in tokens.items()],
    )


def prune(conn: Connection, pipeline: str) -> int:
    """Drop the pipeline's tokens of keys that no longer have a contact; returns how many."""
    orphan = ~sa.exists().where(contacts.c.pipeline == t.c.pipeline,
                                contacts.c.source_key == t.c.source_key)
    return int(conn.execute(sa.delete(t).where(t.c.pipeline == pipeline, orphan)).rowcount)
