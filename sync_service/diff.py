"""Pure change detection: source records + what the state store confirmed → changes to send.

No I/O here. The job looks up the stored contacts and email owners for a chunk of records, then
asks ``Differ.diff`` what each record means. Each ``Change`` keeps its record's position so the
job can move the watermark exactly past the records whose changes are confirmed (invariant 1).

Rules:
- a contact is sent only when the hash of what would be sent differs from the confirmed hash
  (invariant 2), unless ``resend`` is set;
- two source keys with one email: the key that already owns it in the state store wins, else the
  first in (cursor, key) order (it is in the batch being built); the other is rejected as a
  duplicate, with the winner named;
- an email that changes on the same key: the old address leaves the pipeline's lists through an
  exclusion-only entry (``list_ids_excluded``), the new one is sent;
- a deleted source record: its address leaves the pipeline's lists, and its stored hash is
  replaced by a tombstone so the record is sent again if it comes back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sync_service.errors import MappingRejected
from sync_service.mapping import Mapper, contact_hash
from sync_service.models import (
    ChangeKind,
    Contact,
    ImportEntry,
    Position,
    Rejection,
    RejectKind,
    SourceRecord,
    StoredContact,
)

TOMBSTONE = "deleted"


@dataclass(frozen=True, slots=True)
class Change:
    """What one source record means: entries to send, or a rejection, or nothing."""

    position: Position
    source_key: str
    kind: ChangeKind | None
    entries: tuple[ImportEntry, ...] = ()
    rejection: Rejection | None = None


@dataclass(frozen=True, slots=True)
class Mapped:
    """A record with the contact it maps to (and its hash), or the reason it cannot be sent."""

    record: SourceRecord
    contact: Contact | None = None
    digest: str | None = None
    rejection: Rejection | None = None


class Differ:
    """Decides, record by record, what to send for one pipeline."""

    def __init__(self, mapper: Mapper, *, resend: bool = False) -> None:
        self.mapper = mapper
        self.resend = resend

    def map(self, records: Iterable[SourceRecord]) -> list[Mapped]:
        """Map and hash each record once; the job then looks up owners of the emails."""
        mapped = []
        for record in records:
            if record.deleted:
                mapped.append(Mapped(record))
                continue
            if record.problem is not None:  # a value the connector could not decode
                mapped.append(Mapped(record, rejection=Rejection(
                    record.key_str, None, RejectKind.INVALID_VALUE, record.problem)))
                continue
            try:
                contact = self.mapper.contact(record.values)
            except MappingRejected as exc:
                raw = record.values.get(self.mapper.email_column)
                email = str(raw) if raw is not None else None
                mapped.append(Mapped(record, rejection=Rejection(
                    record.key_str, email, exc.kind, exc.reason)))
                continue
            mapped.append(Mapped(record, contact, contact_hash(contact)))
        return mapped

    def diff(
        self,
        mapped: Iterable[Mapped],
        stored: Mapping[str, StoredContact],
        owners: Mapping[str, str],
        pending: Mapping[str, str],
    ) -> list[Change]:
        """One Change per record, in order.

        ``stored``: confirmed state by source key; ``owners``: confirmed email → source key;
        ``pending``: email → source key of entries already in the batch being built.
        """
        claimed = dict(pending)
        changes = []
        for item in mapped:
            change = self._one(item, stored.get(item.record.key_str), owners, claimed)
            for entry in change.entries:
                claimed.setdefault(entry.email, entry.source_key)
            changes.append(change)
        return changes

    def _one(
        self,
        item: Mapped,
        stored: StoredContact | None,
        owners: Mapping[str, str],
        claimed: Mapping[str, str],
    ) -> Change:
        record, contact, digest = item.record, item.contact, item.digest
        key = record.key_str
        if record.deleted:
            return self._deleted(record, stored)
        if contact is None or digest is None:
            return Change(record.position, key, None, rejection=item.rejection)
        owner = owners.get(contact.email) or claimed.get(contact.email)
        if owner is not None and owner != key:
            reason = f"email {contact.email} already belongs to source key {owner}"
            rejection = Rejection(key, contact.email, RejectKind.DUPLICATE, reason)
            return Change(record.position, key, None, rejection=rejection)
        if stored is not None and stored.hash == digest and not self.resend:
            return Change(record.position, key, ChangeKind.UNCHANGED)
        entries: list[ImportEntry] = []
        fresh = stored is None or stored.hash == TOMBSTONE
        kind = ChangeKind.CREATE if fresh else ChangeKind.UPDATE
        if stored is not None and stored.email != contact.email:
            kind = ChangeKind.EMAIL_CHANGE
            if self.mapper.list_ids:
                entries.append(self._unlist(key, stored.email, None))
        entries.append(ImportEntry(
            source_key=key, email=contact.email, kind=kind, fields=contact.fields,
            list_ids_included=contact.list_ids, hash=digest,
        ))
        return Change(record.position, key, kind, entries=tuple(entries))

    def _deleted(self, record: SourceRecord, stored: StoredContact | None) -> Change:
        key = record.key_str
        if stored is None or stored.hash == TOMBSTONE:
            return Change(record.position, key, ChangeKind.UNCHANGED)
        entry = self._unlist(key, stored.email, TOMBSTONE)
        return Change(record.position, key, ChangeKind.UNLIST, entries=(entry,))

    def _unlist(self, key: str, email: str, digest: str | None) -> ImportEntry:
        return ImportEntry(
            source_key=key, email=email, kind=ChangeKind.UNLIST,
            list_ids_excluded=self.mapper.list_ids, hash=digest,
        )
