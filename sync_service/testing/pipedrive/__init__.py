"""A stateful Pipedrive API double (persons v2, person fields v2, recents v1, 429s)."""

from __future__ import annotations

from sync_service.testing.pipedrive.double import (
    DEFAULT_TOKEN,
    LoggedRequest,
    PipedriveDouble,
    rfc3339,
)

__all__ = ["DEFAULT_TOKEN", "LoggedRequest", "PipedriveDouble", "rfc3339"]
