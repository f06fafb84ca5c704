"""A stateful Salesforce REST API double (OAuth token endpoint, SOQL query/queryAll, limits)."""

from __future__ import annotations

from sync_service.testing.salesforce.double import (
    API_VERSION,
    JWT_BEARER,
    LoggedRequest,
    SalesforceDouble,
    format_datetime,
)

__all__ = ["API_VERSION", "JWT_BEARER", "LoggedRequest", "SalesforceDouble", "format_datetime"]
