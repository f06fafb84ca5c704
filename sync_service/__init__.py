"""mailtrap-sync: keeps Mailtrap marketing contacts in step with a CRM or SQL database."""

from __future__ import annotations

__version__ = "0.1.0"
