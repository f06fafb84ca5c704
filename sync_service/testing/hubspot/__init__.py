"""A stateful HubSpot CRM v3 contacts double (``HubSpotDouble``) for tests, demos and benches."""

from __future__ import annotations

from sync_service.testing.hubspot.double import DEFAULT_TOKEN, SEARCH_CAP, HubSpotDouble

__all__ = ["DEFAULT_TOKEN", "SEARCH_CAP", "HubSpotDouble"]
