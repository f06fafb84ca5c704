"""``mailtrap-sync explain PIPELINE EMAIL|KEY``: why a contact is (not) in Mailtrap, in one place.

The state store's facts come from ``state.explain`` (confirmed address and hash, in-flight
batches, the rejection, the owner a duplicate waits on). With ``reread`` the contact's current
source rows are fetched through the connector (``Connector.fetch``) and judged the way a sync
would judge them now: unchanged, a change to send, a rejection, or gone from the source. That
needs the source and Mailtrap (the mapping's lists and field types); when either fails, the
answer says so and still shows what the store knows. Nothing is written or sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from typing import Any

from sync_service.diff import Differ
from sync_service.errors import StateError, SyncError
from sync_service.job import SyncJob
from sync_service.logging import redact
from sync_service.mapping import MappingRejected, normalise_email
from sync_service.models import ChangeKind
from sync_service.settings import AppSettings, PipelineSettings
from sync_service.state import StateStore
from sync_service.state.explain import explain_contact
from sync_service.wiring import build_client


def explain(settings: AppSettings, pipeline: PipelineSettings, needle: str, store: StateStore,
            *, reread: bool) -> dict[str, Any]:
    """The documented ``explain --json`` shape (README, "explain")."""
    emails = [needle]
    with suppress(MappingRejected):  # not an address: looked for as a source key only
        emails.append(normalise_email(needle))
    try:
        facts = explain_contact(store, pipeline.name, key=needle, emails=emails)
    except StateError:
        if store.schema_revision() is not None:
            raise
        facts = {"keys": {}, "owners": {}}  # a state store with no schema knows nothing yet
    keys = list(facts["keys"])
    answer: dict[str, Any] = {
        "pipeline": pipeline.name, "query": needle, "known": bool(keys),
        "keys": list(facts["keys"].values()),
        "address_owner": {e: k for e, k in facts["owners"].items() if e in emails},
    }
    for item in answer["keys"]:
        item["source"] = None
    if reread and keys:
        found = _reread(settings, pipeline, store, keys)
        for item in answer["keys"]:
            item["source"] = found[item["key"]]
    return answer


def _reread(settings: AppSettings, pipeline: PipelineSettings, store: StateStore,
            keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per key: what a sync would do with its current source row now."""
    try:
        with build_client(settings) as client:
            job = SyncJob(settings=settings, pipeline=pipeline, store=store, client=client)
            differ = Differ(job.build_mapper(create_lists=False))
            with job.open_connector() as connector:
                mapped = differ.map(connector.fetch(list(keys)))
    except SyncError as exc:
        error = {"status": "unavailable", "error": redact(str(exc))}
        return {key: dict(error) for key in keys}
    stored = store.get_contacts(pipeline.name, keys)
    owners = store.get_owners(pipeline.name,
                              [m.contact.email for m in mapped if m.contact is not None])
    changes = {c.source_key: c for c in differ.diff(mapped, stored, owners, {})}
    contacts = {m.record.key_str: m for m in mapped}
    result: dict[str, dict[str, Any]] = {}
    for key in keys:
        change = changes.get(key)
        if change is None:
            result[key] = {"status": "missing", "detail": "no row with this key in the source"}
        elif change.rejection is not None:
            result[key] = {"status": "rejected", "kind": str(change.rejection.kind),
                           "email": change.rejection.email, "reason": change.rejection.reason}
        elif change.kind is ChangeKind.UNCHANGED:
            result[key] = {"status": "unchanged", "detail": "matches the confirmed hash"}
        else:
            contact = contacts[key].contact
            result[key] = {"status": "differs", "change": str(change.kind),
                           "email": contact.email if contact is not None else None,
                           "hash": contacts[key].digest}
    return result
