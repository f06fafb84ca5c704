"""Pure change detection: source records + the newest known state → changes to send.

No I/O here. For a stretch of records the job looks up a ``View`` (confirmed contacts, which keys
hold which address, the live owner check, rejections on record) and keeps a ``Pending`` (what the
batch being built has queued and Mailtrap has not confirmed yet); ``Differ.decide`` then says
what one record means. Each ``Change`` keeps its record's position so the job can move the
watermark exactly past the records whose changes are confirmed (invariant 1).

Rules:
- **newest state** (invariant 2): a record is compared with its key's newest state. The job
  never asks about a key that is still queued in the batch being built (it sends that batch
  first, or rejects a duplicated source key), so the newest state is the confirmed one, looked
  up after the last confirmation. A contact is sent only when its hash differs from it, unless
  ``resend`` is set.
- **refused contacts** (invariant 8): a key whose last hash Mailtrap refused (422) is not posted
  again while its row still maps to that hash, unless ``resend`` (``retry``) is set.
- **ownership** (invariant 9): an address belongs to a *live* holder only. A holder is a key
  whose newest state (queued, else confirmed and not a tombstone) has the address and, for a
  confirmed holder, whose current source row still maps to it (``View.live``, checked by the job
  only when another key claims the address). A record claiming an address a live holder keeps
  is rejected as a duplicate, with the holder named; deleted keys, moves and swaps release
  addresses, so they resolve in the run in which they are read.
- **leaving an address**: when a key's address changes or the key is deleted, the old address
  leaves the pipeline's lists through an exclusion-only entry (``list_ids_excluded``), unless
  another key now holds it. A deleted key whose address another key holds sends nothing and is
  forgotten (``Change.forget``) once its batch is confirmed.
- **deleted records**: the address leaves the lists and the stored hash becomes a tombstone, so
  the record is sent again if it comes back.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

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
    value,
)

TOMBSTONE = "deleted"
_EXCLUSIONS_KEPT = 1_024  # combinations of lists whose exclusions are remembered


@value
class Change:
    """What one source record means: entries to send, or a rejection, or nothing."""

    position: Position
    source_key: str
    kind: ChangeKind | None
    entries: tuple[ImportEntry, ...] = ()
    rejection: Rejection | None = None
    # A deleted key whose address another key holds: nothing is sent, its state is dropped.
    forget: bool = False
    # Nothing sent because Mailtrap refused this very contact before (invariant 8).
    still_refused: bool = False


@value
class Mapped:
    """A record with the contact it maps to (and its hash), or the reason it cannot be sent."""

    record: SourceRecord
    contact: Contact | None = None
    digest: str | None = None
    rejection: Rejection | None = None


@value
class OnRecord:
    """A rejection the state store holds for a key: its kind, and the hash Mailtrap refused."""

    kind: RejectKind
    hash: str | None = None


@dataclass
class View:
    """What the job looked up for a stretch of records (all of it is confirmed state)."""

    stored: Mapping[str, StoredContact] = field(default_factory=dict)
    # address -> keys whose confirmed contact has it (tombstones excluded)
    holders: Mapping[str, Sequence[str]] = field(default_factory=dict)
    # key -> the addresses its current source rows map to (none: gone, deleted, unmappable);
    # only for confirmed holders of an address some other key claims
    live: Mapping[str, Collection[str]] = field(default_factory=dict)
    rejections: Mapping[str, OnRecord] = field(default_factory=dict)


@dataclass
class Pending:
    """What the run has queued and Mailtrap has not confirmed: the batch being built and the
    batches in flight (posted, not confirmed yet)."""

    keys: dict[str, str | None] = field(default_factory=dict)  # key -> address it takes, or None
    emails: dict[str, str] = field(default_factory=dict)  # address -> key, for every entry
    takes: dict[str, str] = field(default_factory=dict)  # address -> key that now takes it

    def add(self, change: Change) -> None:
        if not change.entries and not change.forget:
            return
        self.keys.setdefault(change.source_key, None)
        for entry in change.entries:
            self.emails[entry.email] = entry.source_key
            if entry.hash is not None and entry.hash != TOMBSTONE:
                self.keys[entry.source_key] = entry.email
                self.takes[entry.email] = entry.source_key

    def clear(self) -> None:
        self.keys.clear()
        self.emails.clear()
        self.takes.clear()


class Differ:
    """Decides, record by record, what to send for one pipeline."""

    def __init__(self, mapper: Mapper, *, resend: bool = False) -> None:
        self.mapper = mapper
        self.resend = resend
        self._exclusions: dict[tuple[int, ...], tuple[int, ...]] = {}

    def map(self, records: Iterable[SourceRecord]) -> list[Mapped]:
        """Map and hash each record once; the job then looks up owners of the emails."""
        mapped: list[Mapped] = []
        append, contact_of = mapped.append, self.mapper.contact  # once, not per row
        for record in records:
            if record.deleted:
                append(Mapped(record))
                continue
            if record.problem is not None:  # a value the connector could not decode
                append(Mapped(record, rejection=Rejection(
                    record.key_str, None, RejectKind.INVALID_VALUE, record.problem)))
                continue
            try:
                contact = contact_of(record.values)
            except MappingRejected as exc:
                raw = record.values.get(self.mapper.email_column)
                email = str(raw) if raw is not None else None
                append(Mapped(record, rejection=Rejection(
                    record.key_str, email, exc.kind, exc.reason)))
                continue
            append(Mapped(record, contact, contact_hash(contact)))
        return mapped

    def diff(
        self,
        mapped: Iterable[Mapped],
        stored: Mapping[str, StoredContact],
        owners: Mapping[str, str],
        pending: Mapping[str, str],
    ) -> list[Change]:
        """One Change per record, in order, for records with distinct keys (tests, benches).

        ``owners``: confirmed address → key (every holder taken as live); ``pending``: address →
        key of entries already queued.
        """
        queued = Pending(emails=dict(pending), takes=dict(pending))
        queued.keys.update({key: email for email, key in pending.items()})
        view = View(stored=stored, holders={email: [key] for email, key in owners.items()})
        changes = []
        for item in mapped:
            change = self.decide(item, view, queued)
            queued.add(change)
            changes.append(change)
        return changes

    def decide(self, item: Mapped, view: View, pending: Pending) -> Change:
        """What ``item`` means against the newest state (``view`` overlaid with ``pending``)."""
        record, contact, digest = item.record, item.contact, item.digest
        key = record.key_str
        stored = view.stored.get(key)
        if record.deleted:
            return self._deleted(record, stored, view, pending)
        if contact is None or digest is None:
            return Change(record.position, key, None, rejection=item.rejection)
        holder = self._live_holder(contact.email, key, view, pending)
        if holder is not None:
            reason = f"email {contact.email} already belongs to source key {holder}"
            rejection = Rejection(key, contact.email, RejectKind.DUPLICATE, reason)
            return Change(record.position, key, None, rejection=rejection)
        on_record = view.rejections.get(key)
        if (not self.resend and on_record is not None and on_record.kind is RejectKind.MAILTRAP
                and on_record.hash == digest):
            return Change(record.position, key, ChangeKind.UNCHANGED, still_refused=True)
        if stored is not None and stored.hash == digest and not self.resend:
            return Change(record.position, key, ChangeKind.UNCHANGED)
        entries: list[ImportEntry] = []
        fresh = stored is None or stored.hash == TOMBSTONE
        kind = ChangeKind.CREATE if fresh else ChangeKind.UPDATE
        if stored is not None and not fresh and stored.email != contact.email:
            kind = ChangeKind.EMAIL_CHANGE
            if self.mapper.managed_ids and not self._held(stored.email, key, view, pending):
                entries.append(self._unlist(key, stored.email, None))
        entries.append(ImportEntry(
            source_key=key, email=contact.email, kind=kind, fields=contact.fields,
            list_ids_included=contact.list_ids, hash=digest,
            list_ids_excluded=self._excluded(contact.list_ids),
        ))
        return Change(record.position, key, kind, entries=tuple(entries))

    def _excluded(self, included: tuple[int, ...]) -> tuple[int, ...]:
        """The managed lists a contact on ``included`` leaves (kept per combination of lists:
        rows share a handful of them)."""
        excluded = self._exclusions.get(included)
        if excluded is None:
            excluded = tuple(i for i in self.mapper.managed_ids if i not in included)
            if len(self._exclusions) < _EXCLUSIONS_KEPT:
                self._exclusions[included] = excluded
        return excluded

    def _deleted(self, record: SourceRecord, stored: StoredContact | None, view: View,
                 pending: Pending) -> Change:
        key = record.key_str
        if stored is None or stored.hash == TOMBSTONE:
            return Change(record.position, key, ChangeKind.UNCHANGED)
        if self._held(stored.email, key, view, pending):
            return Change(record.position, key, ChangeKind.UNLIST, forget=True)
        entry = self._unlist(key, stored.email, TOMBSTONE)
        return Change(record.position, key, ChangeKind.UNLIST, entries=(entry,))

    @staticmethod
    def _holds(other: str, email: str, view: View, pending: Pending, *, check_live: bool
               ) -> bool:
        if other in pending.keys:
            return pending.keys[other] == email
        return not check_live or email in view.live.get(other, (email,))

    def _live_holder(self, email: str, key: str, view: View, pending: Pending) -> str | None:
        """The smallest other key that holds ``email`` and whose source row still has it."""
        taker = pending.takes.get(email)
        holders = view.holders.get(email)
        if (taker is None or taker == key) and (not holders or holders == [key]):
            return None  # nearly every row: nobody else holds the address
        found = [taker] if taker is not None and taker != key else []
        found += [k for k in holders or () if k != key
                  and self._holds(k, email, view, pending, check_live=True)]
        return min(found) if found else None

    def _held(self, email: str, key: str, view: View, pending: Pending) -> bool:
        """Whether another key's newest state has ``email`` (so it must stay listed)."""
        taker = pending.takes.get(email)
        if taker is not None and taker != key and pending.keys.get(taker) == email:
            return True
        return any(k != key and self._holds(k, email, view, pending, check_live=False)
                   for k in view.holders.get(email, ()))

    def _unlist(self, key: str, email: str, digest: str | None) -> ImportEntry:
        return ImportEntry(
            source_key=key, email=email, kind=ChangeKind.UNLIST,
            list_ids_excluded=self.mapper.managed_ids, hash=digest,
        )
