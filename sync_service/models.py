"""Small frozen values that flow between the connector, the diff, the state store and the job.

Nothing here does I/O. Source keys travel as strings once they leave the connector (``key_str``);
cursor values and keys keep their source types inside ``Position`` so that a watermark compares
the same way the source orders rows.

The values built for every source row (``Position``, ``SourceRecord``, ``Contact``,
``ImportEntry``, ``Rejection``, ``StoredContact``, and ``diff``'s ``Change`` and ``Mapped``) are
``@value`` classes: immutable to the type checker, compared and hashed field by field, but built
at run time like plain slotted dataclasses (issue 11: a frozen dataclass's ``__init__`` costs about
three times as much, and a million rows build several million of these).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from itertools import islice
from types import MappingProxyType
from typing import Any, TypeVar, dataclass_transform

import orjson

# What a Mailtrap custom field value may be once typed for JSON (dates as yyyy-mm-dd strings).
FieldValue = str | int | float | bool | None
CursorValue = datetime | date | int | float | Decimal | str

_V = TypeVar("_V")


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def value(cls: type[_V]) -> type[_V]:
    """A small immutable value class (see the module docstring): frozen for mypy, whose strict
    check rejects any assignment to a field; at run time a slotted dataclass with the equality
    and field-wise hash a frozen one has, without the per-field ``object.__setattr__``."""
    return dataclass(slots=True, unsafe_hash=True)(cls)


@value
class Position:
    """A place in the source's (cursor, key) order; the watermark is one of these."""

    cursor: Any
    key: Any


@value
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
    # Computed on first use and kept: the job asks for both several times per row.
    _key_str: str | None = field(default=None, init=False, repr=False, compare=False)
    _position: Position | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def key_str(self) -> str:
        text = self._key_str
        if text is None:
            text = str(self.key)
            object.__setattr__(self, "_key_str", text)
        return text

    @property
    def position(self) -> Position:
        position = self._position
        if position is None:
            position = Position(self.cursor, self.key)
            object.__setattr__(self, "_position", position)
        return position


@value
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


@value
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
        """The contact as an import carries it. Its ``fields`` is the entry's own dict, not a
        copy (50,000 copies were ~12 MiB at the peak of a run, issue 11): do not change it."""
        body: dict[str, Any] = {"email": self.email}
        if self.fields:
            fields = self.fields
            body["fields"] = fields if type(fields) is dict else dict(fields)
        if self.list_ids_included:
            body["list_ids_included"] = list(self.list_ids_included)
        if self.list_ids_excluded:
            body["list_ids_excluded"] = list(self.list_ids_excluded)
        return body


def _api(entry: object) -> dict[str, Any]:
    if isinstance(entry, ImportEntry):
        return entry.to_api()
    raise TypeError(f"not an import entry: {type(entry).__name__}")


def import_body(entries: Sequence[ImportEntry]) -> bytes:
    """The JSON body of an import of ``entries`` (``{"contacts": [...]}``, in order).

    Each contact's dict is made while orjson writes it and dropped at once, instead of a list
    of 50,000 dicts held until the whole body is written (~13 MiB at a run's peak, issue 11)."""
    return orjson.dumps({"contacts": entries}, default=_api,
                        option=orjson.OPT_PASSTHROUGH_DATACLASS)


_NO_FIELDS: Mapping[str, FieldValue] = MappingProxyType({})


def without_payload(entry: ImportEntry) -> ImportEntry:
    """``entry`` with its key, address, kind and hash only (a batch in flight keeps these;
    ``with_payload`` gives the rest back from the body that was posted)."""
    return ImportEntry(source_key=entry.source_key, email=entry.email, kind=entry.kind,
                       fields=_NO_FIELDS, hash=entry.hash)


def with_payload(entries: Sequence[ImportEntry], body: bytes) -> list[ImportEntry]:
    """The entries of a posted import, their fields and lists read back from its body (which
    was made from them, in order, by ``import_body``). A field value reads back as its JSON
    (a date as its ISO text), so posting the result again sends the same bytes."""
    contacts = orjson.loads(body)["contacts"]
    if len(contacts) != len(entries):
        raise ValueError(f"an import body of {len(contacts)} contacts for {len(entries)} entries")
    restored = []
    for entry, contact in zip(entries, contacts, strict=True):
        if contact["email"] != entry.email:
            raise ValueError(f"the import body has {contact['email']!r} where the batch has "
                             f"{entry.email!r}")
        restored.append(ImportEntry(
            source_key=entry.source_key, email=entry.email, kind=entry.kind,
            fields=contact.get("fields", {}),
            list_ids_included=tuple(contact.get("list_ids_included", ())),
            list_ids_excluded=tuple(contact.get("list_ids_excluded", ())), hash=entry.hash))
    return restored


@value
class Rejection:
    """A record that will not be sent (or that Mailtrap refused), with the reason on record."""

    source_key: str
    email: str | None
    kind: RejectKind
    reason: str
    # For MAILTRAP: the hash of the contact Mailtrap refused; it is not posted again while the
    # row still maps to it (invariant 8).
    hash: str | None = None


@value
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
