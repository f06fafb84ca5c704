"""Hard deletes: which tracked keys are gone from the source, and the mass-delete brake.

A **key scan** compares the keys the source holds now with the keys the state store tracks
(confirmed and not a tombstone); a tracked key the source no longer has is a deletion. A
connector may offer ``keys()`` (the SQL connector: one ``SELECT key``); otherwise the scan is a
full ``read(None)``. A full-snapshot connector (files) also names the keys its previous snapshot
had and this one lacks (``deleted_keys``); those join the same path after each read. Every
candidate is checked once more with ``fetch`` before anything happens: a key that has a live
row again is not a deletion.

Memory: the scan holds the source's keys as a set of text (a few dozen bytes a key, as the file
connector does for its snapshots); the state store's keys are read a chunk at a time.

The **brake** (``max_delete_share``, ``max_delete_count``) is judged on the whole set before any
of it is applied, so an empty table or a query that suddenly returns nothing never removes
anyone unless the operator says so (``--allow-mass-delete``). A held run is followed by a scan
on the next run (``scan_due``), so held deletions are looked for until applied.

What a deletion does (``on_delete``) is applied by the job: ``remove_from_lists`` sends the key
through the diff as a deleted record (an exclusion-only entry, a tombstone on confirmation),
``delete`` calls ``hard_delete`` here, ``ignore`` only counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import structlog

from sync_service.connector import Connector, KeyListing
from sync_service.diff import TOMBSTONE
from sync_service.mailtrap.client import MailtrapClient
from sync_service.settings import PipelineSettings
from sync_service.state import StateReader, StateStore

log = structlog.get_logger(__name__)
CHUNK = 2_000


@dataclass
class Deletions:
    """Tracked keys found gone from the source, and how many keys the pipeline tracks."""

    gone: list[str] = field(default_factory=list)
    tracked: int = 0
    scanned: bool = False


def source_keys(connector: Connector) -> set[str]:
    """Every key the source holds now: ``keys()`` when the connector has it, else a full read."""
    if isinstance(connector, KeyListing):
        return set(connector.keys())
    return {record.key_str for record in connector.read(None)}


def find(state: StateReader, pipeline: str, connector: Connector, *, scan: bool,
         seen_deleted: Iterable[str] = ()) -> Deletions:
    """The tracked keys gone from the source: by a key scan (``scan``) and from the keys a
    snapshot connector saw disappear (``seen_deleted``); each confirmed gone by ``fetch``."""
    found = Deletions(scanned=scan)
    candidates: set[str] = set(seen_deleted)
    if not scan and not candidates:
        return found  # nothing to look at: the state store is not read
    present = source_keys(connector) if scan else None
    for chunk in state.live_keys(pipeline):
        found.tracked += len(chunk)
        if present is not None:
            candidates.update(key for key in chunk if key not in present)
    if not candidates:
        return found
    live = _tracked(state, pipeline, sorted(candidates))
    found.gone = [key for key in live if key not in _still_there(connector, live)]
    return found


def _tracked(state: StateReader, pipeline: str, keys: Sequence[str]) -> list[str]:
    """The keys among ``keys`` whose confirmed contact is not a tombstone."""
    kept: list[str] = []
    for chunk in chunks(keys):
        stored = state.get_contacts(pipeline, chunk)
        kept += [k for k in chunk if k in stored and stored[k].hash != TOMBSTONE]
    return kept


def _still_there(connector: Connector, keys: Sequence[str]) -> set[str]:
    """The keys that have a row again that is not itself marked deleted."""
    found: set[str] = set()
    for chunk in chunks(keys):
        found.update(r.key_str for r in connector.fetch(chunk) if not r.deleted)
    return found


def brake(pipeline: PipelineSettings, count: int, tracked: int) -> str | None:
    """Why ``count`` removals out of ``tracked`` contacts must wait for the flag, or None."""
    limit_count = pipeline.max_delete_count
    over_share = count > pipeline.max_delete_share * tracked
    over_count = limit_count is not None and count > limit_count
    if not count or not (over_share or over_count):
        return None
    share = f"{count / tracked:.0%}" if tracked else "all"
    limits = f"max_delete_share = {pipeline.max_delete_share:g}"
    if limit_count is not None:
        limits += f", max_delete_count = {limit_count}"
    return (f"pipeline {pipeline.name}: {count} of {tracked} tracked contacts ({share}) are gone "
            f"from the source, over the mass-delete brake ({limits}); none was removed "
            f"(on_delete = {pipeline.on_delete}). If these deletions are real, run "
            f"`mailtrap-sync sync --allow-mass-delete {pipeline.name}` (or `backfill "
            "--allow-mass-delete`)")


def scan_due(store: StateStore, pipeline: PipelineSettings) -> bool:
    """Whether ``delete_scan_every`` runs (the running one included) went by without a key
    scan, or the run before this one held deletions (they are looked for until applied)."""
    every = pipeline.delete_scan_every
    runs = store.list_runs(pipeline.name, limit=max(every, 2))
    if len(runs) > 1 and runs[1].counts.get("deletions_held"):
        return True
    runs = runs[:every]
    return len(runs) >= every and not any(r.counts.get("key_scans") for r in runs)


def hard_delete(store: StateStore, client: MailtrapClient, pipeline: str, keys: Sequence[str],
                counts: dict[str, int], *, check_stop: Callable[[], None]) -> None:
    """``on_delete = "delete"``: DELETE each gone key's contact (paced by the client), then
    forget the key. An address another live key holds is not deleted; the gone key is only
    forgotten. A crash between the two repeats the DELETE on the next scan (a 404 is fine)."""
    for chunk in chunks(keys):
        check_stop()
        stored = store.get_contacts(pipeline, chunk)
        holders = store.get_holders(pipeline, [s.email for s in stored.values()])
        for key in chunk:
            email = stored[key].email
            if all(k == key for k in holders.get(email, ())):
                client.delete_contact(email)
                counts["contacts_deleted"] = counts.get("contacts_deleted", 0) + 1
        store.advance(pipeline, None, forget=chunk)
        log.info("deletions.applied", policy="delete", keys=len(chunk))


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk
