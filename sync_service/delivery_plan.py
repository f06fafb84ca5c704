"""What the courier does after Mailtrap answers a part of a batch: pure decisions, no I/O.

``delivery.Courier`` posts, polls and records; at each answer it asks this module what comes
next and performs it. The decisions (design.md, invariants 1 and 8):

* a 422 naming contacts of the part: their keys are rejected with Mailtrap's reasons (every
  entry of a key) and the rest is posted again; if every reason is about the contact quota, the
  run stops instead (``refusal_plan``);
* a 422 naming nobody: the part is posted in halves (split by key), a lone key is rejected with
  the message, and past a budget of such refusals the run stops (``unattributed_plan``);
* an import that ends over the quota stops the run; one that ends ``failed`` is posted again,
  from the second failure in halves, and the run stops at ``MAX_IMPORT_FAILURES``
  (``result_plan``, ``failed_import_plan``).

It also keeps the clock of each import in flight (``PollClock``): when it is polled next, and
when waiting for it is given up.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from sync_service.errors import MappingRejected
from sync_service.mapping import normalise_email
from sync_service.models import ChangeKind, ImportEntry, ImportResult, Rejection, RejectKind

MAX_IMPORT_FAILURES = 4

Part = tuple[ImportEntry, ...]


class GiveUp(StrEnum):
    """How the run stops: ``IMPORT_FAILED`` (sent again on the next run) or ``REFUSED``."""

    IMPORT_FAILED = "import_failed"
    REFUSED = "refused"


@dataclass(frozen=True)
class Plan:
    """What to do next, in this order: record ``batch_failure`` on the batch, count
    ``over_limit``, record ``rejections`` (taking ``removed`` emails out of the batch), then stop
    the run when ``give_up`` is set, else post ``retry`` again in the same batch (a 422 naming
    contacts) or treat the part as ``unattributed``, and post ``parts`` before the others."""

    parts: tuple[Part, ...] = ()
    retry: Part = ()
    rejections: tuple[Rejection, ...] = ()
    removed: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    batch_failure: str | None = None
    over_limit: int = 0
    give_up: GiveUp | None = None
    message: str = ""
    unattributed: bool = False
    confirm: bool = False


def refusal_budget(size: int) -> int:
    """How many 422s naming nobody a batch of ``size`` entries may get before the run stops."""
    return 2 * math.ceil(math.log2(size + 1)) + 2


def refusal_plan(part: Sequence[ImportEntry], contact_errors: Mapping[str, list[str]],
                 body: object, message: str) -> Plan:
    """After a 422 for ``part``: reject the keys it names and post the rest, or stop on a full
    quota, or (naming nobody) hand the part to ``unattributed_plan``."""
    named = _named_emails(contact_errors, part)
    if not named:
        quota = _quota_refusal({"": [str(body)]}, len(part))
        return quota or Plan(retry=tuple(part), unattributed=True, message=message)
    quota = _quota_refusal(named, len(part))
    if quota is not None:
        return quota
    keys = {e.source_key for e in part if e.email in named}
    dropped = [e for e in part if e.source_key in keys]
    return Plan(
        retry=tuple(e for e in part if e.source_key not in keys),
        rejections=tuple(_rejection(key, [e for e in dropped if e.source_key == key], named)
                         for key in keys),
        removed=tuple(e.email for e in dropped),
        reasons=tuple(sorted({r for reasons in named.values() for r in reasons})[:5]))


def unattributed_plan(part: Sequence[ImportEntry], message: str, *, refusals: int,
                      budget: int) -> Plan:
    """After the ``refusals``-th 422 naming nobody: stop past ``budget``, reject a lone key with
    ``message``, else post the part in two halves split by key."""
    failure = f"refused without naming a contact: {message}"
    if refusals > budget:
        return Plan(batch_failure=failure, give_up=GiveUp.REFUSED, message=(
            f"Mailtrap keeps refusing imports without naming a contact: {message}"))
    keys = list(dict.fromkeys(entry.source_key for entry in part))
    if len(keys) == 1:
        reasons = {entry.email: [message] for entry in part}
        return Plan(batch_failure=failure, rejections=(_rejection(keys[0], part, reasons),))
    first = set(keys[: len(keys) // 2])  # split by key: a key's entries stay together
    return Plan(batch_failure=failure, parts=(
        tuple(e for e in part if e.source_key in first),
        tuple(e for e in part if e.source_key not in first)))


def result_plan(final: ImportResult) -> Plan:
    """After an import ended: confirm it when finished within the quota, stop the run when
    contacts went over the quota, else record it as failed (``failed_import_plan`` follows)."""
    over = final.contacts_over_limit_count or 0
    if final.status == "finished" and over == 0:
        return Plan(confirm=True)
    if over:
        reason = (f"Mailtrap's contact quota is full: {over} contacts were not stored "
                  f"(import {final.id}); nothing of this batch is confirmed")
        return Plan(batch_failure=reason, over_limit=over, give_up=GiveUp.IMPORT_FAILED,
                    message=reason)
    return Plan(batch_failure=f"import {final.id} ended {final.status}")


def accounted(final: ImportResult) -> int | None:
    """How many contacts a finished import accounts for (created, updated, over the limit);
    None when Mailtrap did not say."""
    if final.created_contacts_count is None or final.updated_contacts_count is None:
        return None
    return (final.created_contacts_count + final.updated_contacts_count
            + (final.contacts_over_limit_count or 0))


def unaccounted(final: ImportResult, sent: int) -> str | None:
    """Why nothing of a finished import may be confirmed when it accounts for fewer contacts
    than the ``sent`` ones; None when it accounts for all of them (or does not say)."""
    told = accounted(final)
    if told is None or told >= sent:
        return None
    return (f"import {final.id} finished with created {final.created_contacts_count} + "
            f"updated {final.updated_contacts_count} + over limit "
            f"{final.contacts_over_limit_count or 0} = {told} of {sent} contacts sent: "
            f"{sent - told} are unaccounted for, so nothing of this batch is confirmed "
            "and its contacts go out again on the next run")


def failed_import_plan(part: Sequence[ImportEntry], import_id: int, failures: int) -> Plan:
    """After the ``failures``-th failed import of a batch: stop at ``MAX_IMPORT_FAILURES``, else
    post the part again, in halves from the second failure on."""
    if failures >= MAX_IMPORT_FAILURES:
        return Plan(give_up=GiveUp.IMPORT_FAILED, message=(
            f"import {import_id} failed {failures} times; its {len(part)} contacts will be "
            "sent again on the next run"))
    half = len(part) // 2
    if failures >= 2 and half:
        return Plan(parts=(tuple(part[:half]), tuple(part[half:])))
    return Plan(parts=(tuple(part),))


@dataclass
class PollClock:
    """When one import in flight is polled next: as soon as it was posted, then after
    ``interval``, growing by half each time up to ``max_interval`` (as ``wait_for_import``
    does); past ``deadline`` it is given up on (the batch stays posted for a later run). Times
    are ``time.monotonic()`` seconds."""

    due: float
    interval: float
    max_interval: float
    deadline: float

    @classmethod
    def start(cls, now: float, *, interval: float, max_interval: float,
              timeout: float) -> PollClock:
        return cls(now, interval, max_interval, now + timeout)

    def wait(self, now: float) -> float:
        """Seconds until the next poll is due (0 when it is)."""
        return max(0.0, self.due - now)

    def polled(self, now: float) -> bool:
        """After a poll that found the import still running: schedule the next one; False when
        it would fall past the deadline."""
        if now + self.interval > self.deadline:
            return False
        self.due = now + self.interval
        self.interval = min(self.interval * 1.5, self.max_interval)
        return True


_QUOTA = re.compile(r"contacts?\b.*\blimit|\blimit\b.*\bcontacts?", re.IGNORECASE)


def _quota_refusal(named: Mapping[str, list[str]], size: int) -> Plan | None:
    """A plan that stops the run when a 422 says, for every contact it names, that the quota
    is full; None otherwise."""
    reasons = [r for found in named.values() for r in found]
    if not reasons or not all(_QUOTA.search(r) for r in reasons):
        return None
    reason = (f"Mailtrap's contact quota is full (422: {reasons[0]}); nothing of this "
              "batch is confirmed, and it is sent again when there is room")
    return Plan(batch_failure=reason, over_limit=size, give_up=GiveUp.IMPORT_FAILED,
                message=reason)


def _named_emails(errors: Mapping[str, list[str]],
                  part: Sequence[ImportEntry]) -> dict[str, list[str]]:
    """Email of the part → reasons, for the entries a 422 names (as sent or as we spell it)."""
    emails = {entry.email for entry in part}
    named: dict[str, list[str]] = {}
    for given, reasons in errors.items():
        email = given
        if email not in emails:
            try:
                email = normalise_email(given)
            except MappingRejected:
                continue
        if email in emails:
            named.setdefault(email, []).extend(reasons)
    return named


def _rejection(key: str, entries: Sequence[ImportEntry],
               reasons: Mapping[str, list[str]]) -> Rejection:
    """One key's rejection: the contact it was sending, and why each named entry was refused."""
    sent = next((e for e in entries if e.kind is not ChangeKind.UNLIST), entries[0])
    parts = []
    for entry in entries:
        if entry.email in reasons:
            text = "; ".join(reasons[entry.email])
            parts.append(f"taking {entry.email} out of the lists: {text}"
                         if entry.kind is ChangeKind.UNLIST and entry is not sent else text)
    if sent.email not in reasons:
        parts.append(f"so {sent.email} was not sent either")
    refused = sent.hash if sent.kind is not ChangeKind.UNLIST else None
    return Rejection(key, sent.email, RejectKind.MAILTRAP, "; ".join(parts), refused)
