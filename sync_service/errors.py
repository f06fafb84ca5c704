"""The project's errors, grouped by how a caller reacts to them.

- ``ConfigError``: the operator must change configuration; the CLI exits 2.
- ``RetriableError``: a passing fault (429, 5xx, timeout, dropped connection); try again later.
- ``FatalError``: the run cannot go on (bad token, missing account, source unreachable).
- ``RecordError``: one record cannot be sent; it is recorded with its reason and the run goes on.

Third-party exceptions (httpx, SQLAlchemy) are translated where they enter, with ``raise ... from``.
"""

from __future__ import annotations


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


class PipelineBusy(SyncError):
    """Another process holds this pipeline's lease."""


class RecordError(SyncError):
    """One record cannot be turned into a contact; ``reason`` says why."""

    def __init__(self, reason: str, *, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


class MailtrapError(SyncError):
    """An answer from Mailtrap that the client did not expect."""

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


class MailtrapAuthError(MailtrapError, FatalError):
    """401/403: the token is wrong or lacks access to the account."""


class MailtrapNotFound(MailtrapError):
    """404 for a resource the client asked for."""


class MailtrapValidationError(MailtrapError):
    """422: Mailtrap rejected the request; ``contact_errors`` maps email to its reasons."""

    def __init__(
        self, message: str, *, status: int | None = 422, body: object = None,
        contact_errors: dict[str, list[str]] | None = None,
    ) -> None:
        super().__init__(message, status=status, body=body)
        self.contact_errors = contact_errors or {}


# --- consent branch ---------------------------------------------------------------------------


class ExportFormatError(MailtrapError):
    """A Mailtrap contacts export file cannot be read (no header, no email column, bad bytes)."""


class EventRejected(RecordError):
    """An events source row that cannot become a Mailtrap custom event; ``reason`` says why."""
