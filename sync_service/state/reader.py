"""The read-only view of the state store that deciding what to send needs.

``SyncJob.plan`` and the job's scan read through this protocol, so a dry run can be handed a view
that never writes (``StateStore`` itself satisfies it, as does the CLI's view of a store that does
not exist yet).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from sync_service.models import Position, Rejection, StoredContact


class StateReader(Protocol):
    """Watermarks, confirmed contacts and email owners of a pipeline; reads only."""

    def get_watermark(self, pipeline: str) -> Position | None:
        """Where the pipeline's next read starts (None: from the beginning)."""

    def get_contacts(self, pipeline: str, keys: Sequence[str]) -> dict[str, StoredContact]:
        """The confirmed state of the given source keys (missing keys are absent)."""

    def get_owners(self, pipeline: str, emails: Sequence[str]) -> dict[str, str]:
        """The live source key owning each given email (unowned emails are absent)."""

    def get_holders(self, pipeline: str, emails: Sequence[str]) -> dict[str, list[str]]:
        """Every source key whose confirmed, not deleted contact has each given email."""

    def get_rejections(self, pipeline: str, keys: Sequence[str]) -> dict[str, Rejection]:
        """The rejections on record for the given keys (with the hash Mailtrap refused)."""

    def live_keys(self, pipeline: str) -> Iterator[list[str]]:
        """The keys whose confirmed contact is not a tombstone, a chunk at a time."""
