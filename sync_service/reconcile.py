"""Drift reconcile: find what changed in Mailtrap behind the sync's back, so the sync repairs it.

``reconcile`` (the ``mailtrap-sync reconcile PIPELINE`` command and the daemon's
``reconcile_every``) holds the pipeline's lease like a run and:

1. asks Mailtrap for an export of the unsubscribed contacts (``subscription_status`` filter),
   and records every one the pipeline manages as unsubscribed in Mailtrap (the sync then never
   adds it to a list again: ``consent.screener``);
2. asks for an export of the pipeline's lists (``list_id`` filter; every contact when the
   pipeline has no lists), polls it until finished, downloads the file to a temporary file and
   streams it into a temporary SQLite index (email → hash of what Mailtrap holds), so memory does
   not grow with the account;
3. walks the state store's confirmed contacts a page at a time and marks as drifted every key
   whose contact Mailtrap no longer holds (missing from the lists), holds with other field values,
   or holds outside one of its managed lists. An unsubscribed contact is compared on its fields
   only: it may have left a list, and it is not put back.

A drifted key's confirmed hash becomes ``DRIFT``; the next run re-reads those keys from the
source (``resend_drifted``, before its incremental read) and sends them again.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from sync_service.diff import Differ
from sync_service.export_csv import ExportedContact, read_export
from sync_service.mailtrap.client import MailtrapCancelled
from sync_service.mapping import Mapper, MappingRejected, contact_hash, normalise_email
from sync_service.models import Contact, RunKind, SourceRecord, chunked
from sync_service.state.consent import MAILTRAP

if TYPE_CHECKING:

    from sync_service.connector import Connector
    from sync_service.delivery import BatchBuilder
    from sync_service.job import RunResult, SyncJob

log = structlog.get_logger(__name__)
PAGE = 2_000
CHUNK = 2_000


def reconcile(job: SyncJob) -> RunResult:
    """Compare Mailtrap with the state store and mark drifted contacts; raises PipelineBusy."""

    def body(builder: BatchBuilder) -> None:
        counts = builder.courier.counts
        mapper = job.build_mapper(create_lists=False)
        columns = dict(job.pipeline.mapping.columns)
        with tempfile.TemporaryDirectory(prefix="mailtrap-sync-") as folder:
            unsubscribed = _export(job, Path(folder) / "unsubscribed", list_ids=(),
                                   status="unsubscribed")
            with unsubscribed as rows:
                _record_unsubscribed(job, rows, counts)
            with _export(job, Path(folder) / "lists", list_ids=mapper.list_ids,
                         status=None) as rows, \
                    _index(Path(folder) / "index.db") as index:
                _fill(job, index, rows, mapper, columns=columns, counts=counts)
                _compare(job, index, mapper, counts)
        job.store.set_reconciled(job.name)

    return job._execute(RunKind.RECONCILE, body, advance=False)


@contextmanager
def _export(job: SyncJob, path: Path, *, list_ids: Sequence[int],
            status: str | None) -> Iterator[Iterator[ExportedContact]]:
    """Request an export, wait for it, download it to ``path``; yields its contacts."""
    client, cfg = job.client, job.settings.mailtrap
    created = client.create_export(list_ids=list_ids, subscription_status=status)
    log.info("export.requested", export_id=created.id, list_ids=list(list_ids), status=status)
    done = client.wait_for_export(created.id, interval=cfg.poll_interval,
                                  max_interval=cfg.poll_max_interval, timeout=cfg.import_timeout)
    if done is None or done.url is None:
        raise MailtrapCancelled(f"stopped while export {created.id} was being prepared")
    with path.open("w+b") as sink:
        size = client.download(done.url, sink)
        log.info("export.downloaded", export_id=created.id, bytes=size)
        sink.seek(0)
        yield read_export(sink, merge_tags=_field_names(job), list_names=_list_names(job))


def _field_names(job: SyncJob) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in job.client.fields():
        found[item.name] = item.merge_tag
        found[item.merge_tag] = item.merge_tag
    return found


def _list_names(job: SyncJob) -> dict[str, int]:
    return {item.name: item.id for item in job.client.lists()}


def _record_unsubscribed(job: SyncJob, rows: Iterator[ExportedContact],
                         counts: dict[str, int]) -> None:
    for chunk in chunked(rows, CHUNK):
        emails = [row.email for row in chunk if row.unsubscribed]
        owners = job.store.get_owners(job.name, emails)
        _add(counts, "unsubscribed_in_mailtrap",
             job.store.record_optouts(job.name, {key: email for email, key in owners.items()},
                                      origin=MAILTRAP))


@contextmanager
def _index(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path)
    try:
        conn.execute("CREATE TABLE held (email TEXT PRIMARY KEY, full_hash TEXT, "
                     "fields_hash TEXT, unsubscribed INTEGER)")
        yield conn
    finally:
        conn.close()


def _fill(job: SyncJob, index: sqlite3.Connection, rows: Iterator[ExportedContact],
          mapper: Mapper, *, columns: dict[str, str], counts: dict[str, int]) -> None:
    """Hash each exported contact as the diff hashes what it sends, into the index."""
    for chunk in chunked(rows, CHUNK):
        job.check_stop()
        values = [_hashes(row, mapper, columns) for row in chunk]
        index.executemany("INSERT OR REPLACE INTO held VALUES (?, ?, ?, ?)", values)
        _add(counts, "exported", len(values))
    index.commit()


def _hashes(row: ExportedContact, mapper: Mapper,
            columns: dict[str, str]) -> tuple[str, str | None, str | None, int]:
    """(email, hash as held, hash with the managed lists, unsubscribed) of one exported row."""
    email = row.email
    try:
        email = normalise_email(row.email)
        values: dict[str, Any] = {mapper.email_column: email}
        for tag, column in columns.items():
            values[column] = row.fields.get(tag)
        typed = mapper.contact(values)
    except MappingRejected:
        return email, None, None, int(row.unsubscribed)  # what Mailtrap holds cannot be right
    held = tuple(sorted(row.list_ids & set(mapper.list_ids)))
    full = contact_hash(Contact(email, typed.fields, held))
    fields_only = contact_hash(Contact(email, typed.fields, mapper.list_ids))
    return email, full, fields_only, int(row.unsubscribed)


def _compare(job: SyncJob, index: sqlite3.Connection, mapper: Mapper,
             counts: dict[str, int]) -> None:
    after: str | None = None
    while page := job.store.contacts_page(job.name, after, PAGE):
        job.check_stop()
        after = page[-1][0]
        live = [(key, email, hash_) for key, email, hash_ in page if hash_ not in ("deleted",)]
        keys = [key for key, _email, _hash in live]
        unsubscribed = job.store.unsubscribed_keys(job.name, keys)
        held = _lookup(index, [email for _key, email, _hash in live])
        drifted = []
        for key, email, hash_ in live:
            found = held.get(email)
            if found is None and key in unsubscribed:
                continue  # it left the lists, unsubscribed: never put back
            if found is None:
                _add(counts, "missing", 1)
            elif key in unsubscribed or found[2]:
                if found[1] == hash_:
                    continue
                _add(counts, "differing", 1)
            elif found[0] == hash_:
                continue
            else:
                _add(counts, "outside_lists" if found[1] == hash_ else "differing", 1)
            drifted.append(key)
        if drifted:
            _add(counts, "marked_changed", job.store.mark_drifted(job.name, drifted))
    log.info("reconcile.compared", **counts)


def _lookup(index: sqlite3.Connection, emails: list[str]
            ) -> dict[str, tuple[str | None, str | None, int]]:
    found: dict[str, tuple[str | None, str | None, int]] = {}
    for start in range(0, len(emails), 500):
        part = emails[start:start + 500]
        marks = ",".join("?" * len(part))
        for email, full, fields_only, unsub in index.execute(
                f"SELECT email, full_hash, fields_hash, unsubscribed FROM held "
                f"WHERE email IN ({marks})", part):
            found[email] = (full, fields_only, unsub)
    return found


def resend_drifted(job: SyncJob, connector: Connector, differ: Differ, sink: Any) -> None:
    """Re-read from the source the keys a reconcile marked, so the run sends them again."""
    after: str | None = None
    while keys := job.store.drifted_keys(job.name, after, PAGE):
        after = keys[-1]
        log.info("reconcile.resending", count=len(keys))
        seen: set[str] = set()
        job._scan(_noting(connector.fetch(keys), seen), differ, sink)
        gone = [key for key in keys if key not in seen]
        if gone:  # no longer in the source: a deleted row, not to be fetched on every run
            job.store.forget_drift(job.name, gone)


def _noting(records: Iterator[SourceRecord], seen: set[str]) -> Iterator[SourceRecord]:
    for record in records:
        seen.add(record.key_str)
        yield record



def _add(counts: dict[str, int], key: str, value: int) -> None:
    if value:
        counts[key] = counts.get(key, 0) + value

