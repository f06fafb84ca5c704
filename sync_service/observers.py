"""What the job and the Mailtrap client report as they work: the observer protocols.

Observers are how the CLI (progress), the daemon (Prometheus metrics) and tests watch a run
without the job knowing any of them. They live here, apart from the job and delivery, so both
can name them without importing each other. Every method is optional work for the observer and
must be cheap and must not raise: it runs on the job's (or the client's) thread.
"""

from __future__ import annotations

from typing import Protocol

from sync_service.models import ImportResult


class RunObserver(Protocol):
    """What a run reports as it goes: reading progress and every finished import."""

    def records_read(self, pipeline: str, count: int) -> None:
        """``count`` more source records of ``pipeline`` were read and diffed."""

    def import_done(self, pipeline: str, result: ImportResult) -> None:
        """An import of ``pipeline`` reached a final status."""


class RequestObserver(Protocol):
    """What the Mailtrap client reports: one call per HTTP answer (status 0: no answer)."""

    def request_done(self, group: str, status: int) -> None:
        """A request of endpoint ``group`` ended with ``status``."""
