"""The Mailtrap double's state: accounts, tokens, contact lists and custom fields.

``DoubleState`` is plain data plus the operations on accounts, lists and fields (contacts and
imports are in ``contacts``). It does no locking of its own: every call happens under the
owning ``MailtrapDouble``'s lock. Operations raise ``ApiError`` with Mailtrap's status and body
when Mailtrap would refuse.

Ids of lists, fields and imports come from one counter, so a list id never equals a field id or
an import id: a client that mixes them up gets a 404 or 422, not a silent hit.
"""

from __future__ import annotations

import itertools
import random
import uuid

from sync_service.testing.mailtrap.limits import ImportPolicy
from sync_service.testing.mailtrap.model import (
    DATA_TYPES,
    MAX_FIELD_NAME_LENGTH,
    MAX_FIELDS_PER_ACCOUNT,
    MAX_LIST_NAME_LENGTH,
    MAX_LISTS_PER_ACCOUNT,
    Account,
    ApiError,
    ContactList,
    Field,
    ImportJob,
    Json,
    not_found,
    unprocessable,
)

OWNER = 1000  # access_levels: 1000 owner, 100 admin, 10 viewer


class DoubleState:
    """Everything the double stores; see the module docstring."""

    def __init__(self, seed: int = 0) -> None:
        self.accounts: dict[int, Account] = {}
        self.tokens: dict[str, dict[int, int]] = {}  # token -> account id -> access level
        self.import_policy = ImportPolicy()
        self.max_contacts: int | None = None  # per account; None is unlimited
        self.pending: dict[int, ImportJob] = {}  # imports not yet finished or failed
        self._ids = itertools.count(1)
        self._uuids = random.Random(seed)  # noqa: S311 - repeatable ids, not security

    def next_id(self) -> int:
        return next(self._ids)

    def next_uuid(self) -> str:
        return str(uuid.UUID(int=self._uuids.getrandbits(128), version=4))

    # accounts and tokens

    def add_account(self, account_id: int, name: str) -> Account:
        if account_id in self.accounts:
            raise ValueError(f"account {account_id} exists already")
        account = Account(id=account_id, name=name)
        self.accounts[account_id] = account
        return account

    def grant(self, token: str, account_id: int, access_level: int = OWNER) -> None:
        """Let ``token`` see ``account_id`` (creating the token if new)."""
        if account_id not in self.accounts:
            raise KeyError(f"no account {account_id}")
        self.tokens.setdefault(token, {})[account_id] = access_level

    def accounts_json(self, token: str) -> list[dict[str, Json]]:
        """``GET /api/accounts``: the accounts this token sees."""
        grants = self.tokens.get(token, {})
        return [
            {"id": a, "name": self.accounts[a].name, "access_levels": [level]}
            for a, level in sorted(grants.items())
        ]

    def account(self, account_id: int) -> Account:
        try:
            return self.accounts[account_id]
        except KeyError:
            raise KeyError(f"no account {account_id} in the double") from None

    # contact lists

    def get_list(self, account: Account, list_id: int) -> ContactList:
        found = account.lists.get(list_id)
        if found is None:
            raise not_found()
        return found

    def create_list(self, account: Account, name: Json) -> ContactList:
        _check_name(name, MAX_LIST_NAME_LENGTH)
        if len(account.lists) >= MAX_LISTS_PER_ACCOUNT:
            raise unprocessable("base", f"cannot have more than {MAX_LISTS_PER_ACCOUNT} lists")
        created = ContactList(id=self.next_id(), name=name)
        account.lists[created.id] = created
        return created

    def update_list(self, account: Account, list_id: int, name: Json) -> ContactList:
        found = self.get_list(account, list_id)
        if name is not None:
            _check_name(name, MAX_LIST_NAME_LENGTH)
            found.name = name
        return found

    def delete_list(self, account: Account, list_id: int) -> None:
        self.get_list(account, list_id)
        del account.lists[list_id]
        for contact in account.contacts.values():
            contact.list_ids.discard(list_id)

    # custom fields

    def get_field(self, account: Account, field_id: int) -> Field:
        found = account.fields.get(field_id)
        if found is None:
            raise not_found()
        return found

    def create_field(self, account: Account, body: Json) -> Field:
        body = body if isinstance(body, dict) else {}
        name, tag, data_type = body.get("name"), body.get("merge_tag"), body.get("data_type")
        _check_name(name, MAX_FIELD_NAME_LENGTH)
        _check_name(tag, MAX_FIELD_NAME_LENGTH, attribute="merge_tag")
        if data_type not in DATA_TYPES:
            raise unprocessable("data_type", "is not included in the list")
        _check_unique(account, name, tag, exclude=None)
        if len(account.fields) >= MAX_FIELDS_PER_ACCOUNT:
            raise unprocessable("base", f"cannot have more than {MAX_FIELDS_PER_ACCOUNT} fields")
        created = Field(id=self.next_id(), name=name, merge_tag=tag, data_type=data_type)
        account.fields[created.id] = created
        return created

    def update_field(self, account: Account, field_id: int, body: Json) -> Field:
        found = self.get_field(account, field_id)
        body = body if isinstance(body, dict) else {}
        if "data_type" in body and body["data_type"] != found.data_type:
            raise unprocessable("data_type", "cannot be changed")
        name, tag = body.get("name", found.name), body.get("merge_tag", found.merge_tag)
        _check_name(name, MAX_FIELD_NAME_LENGTH)
        _check_name(tag, MAX_FIELD_NAME_LENGTH, attribute="merge_tag")
        _check_unique(account, name, tag, exclude=field_id)
        if tag != found.merge_tag:
            for contact in account.contacts.values():
                if found.merge_tag in contact.fields:
                    contact.fields[tag] = contact.fields.pop(found.merge_tag)
        found.name, found.merge_tag = name, tag
        return found

    def delete_field(self, account: Account, field_id: int) -> None:
        found = self.get_field(account, field_id)
        del account.fields[field_id]
        for contact in account.contacts.values():
            contact.fields.pop(found.merge_tag, None)


def _check_name(value: Json, max_length: int, *, attribute: str = "name") -> None:
    if not isinstance(value, str) or not value.strip():
        raise unprocessable(attribute, "can't be blank")
    if len(value) > max_length:
        raise unprocessable(attribute, f"is too long (maximum is {max_length} characters)")


def _check_unique(account: Account, name: str, tag: str, *, exclude: int | None) -> None:
    errors: dict[str, list[str]] = {}
    for other in account.fields.values():
        if other.id == exclude:
            continue
        if other.name == name:
            errors["name"] = ["has already been taken"]
        if other.merge_tag == tag:
            errors["merge_tag"] = ["has already been taken"]
    if errors:
        raise ApiError(422, {"errors": errors})
