"""Opt-outs: a source column says who opted out; Mailtrap hears it once and it is never undone.

How the job uses this module (two hooks):

- ``screener`` runs on every chunk the job reads, between the diff and the batches. It records the
  keys whose ``[pipelines.consent] unsubscribed`` column is truthy as pending opt-outs in the state
  store (before the watermark can pass their rows, so none is lost); with ``on_opt_out = "skip"``
  it drops the creation of a contact that does not exist yet; and it takes
  ``list_ids_included`` off the entries of keys that opted out or that Mailtrap has
  unsubscribed, so the sync never adds an opted-out contact to a list (a new one is created on
  none, and is not reachable through a list before its PATCH), nor puts an unsubscribed contact
  back on a list it left. Contacts already on a list stay there.
- ``apply`` runs once the run's imports are confirmed: each pending opt-out whose contact Mailtrap
  confirmed at that address gets one ``PATCH .../contacts/{email}`` with ``unsubscribed: true``
  (paced and retried by the client), and is recorded done only after Mailtrap answered. A crash
  in between repeats the PATCH once; it is idempotent.

Truthy: ``True``, non-zero numbers, and the strings true/t/yes/y/1/on (any case). NULL means
unknown, and nothing is done. A false value sends nothing either: nothing here ever sends
``unsubscribed: false``, and an opt-out once recorded stays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from sync_service.diff import Change, Mapped
from sync_service.errors import ConfigError, MailtrapValidationError
from sync_service.models import ChangeKind
from sync_service.settings_audience import ConsentSettings

if TYPE_CHECKING:
    from sync_service.job import SyncJob

log = structlog.get_logger(__name__)
_TRUE = frozenset({"true", "t", "yes", "y", "1", "on"})
PAGE = 500


def opted_out(value: Any) -> bool | None:
    """True for an opt-out, False for an explicit "not out", None for unknown (NULL)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = str(value).strip().lower()
    if not text:
        return None
    return text in _TRUE


def screener(job: SyncJob, mapped: Sequence[Mapped], *,
             state: Any) -> Callable[[Change], Change]:
    """What the pipeline's consent rules do to each change of this chunk (see the module
    docstring): a function the job applies to every change it decides.

    ``state`` is the job's store in a run; the plan passes a read-only view, and nothing is
    recorded then.
    """
    settings: ConsentSettings | None = job.pipeline.consent
    skip: set[str] = set()
    out: dict[str, str] = {}
    if settings is not None:
        out = _opted_out(job, settings, mapped)
        if settings.on_opt_out == "skip" and out:
            stored = state.get_contacts(job.name, list(out))
            skip = {key for key in out if key not in stored or stored[key].hash == "deleted"}
        if state is job.store:
            job.store.record_optouts(job.name, {k: e for k, e in out.items() if k not in skip})
    # Also without [consent]: a reconcile may have found contacts unsubscribed in Mailtrap.
    keys = [m.record.key_str for m in mapped if not m.record.deleted and m.contact is not None]
    lookup = getattr(state, "unsubscribed_keys", None)
    unsubscribed: set[str] = lookup(job.name, keys) if keys and lookup is not None else set()
    unsubscribed |= set(out)  # opted out now: not added to a list while the PATCH is pending
    if not skip and not unsubscribed:
        return unchanged
    return lambda change: _screened(change, skip, unsubscribed)


def unchanged(change: Change) -> Change:
    """No consent rule applies."""
    return change


def _opted_out(job: SyncJob, settings: ConsentSettings,
               mapped: Sequence[Mapped]) -> dict[str, str]:
    column = settings.unsubscribed
    out: dict[str, str] = {}
    for item in mapped:
        record = item.record
        if record.deleted or item.contact is None:
            continue
        if column not in record.values:
            raise ConfigError(f"pipeline {job.name}: consent.unsubscribed names column "
                              f"{column!r}, which the source does not return")
        if opted_out(record.values[column]):
            out[record.key_str] = item.contact.email
    return out


def _screened(change: Change, skip: set[str], unsubscribed: set[str]) -> Change:
    key = change.source_key
    if key in skip and change.kind is ChangeKind.CREATE:
        # Never created: the position still counts, so the watermark moves past the row.
        return Change(change.position, key, ChangeKind.UNCHANGED)
    if key in unsubscribed and any(e.list_ids_included for e in change.entries):
        entries = tuple(dataclasses.replace(e, list_ids_included=()) for e in change.entries)
        return dataclasses.replace(change, entries=entries)
    return change


def apply(job: SyncJob, counts: dict[str, int]) -> None:
    """Unsubscribe every pending opt-out whose contact Mailtrap holds; record each when done."""
    if job.pipeline.consent is None:
        return
    after: str | None = None
    while page := job.store.pending_optouts(job.name, after, PAGE):
        for key, email in page:
            job.check_stop()
            try:
                job.client.unsubscribe_contact(email)
            except MailtrapValidationError as exc:
                job.store.optout_refused(job.name, key, str(exc))
                _add(counts, "opt_outs_refused", 1)
                log.warning("optout.refused", source_key=key, error=str(exc))
                continue
            job.store.optout_done(job.name, key, email)
            _add(counts, "unsubscribed", 1)
            log.info("optout.unsubscribed", source_key=key)
        after = page[-1][0]


def _add(counts: dict[str, int], key: str, value: int) -> None:
    if value:
        counts[key] = counts.get(key, 0) + value
