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
anyone unless the operator says so (``--allow-mass-delete``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from sync_service.connector import Connector, KeyListing
from sync_service.diff import TOMBSTONE
from sync_service.settings import PipelineSettings
from sync_service.state import StateReader

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
    present = source_keys(connector) if scan else None
    candidates: set[str] = set(seen_deleted)
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


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk
