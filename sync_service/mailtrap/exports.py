"""Contact exports as Mailtrap's spec writes them: ``{id, status, created_at, updated_at, url}``.

``status`` is created | started | finished; ``url`` (the file) is set once finished. Nothing here
does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sync_service.errors import MailtrapUnexpectedAnswer

EXPORT_STATUSES = ("created", "started", "finished")


@dataclass(frozen=True, slots=True)
class ContactExport:
    id: int
    status: str
    url: str | None = None


def export_result(data: Any) -> ContactExport:
    """An export's id, status and URL, or MailtrapUnexpectedAnswer naming what was wrong."""
    if not isinstance(data, dict):
        raise MailtrapUnexpectedAnswer("unexpected answer for an export", body=data)
    ident, status, url = data.get("id"), data.get("status"), data.get("url")
    if not isinstance(ident, int) or status not in EXPORT_STATUSES:
        raise MailtrapUnexpectedAnswer(f"unexpected export answer: {str(data)[:200]}", body=data)
    if url is not None and not isinstance(url, str):
        raise MailtrapUnexpectedAnswer(f"export {ident}: url is not a string", body=data)
    return ContactExport(ident, str(status), url or None)
