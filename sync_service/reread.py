"""The re-read skip: a row read again unchanged costs a look-up, not a mapping and a hash.

Rows inside the lookback window, and every row after a bulk update that gave a whole table one
``updated_at``, are read again on every sync until a newer change moves the watermark on
(invariant 4). Design.md's invariant 2 wants such a row to cost almost nothing. Each row the
sync maps leaves a **token** in the state store:

    token = digest(pipeline fingerprint, the row's cursor value, the hash the row maps to)

and a later read of the same key at the same cursor value is accepted as unchanged, before it
is mapped, when the token recomputed with the key's *confirmed* hash equals the stored one.
Because the confirmed hash is part of the token, the token stops matching whenever that hash
changes by any path (a later import, a reconcile's drift mark, a tombstone, a forgotten key),
and a token written before its import was confirmed only starts matching once Mailtrap has
confirmed exactly that hash. What the skip relies on is the premise of incremental reading: a
key's row does not change without its cursor value changing. A cursor coarser than the edits (a
date, or seconds when a row is edited twice in a second) breaks it: ``skip_rereads = false``
on the pipeline turns the skip off.

The **fingerprint** covers everything besides the row that decides what the row maps to: the
source, mapping, lists and consent settings, the Mailtrap field types and the list ids the
names resolved to. Change any of them (a new field, a renamed merge tag, a list recreated) and
every token stops matching, so the next sync maps and hashes every row it reads again.

A row is never skipped when it is deleted, has no cursor, is queued in the batch being built,
was confirmed by an import of this run, has a rejection on record, or holds an address another
key claims in this run; ``retry``, reconcile re-sends and ``backfill`` never skip (a backfill
checks every row against its hash). Pure: no I/O here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from hashlib import blake2b
from typing import Any, NamedTuple

import orjson

from sync_service.diff import Mapped, Pending
from sync_service.models import SourceRecord

# Bump to make every stored token stop matching (a change in how rows map or hash).
VERSION = 1
# Settings of the source that do not change what a row maps to.
_OPERATIONAL = {"fetch_size", "lookback", "timeout", "page_size", "max_retries"}


def fingerprint(pipeline: Any, field_types: Mapping[str, str],
                list_ids: Mapping[str | int, int]) -> str:
    """The pipeline's fingerprint: what, besides the row, decides the contact it maps to."""
    source = {k: v for k, v in pipeline.source.model_dump(mode="json").items()
              if k not in _OPERATIONAL}
    described = {
        "version": VERSION,
        "source": source,
        "mapping": pipeline.mapping.model_dump(mode="json"),
        "lists": pipeline.lists,
        "lists_by_column": (pipeline.lists_by_column.model_dump(mode="json")
                            if pipeline.lists_by_column is not None else None),
        "consent": (pipeline.consent.model_dump(mode="json")
                    if pipeline.consent is not None else None),
        "field_types": dict(field_types),
        "list_ids": sorted((str(name), list_id) for name, list_id in list_ids.items()),
    }
    encoded = orjson.dumps(described, option=orjson.OPT_SORT_KEYS, default=str)
    return blake2b(encoded, digest_size=16).hexdigest()


def token(fingerprint_: str, cursor: Any, contact_hash: str) -> str:
    """The token of a row at ``cursor`` that maps to ``contact_hash``."""
    text = f"{fingerprint_}\x1f{type(cursor).__name__}\x1f{cursor!r}\x1f{contact_hash}"
    return blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


class Seen(NamedTuple):
    """What the state store holds for a key the skip may apply to (no rejection on record).
    A named tuple: one is built per row re-read, and a frozen dataclass costs ~1 µs more."""

    token: str
    hash: str  # the confirmed hash
    email: str  # the confirmed address
    import_id: int | None


def unchanged(fingerprint_: str, key: str, cursor: Any, seen: Mapping[str, Seen], *,
              pending: Pending, sent_in_run: Callable[[int | None], bool]) -> bool:
    """Whether the row of ``key`` at ``cursor`` can be accepted as unchanged unmapped.

    ``pending``: what the run has queued and not confirmed; ``sent_in_run``: whether an import
    id is one this run confirmed."""
    found = seen.get(key)
    if found is None or cursor is None or key in pending.keys or found.email in pending.emails:
        return False
    if sent_in_run(found.import_id):
        return False
    return token(fingerprint_, cursor, found.hash) == found.token


def candidates(fingerprint_: str, records: Sequence[SourceRecord], seen: Mapping[str, Seen], *,
               pending: Pending, sent_in_run: Callable[[int | None], bool]) -> set[int]:
    """Indices of the records that can be accepted as unchanged without mapping them (a key
    read twice in the chunk is not: its earlier row may change what the later one means)."""
    if not seen:
        return set()
    keys = [record.key_str for record in records]
    twice = {key for key, count in Counter(keys).items() if count > 1}
    return {index for index, record in enumerate(records)
            if not record.deleted and record.problem is None and keys[index] not in twice
            and unchanged(fingerprint_, keys[index], record.cursor, seen, pending=pending,
                          sent_in_run=sent_in_run)}


def to_note(fingerprint_: str, mapped: Iterable[Mapped], seen: Mapping[str, Seen]
            ) -> dict[str, str]:
    """The tokens of the mapped rows that differ from what is stored (key → token)."""
    found: dict[str, str] = {}
    for item in mapped:
        record = item.record
        if record.deleted or record.cursor is None or item.digest is None:
            continue
        key = record.key_str
        made = token(fingerprint_, record.cursor, item.digest)
        known = seen.get(key)
        if known is None or known.token != made:
            found[key] = made
    return found
