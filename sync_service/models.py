"""Small frozen values that flow between the connector, the diff, the state store and the job.

Nothing here does I/O. Source keys travel as strings once they leave the connector (``key_str``);
cursor values and keys keep their source types inside ``Position`` so that a watermark compares
the same way the source orders rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from itertools import islice
from typing import Any, TypeVar

# What a Mailtrap custom field value may be once typed for JSON (dates as yyyy-mm-dd strings).
FieldValue = str | int | float | bool | None
CursorValue = datetime | date | int | float | Decimal | str


@dataclass(frozen=True, slots=True)
class Position:
    """A place in the source's (cursor, key) order; the watermark is one of these."""

    cursor: Any
    key: Any


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One row as a connector yields it, in (cursor, key) order.

    ``problem`` says why the row cannot be used although its key and cursor could be read (a
    value the driver could not decode); the diff records it as a rejection of that row. It names
    the column and the value's kind, never the value.
    """

    key: Any
    cursor: Any
    values: Mapping[str, Any]
    deleted: bool = False
    problem: str | None = None

    @property
    def key_str(self) -> str:
        return str(self.key)

    @property
    def position(self) -> Position:
        return Position(self.cursor, self.key)


@dataclass(frozen=True, slots=True)
class Contact:
    """The contact a source record should become in Mailtrap."""

    email: str
    fields: Mapping[str, FieldValue]
    list_ids: tuple[int, ...] = ()


class ChangeKind(StrEnum):
    CREATE = "create"  # no confirmed hash for this key yet
    UPDATE = "update"  # hash differs, same email
    EMAIL_CHANGE = "email_change"  # hash differs and the email moved; old email leaves the lists
    UNLIST = "unlist"  # exclusion-only entry: an old email, or a deleted source record
    UNCHANGED = "unchanged"


class RejectKind(StrEnum):
    INVALID_EMAIL = "invalid_email"  # missing or malformed email in the source row
    INVALID_VALUE = "invalid_value"  # a field value that does not fit the Mailtrap field
    DUPLICATE = "duplicate"  # another source key already owns this email
    DUPLICATE_KEY = "duplicate_key"  # the source has two rows with this key; the later is refused
    MAILTRAP = "mailtrap"  # Mailtrap refused the contact (422 on an import)


@dataclass(frozen=True, slots=True)
class ImportEntry:
    """One element of an import's ``contacts`` array, plus what the job must remember of it.

    ``hash`` is None for exclusion-only entries (UNLIST): confirming them commits no hash.
    """

    source_key: str
    email: str
    kind: ChangeKind
    fields: Mapping[str, FieldValue] = field(default_factory=dict)
    list_ids_included: tuple[int, ...] = ()
    list_ids_excluded: tuple[int, ...] = ()
    hash: str | None = None

    def to_api(self) -> dict[str, Any]:
        body: dict[str, Any] = {"email": self.email}
        if self.fields:
            body["fields"] = dict(self.fields)
        if self.list_ids_included:
            body["list_ids_included"] = list(self.list_ids_included)
        if self.list_ids_excluded:
            body["list_ids_excluded"] = list(self.list_ids_excluded)
        return body


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record that will not be sent (or that Mailtrap refused), with the reason on record."""

    source_key: str
    email: str | None
    kind: RejectKind
    reason: str
    # For MAILTRAP: the hash of the contact Mailtrap refused; it is not posted again while the
    # row still maps to it (invariant 8).
    hash: str | None = None


@dataclass(frozen=True, slots=True)
class StoredContact:
    """What the state store knows of one source key: the last email and hash Mailtrap confirmed."""

    source_key: str
    email: str
    hash: str
    # The import that confirmed it; lets a run tell that it already sent this key.
    import_id: int | None = field(default=None, compare=False)


class RunKind(StrEnum):
    SYNC = "sync"
    BACKFILL = "backfill"
    RETRY = "retry"
    RECONCILE = "reconcile"  # consent branch: drift reconcile (reconcile.py)


class RunOutcome(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


class BatchStatus(StrEnum):
    PENDING = "pending"  # recorded, not yet posted (or posted with no id received)
    POSTED = "posted"  # Mailtrap gave an import id; status not final yet
    FINISHED = "finished"  # Mailtrap said finished; hashes committed
    FAILED = "failed"  # Mailtrap said failed, or the post was abandoned; hashes untouched
    ABANDONED = "abandoned"  # never got an id; superseded by re-reading the source


@dataclass(frozen=True, slots=True)
class ImportResult:
    """A Mailtrap import's status as GET .../contacts/imports/{id} reports it."""

    id: int
    status: str  # created | started | finished | failed
    created_contacts_count: int | None = None
    updated_contacts_count: int | None = None
    contacts_over_limit_count: int | None = None

    @property
    def done(self) -> bool:
        return self.status in ("finished", "failed")


_T = TypeVar("_T")


def chunked(items: Iterable[_T], size: int) -> Iterator[list[_T]]:
    """Lists of at most ``size`` items, in order, streaming (memory bounded by ``size``)."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk
