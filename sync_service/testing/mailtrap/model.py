"""Plain state objects of the Mailtrap double, and their JSON shapes as the spec writes them.

Mutable records (``Account``, ``ContactList``, ``Field``, ``Contact``, ``ImportJob``) live only
inside the double, behind its lock. Tests see frozen snapshots (``*View``) taken under that lock,
so a snapshot never changes under a test's feet. Emails are keyed case-insensitively by
``email_key``.
"""

from __future__ import annotations

import copy
import secrets
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

MAX_FIELDS_PER_ACCOUNT = 40
MAX_LISTS_PER_ACCOUNT = 50
MAX_CONTACTS_PER_IMPORT = 50_000
MAX_TEXT_LENGTH = 255
MAX_FIELD_NAME_LENGTH = 80  # the spec's limit; Mailtrap's docs say 50
MAX_LIST_NAME_LENGTH = 255
DATA_TYPES = frozenset({"text", "integer", "float", "boolean", "date"})

ContactStatus = Literal["subscribed", "unsubscribed"]
ImportStatus = Literal["created", "started", "finished", "failed"]
Json = Any  # parsed JSON: dict / list / str / int / float / bool / None


def email_key(email: str) -> str:
    """The key under which a contact is stored: Mailtrap compares emails case-insensitively."""
    return email.lower()


@dataclass
class Account:
    """A Mailtrap account and what lives in it."""

    id: int
    name: str
    lists: dict[int, ContactList] = field(default_factory=dict)
    fields: dict[int, Field] = field(default_factory=dict)
    contacts: dict[str, Contact] = field(default_factory=dict)  # email_key -> contact
    imports: dict[int, ImportJob] = field(default_factory=dict)

    def field_by_tag(self, merge_tag: str) -> Field | None:
        """The field with this merge tag, if any."""
        return next((f for f in self.fields.values() if f.merge_tag == merge_tag), None)

    def contact_by_id(self, contact_id: str) -> Contact | None:
        """The contact with this UUID, if any."""
        return next((c for c in self.contacts.values() if c.id == contact_id), None)


@dataclass
class ContactList:
    id: int
    name: str

    def to_json(self) -> dict[str, Json]:
        return {"id": self.id, "name": self.name}


@dataclass
class Field:
    id: int
    name: str
    merge_tag: str
    data_type: str

    def to_json(self) -> dict[str, Json]:
        return {
            "id": self.id,
            "name": self.name,
            "data_type": self.data_type,
            "merge_tag": self.merge_tag,
        }


@dataclass
class Contact:
    id: str
    email: str
    fields: dict[str, Json]
    list_ids: set[int]
    status: ContactStatus
    created_at: int  # epoch milliseconds, as Mailtrap reports them
    updated_at: int

    def to_json(self) -> dict[str, Json]:
        return {
            "id": self.id,
            "email": self.email,
            "fields": copy.deepcopy(self.fields),
            "list_ids": sorted(self.list_ids),
            "status": self.status,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass
class ImportJob:
    id: int
    account_id: int
    contacts: list[dict[str, Json]]  # as posted (validated)
    created_at: float  # double clock
    status: ImportStatus = "created"
    polls: int = 0
    created_count: int = 0
    updated_count: int = 0
    over_limit_count: int = 0

    def to_json(self) -> dict[str, Json]:
        body: dict[str, Json] = {"id": self.id, "status": self.status}
        if self.status == "finished":
            body["created_contacts_count"] = self.created_count
            body["updated_contacts_count"] = self.updated_count
            body["contacts_over_limit_count"] = self.over_limit_count
        return body


@dataclass(frozen=True)
class ContactView:
    """A snapshot of one contact, for tests."""

    id: str
    email: str
    fields: MappingProxyType[str, Json]
    list_ids: frozenset[int]
    status: ContactStatus
    created_at: int
    updated_at: int

    @classmethod
    def of(cls, contact: Contact) -> ContactView:
        return cls(
            id=contact.id,
            email=contact.email,
            fields=MappingProxyType(copy.deepcopy(contact.fields)),
            list_ids=frozenset(contact.list_ids),
            status=contact.status,
            created_at=contact.created_at,
            updated_at=contact.updated_at,
        )


@dataclass(frozen=True)
class FieldView:
    """A snapshot of one custom field, for tests."""

    id: int
    name: str
    merge_tag: str
    data_type: str


@dataclass(frozen=True)
class ImportView:
    """A snapshot of one import job, with the contacts it carried, for tests."""

    id: int
    account_id: int
    status: ImportStatus
    polls: int
    contacts: tuple[MappingProxyType[str, Json], ...]
    created_contacts_count: int
    updated_contacts_count: int
    contacts_over_limit_count: int

    @classmethod
    def of(cls, job: ImportJob) -> ImportView:
        return cls(
            id=job.id,
            account_id=job.account_id,
            status=job.status,
            polls=job.polls,
            contacts=tuple(MappingProxyType(copy.deepcopy(c)) for c in job.contacts),
            created_contacts_count=job.created_count,
            updated_contacts_count=job.updated_count,
            contacts_over_limit_count=job.over_limit_count,
        )

    @property
    def emails(self) -> list[str]:
        """The emails this import carried, in order."""
        return [str(c.get("email")) for c in self.contacts]


@dataclass(frozen=True)
class LoggedRequest:
    """One request the double received, as it answered it.

    ``status`` is None when the connection was dropped without a response; ``fault`` names the
    injected fault ("500", "429", "drop_before", "drop_after") or is None. ``body`` is the parsed
    JSON body (None when absent or not JSON).
    """

    time: float
    method: str
    path: str
    status: int | None
    token: str | None
    account_id: int | None
    body: Json
    fault: str | None = None

    @property
    def is_write(self) -> bool:
        return self.method not in {"GET", "HEAD", "OPTIONS"}

    @property
    def is_contacts(self) -> bool:
        """Whether this request hit an account's contacts API (the 200/60 s budget)."""
        return self.account_id is not None and "/contacts" in self.path


class ApiError(Exception):
    """An answer other than success, raised by the double's operations: status and JSON body."""

    def __init__(self, status: int, body: Json) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body


def not_found() -> ApiError:
    """The spec's generic 404 (``NotFoundResponse``)."""
    return ApiError(404, {"error": "Not Found"})


def unprocessable(attribute: str, message: str) -> ApiError:
    """A 422 in the spec's ``UnprocessableEntity`` shape, for one attribute."""
    return ApiError(422, {"errors": {attribute: [message]}})


# --- consent branch: custom events and contact exports (behaviour in double_state) ----------

EXPORT_SECONDS = 5.0  # an export finishes on its second poll or after this long (double clock)


@dataclass(frozen=True)
class ReceivedEvent:
    """One custom event the double accepted."""

    account_id: int
    email: str
    name: str
    params: dict[str, Json]
    time: float


@dataclass
class ExportJob:
    id: int
    account_id: int
    filters: list[dict[str, Json]]
    created_at: float
    stamp: str
    status: str = "created"
    polls: int = 0
    token: str = field(default_factory=lambda: secrets.token_hex(12))
    content: bytes | None = None

    def to_json(self, base_url: str) -> dict[str, Json]:
        # Mailtrap's example shows "url": null before the end, but the spec (OpenAPI 3.1, where
        # "nullable" means nothing) only allows a string: the double leaves the key out.
        body: dict[str, Json] = {"id": self.id, "status": self.status,
                                 "created_at": self.stamp, "updated_at": self.stamp}
        if self.status == "finished":
            body["url"] = f"{base_url.rstrip('/')}/downloads/exports/{self.token}.csv.gz"
        return body


@dataclass
class AudienceState:
    """Events received and exports made, across accounts."""

    events: list[ReceivedEvent] = field(default_factory=list)
    exports: dict[int, ExportJob] = field(default_factory=dict)
    export_seconds: float = EXPORT_SECONDS
    # Exports are written as gzip unless a test asks for plain CSV (a format variation).
    gzip_exports: bool = True
