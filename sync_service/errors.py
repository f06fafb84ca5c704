"""The project's errors, every one of them, grouped by how a caller reacts to them.

The reaction groups (each error below subclasses exactly one of them):

- ``ConfigError``: the operator must change configuration; the CLI exits 2.
- ``RetriableError``: a passing fault (429, 5xx, timeout, dropped connection, a busy lease); the
  same call may succeed later.
- ``FatalError``: the run cannot go on and fails (bad token, missing account, source unreachable,
  an import that kept failing); nothing more is sent.
- ``RecordError``: one record is refused; it is recorded as rejected with its reason and the run
  goes on (a row that cannot be mapped, contacts Mailtrap refused with a 422).
- ``Stopped``: the run stops early because it was asked to (signal, lost lease); it ends as
  interrupted, not failed.

Third-party exceptions (httpx, SQLAlchemy) are translated where they enter, with ``raise ... from``.
Errors that used to live elsewhere are still importable from their old modules (``delivery``,
``mapping``, ``mailtrap.client``), which re-export them from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sync_service.models import RejectKind


class SyncError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(SyncError):
    """Configuration is wrong or incomplete; the message names the file, pipeline and key."""


class RetriableError(SyncError):
    """A transient fault: the same call may succeed later."""


class FatalError(SyncError):
    """The run cannot continue; nothing more is sent."""


class SourceError(FatalError):
    """The source could not be read (unreachable, bad query, a column that disappeared)."""


class StateError(FatalError):
    """The state store failed or holds something it should not."""


class Stopped(SyncError):
    """The run stops because it was asked to; it ends as interrupted and may be run again."""


class RequestCancelled(Stopped):
    """A wait (pacing permit, retry back-off) given up because the caller asked to stop."""


class PipelineBusy(RetriableError):
    """Another process holds this pipeline's lease (try again later; the CLI exits 3)."""


class Interrupted(Stopped):
    """The run stopped on request (or lost its lease) between two steps."""


class ImportFailed(FatalError):
    """An import kept failing after its retries, or hit the contact quota; nothing of it counts."""


class RecordError(SyncError):
    """One record cannot be turned into a contact; ``reason`` says why."""

    def __init__(self, reason: str, *, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


class MappingRejected(RecordError):
    """A record that cannot become a contact, with the rejection kind."""

    def __init__(self, kind: RejectKind, reason: str, *, field: str | None = None) -> None:
        super().__init__(reason, field=field)
        self.kind = kind


class MailtrapError(SyncError):
    """Where the error comes from: Mailtrap. Never raised itself; each subclass has a group."""

    def __init__(self, message: str, *, status: int | None = None, body: object = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class MailtrapRetriable(MailtrapError, RetriableError):
    """429, 5xx, timeouts, dropped connections: retried by the client's policy."""


class MailtrapRateLimited(MailtrapRetriable):
    """429 Too Many Requests; ``retry_after`` is seconds if Mailtrap sent a Retry-After."""

    def __init__(
        self, message: str, *, status: int | None = 429, body: object = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, body=body)
        self.retry_after = retry_after


class MailtrapUnexpectedAnswer(MailtrapError, FatalError):
    """An answer the client cannot use (not JSON, wrong shape, an unexpected status)."""


class MailtrapAuthError(MailtrapError, FatalError):
    """401/403: the token is wrong or lacks access to the account."""


class MailtrapCancelled(MailtrapError, RequestCancelled):
    """A wait (permit, back-off, poll) given up because the caller asked to stop."""


class MailtrapNotFound(MailtrapError, FatalError):
    """404 for a resource the client asked for (fatal unless the caller expects it)."""


class MailtrapValidationError(MailtrapError, RecordError):
    """422: Mailtrap refused what was sent; ``contact_errors`` maps email to its reasons.

    Its group is ``RecordError``: the contacts it names are recorded as rejected and the rest is
    sent again. ``reason`` is the message.
    """

    def __init__(
        self, message: str, *, status: int | None = 422, body: object = None,
        contact_errors: dict[str, list[str]] | None = None,
    ) -> None:
        super().__init__(message, status=status, body=body)
        self.contact_errors = contact_errors or {}


# hostile (issue 8) ----------------------------------------------------------------------------
class MailtrapUnreachable(MailtrapRetriable):
    """Mailtrap could not be reached at all (connection refused, DNS, connect timeout).

    Retried like any passing fault, but only for ``mailtrap.unreachable_timeout`` seconds in
    all; the error that ends the wait names the URL.
    """


# --- crm branch: errors of the shared HTTP toolkit (sync_service.httpkit) and the connectors ---
class ApiError(SourceError):
    """An answer from a source's API that the connector did not expect; fatal for the run.

    ``api`` names the vendor ("HubSpot"), ``status`` and ``body`` are the answer's.
    """

    def __init__(self, message: str, *, api: str = "", status: int | None = None,
                 body: object = None) -> None:
        super().__init__(message)
        self.api = api
        self.status = status
        self.body = body


class ApiRetriable(RetriableError):
    """A passing fault of a source's API (5xx, 408, timeout, dropped connection): retried."""

    def __init__(self, message: str, *, api: str = "", status: int | None = None,
                 body: object = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.api = api
        self.status = status
        self.body = body
        self.retry_after = retry_after


class ApiUnreachable(ApiRetriable):
    """A source's API could not be reached at all (connection refused, DNS, connect timeout);
    retried for at most the client's unreachable budget, then named with its URL."""


class ApiRateLimited(ApiRetriable):
    """The API said "slow down" (its own way: 429, Salesforce's 403 REQUEST_LIMIT_EXCEEDED)."""


class ApiLimitExhausted(ApiRetriable):
    """A long limit is used up (HubSpot's DAILY policy): not retried within the run."""


class ApiAuthError(ApiError):
    """The API refused the credentials (wrong token, missing scope)."""


class ApiTokenExpired(ApiAuthError):
    """The access token expired; the client fetches a new one and repeats the request once."""


class ApiNotFound(ApiError):
    """404 for something the connector asked for."""


class ApiCancelled(RequestCancelled):
    """A source API wait given up on a stop request; nothing more was sent."""


# --- exact (issue 7) ---


class LeaseLost(StateError):
    """The run no longer holds its pipeline's lease (fenced): it may neither post nor commit."""


# --- consent branch ---------------------------------------------------------------------------


class ExportFormatError(MailtrapError, FatalError):
    """A Mailtrap contacts export file cannot be read (no header, no email column, bad bytes)."""


class EventRejected(RecordError):
    """An events source row that cannot become a Mailtrap custom event; ``reason`` says why."""


# --- audience (issue 12) ---


class MassDeleteHeld(FatalError):
    """The mass-delete brake held a run's deletions; the rest of the run was done (exit 1)."""
