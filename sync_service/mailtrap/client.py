"""A synchronous client for the parts of Mailtrap's contacts API that mailtrap-sync uses.

Built on the shared HTTP toolkit (``sync_service.httpkit``) with Mailtrap's own policy
(``MailtrapPolicy``): the machinery below is the toolkit's, the meaning of answers is Mailtrap's.

It knows nothing of the state store. It takes an injected ``httpx`` transport, paces every
request under Mailtrap's limits, retries what is retriable with exponential backoff and jitter
(tenacity), and turns every answer it did not expect into a ``MailtrapError``.
Which statuses are retriable is decided in exactly one place: ``answers.raise_for`` (429, 408
and 5xx); timeouts and dropped connections are retriable too. A 429's ``Retry-After`` is
honoured, plus jitter.

Waits can be cut short: inside ``with client.stoppable(should_stop):`` a blocked permit or a
retry back-off gives up as soon as ``should_stop()`` is true, raising ``MailtrapCancelled``
(nothing more is sent), and ``wait_for_import`` returns None. A request already on the wire is
not aborted.

Mailtrap unreachable (connection refused, DNS failure, connect timeout) is retried too, but for
at most ``unreachable_timeout`` seconds in all (and connecting waits at most ``connect_timeout``
per attempt); then ``MailtrapUnreachable`` names the URL. ``check`` uses a few seconds, a run the
``mailtrap.unreachable_timeout`` setting.

Creating a list is idempotent: a retry first looks for a list of that name, in case the failed
attempt was carried out (a connection dropped after Mailtrap created it).

Paths are account-scoped: ``/api/accounts/{account_id}/contacts/...``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import quote

import httpx
import orjson
import structlog

from sync_service import __version__, httpkit
from sync_service.errors import (
    ConfigError,
    FatalError,
    MailtrapAuthError,
    MailtrapNotFound,
    MailtrapRetriable,
    MailtrapUnexpectedAnswer,
    MailtrapUnreachable,
)
from sync_service.errors import MailtrapCancelled as MailtrapCancelled  # noqa: PLC0414 - old home
from sync_service.mailtrap.answers import as_object, import_result, items, raise_for
from sync_service.mailtrap.exports import ContactExport, export_result
from sync_service.models import ImportResult
from sync_service.pacing import Pacer

log = structlog.get_logger(__name__)
STOP_CHECK_S = httpkit.STOP_CHECK_S  # how often a wait looks at should_stop
ResponseHook = httpkit.ResponseHook
StopCheck = httpkit.StopCheck


@dataclass(frozen=True)
class MailtrapPolicy(httpkit.ApiPolicy):
    """Mailtrap's answers are decided by ``answers.raise_for``; its errors are Mailtrap's own."""

    api: str = "Mailtrap"
    config_key: str = "mailtrap.api_url"
    retry_event: str = "mailtrap.retry"
    unreachable_key: str = "mailtrap.unreachable_timeout"

    def answer(self, method: str, url: str, response: httpx.Response) -> Any:
        return raise_for(method, url, response)

    def transport_failure(self, message: str) -> Exception:
        return MailtrapRetriable(message)

    def cancelled(self, message: str) -> Exception:
        return MailtrapCancelled(message)

    def unreachable(self, message: str) -> Exception:
        return MailtrapUnreachable(message)

    def is_unreachable(self, exc: BaseException | None) -> bool:
        return isinstance(exc, MailtrapUnreachable)

    def retry_in_call(self, exc: BaseException) -> bool:
        return isinstance(exc, MailtrapRetriable)

    def expired(self, exc: BaseException) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class ContactList:
    id: int
    name: str


@dataclass(frozen=True, slots=True)
class ContactField:
    id: int
    name: str
    merge_tag: str
    data_type: str


class MailtrapClient:
    """Talks to one Mailtrap account with one API token."""

    def __init__(
        self,
        *,
        token: str,
        base_url: str = "https://mailtrap.io",
        account_id: int | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
        pacer: Pacer | None = None,
        max_retries: int = 8,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        on_response: ResponseHook | None = None,
        sleep: Callable[[float], object] = time.sleep,
        unreachable_timeout: float = 60.0,
        connect_timeout: float = 10.0,
        download_transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._api = httpkit.JsonClient(
            policy=MailtrapPolicy(), base_url=base_url, transport=transport, timeout=timeout,
            headers={"Authorization": f"Bearer {token}"}, pacer=pacer,
            max_retries=max_retries, retry_initial=retry_initial, retry_max=retry_max,
            on_response=on_response, sleep=sleep, unreachable_timeout=unreachable_timeout,
            connect_timeout=connect_timeout,
        )
        self._account_id = account_id
        self._timeout = timeout
        # Export files are fetched without the API token (the URL is pre-signed elsewhere).
        self._download_transport = download_transport
        self._downloads: httpx.Client | None = None

    def close(self) -> None:
        self._api.close()
        if self._downloads is not None:
            self._downloads.close()

    def __enter__(self) -> MailtrapClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def stoppable(self, should_stop: StopCheck) -> Iterator[None]:
        """Within the block (in this thread), waits give up once ``should_stop()`` is true."""
        with httpkit.stoppable(should_stop):
            yield

    # accounts -----------------------------------------------------------------------------
    def accounts(self) -> list[dict[str, Any]]:
        data = self._request("GET", "/api/accounts", group="accounts", scoped=False)
        if not isinstance(data, list):
            raise MailtrapUnexpectedAnswer("GET /api/accounts did not answer a list", body=data)
        return [a for a in data if isinstance(a, dict)]

    @property
    def account_id(self) -> int:
        if self._account_id is None:
            self._account_id = self.resolve_account()
        return self._account_id

    def resolve_account(self) -> int:
        """The configured account, checked against the token; or the token's only account."""
        ids = [int(a["id"]) for a in self.accounts() if "id" in a]
        if self._account_id is not None:
            if self._account_id not in ids:
                raise MailtrapAuthError(
                    f"the API token has no access to account {self._account_id} "
                    f"(it sees: {', '.join(map(str, ids)) or 'none'})"
                )
            return self._account_id
        if not ids:
            raise FatalError("the API token sees no Mailtrap account")
        if len(ids) > 1:
            raise ConfigError(
                "the API token sees several accounts ("
                + ", ".join(map(str, ids))
                + "): set [mailtrap] account_id or MAILTRAP_ACCOUNT_ID"
            )
        return ids[0]

    # lists and fields ----------------------------------------------------------------------
    def lists(self) -> list[ContactList]:
        data = self._request("GET", "/contacts/lists", group="lists")
        return [ContactList(int(i["id"]), str(i["name"])) for i in items(data, "lists")]

    def create_list(self, name: str) -> ContactList:
        """Create a list; a retry first re-lists, in case the failed attempt created it."""
        url, account = self._url("/contacts/lists"), self.account_id
        for attempt in self._api.retrying():
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    found = next((item for item in self.lists() if item.name == name), None)
                    if found is not None:
                        log.info("mailtrap.list_found_after_retry", list=name, list_id=found.id)
                        return found
                data = self._send("POST", url, group="lists", json={"name": name},
                                  account=account)
                item = as_object(data, "created list")
                return ContactList(int(item["id"]), str(item["name"]))
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    def fields(self) -> list[ContactField]:
        data = self._request("GET", "/contacts/fields", group="fields")
        return [
            ContactField(int(i["id"]), str(i["name"]), str(i["merge_tag"]), str(i["data_type"]))
            for i in items(data, "fields")
        ]

    def create_field(self, name: str, merge_tag: str, data_type: str) -> ContactField:
        """Create a custom field; a retry first re-lists, in case the failed attempt created it."""
        url, account = self._url("/contacts/fields"), self.account_id
        body = {"name": name, "merge_tag": merge_tag, "data_type": data_type}
        for attempt in self._api.retrying():
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    found = next((f for f in self.fields() if f.merge_tag == merge_tag), None)
                    if found is not None:
                        log.info("mailtrap.field_found_after_retry", merge_tag=merge_tag,
                                 field_id=found.id)
                        return found
                data = self._send("POST", url, group="fields", json=body, account=account)
                item = as_object(data, "created field")
                return ContactField(int(item["id"]), str(item["name"]), str(item["merge_tag"]),
                                    str(item["data_type"]))
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    def delete_contact(self, identifier: str) -> bool:
        """Delete a contact (by id or email); False when Mailtrap does not know it."""
        try:
            self._request("DELETE", f"/contacts/{quote(identifier, safe='')}", group="contacts")
        except MailtrapNotFound:
            return False
        return True

    # imports --------------------------------------------------------------------------------
    def create_import(self, contacts: Sequence[Mapping[str, Any]]) -> ImportResult:
        """POST one bulk import (≤ 50,000 contacts); 422 raises MailtrapValidationError."""
        return self.create_import_body(orjson.dumps({"contacts": list(contacts)}), len(contacts))

    def create_import_body(self, body: bytes, count: int) -> ImportResult:
        """As ``create_import``, with the request body already encoded
        (``models.import_body``: ``{"contacts": [...]}`` of ``count`` contacts)."""
        if not 0 < count <= 50_000:
            raise ValueError(f"an import carries 1..50000 contacts, not {count}")
        return import_result(
            self._request("POST", "/contacts/imports", content=body, group="imports"))

    def get_import(self, import_id: int) -> ImportResult:
        return import_result(
            self._request("GET", f"/contacts/imports/{import_id}", group="imports")
        )

    def wait_for_import(
        self,
        import_id: int,
        *,
        interval: float = 2.0,
        max_interval: float = 30.0,
        timeout: float = 7200.0,
        should_stop: StopCheck | None = None,
    ) -> ImportResult | None:
        """Poll until finished or failed; None if ``should_stop`` (or ``stoppable``'s) says so.

        Each poll is retried like any request. Raises MailtrapRetriable if the import is still
        running after ``timeout`` seconds (its batch stays posted; a later run polls it again).
        """
        stop = should_stop or httpkit.current_stop() or (lambda: False)
        deadline = time.monotonic() + timeout
        while True:
            result = self.get_import(import_id)
            if result.done:
                return result
            if time.monotonic() + interval > deadline:
                raise MailtrapRetriable(f"import {import_id} still {result.status} after "
                                        f"{timeout:.0f}s")
            if not self._api.pause(interval, stop):
                return None
            interval = min(interval * 1.5, max_interval)

    # contacts -------------------------------------------------------------------------------
    def get_contact(self, identifier: str) -> dict[str, Any] | None:
        try:
            data = self._request("GET", f"/contacts/{quote(identifier, safe='')}",
                                 group="contacts")
        except MailtrapNotFound:
            return None
        body = as_object(data, "contact")
        inner = body.get("data", body)
        return inner if isinstance(inner, dict) else None

    def update_contact(self, identifier: str, contact: Mapping[str, Any]) -> None:
        self._request("PATCH", f"/contacts/{quote(identifier, safe='')}",
                      json={"contact": dict(contact)}, group="contacts")

    # --- consent branch: unsubscribe, contact events, exports ---------------------------------
    def unsubscribe_contact(self, email: str) -> None:
        """PATCH the contact unsubscribed (idempotent; the spec wants the email in the body).

        Nothing here ever sends ``unsubscribed: false``.
        """
        self._request("PATCH", f"/contacts/{quote(email, safe='')}",
                      json={"contact": {"email": email, "unsubscribed": True}}, group="contacts")

    def create_contact_event(
        self, identifier: str, name: str, params: Mapping[str, Any], *,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        """POST one custom event, retried like every request.

        The endpoint has no idempotency key: when an attempt gets no answer (a cut connection, a
        timeout) the event may have arrived, and ``on_lost`` is called before it is sent again.
        A 5xx or 429 is an answer: Mailtrap did not take the event. 404: no such contact.
        """
        url, account = self._url(f"/contacts/{quote(identifier, safe='')}/events"), self.account_id
        body = {"name": name, "params": dict(params)}
        for attempt in self._api.retrying():
            with attempt:
                try:
                    self._send("POST", url, group="events", json=body, account=account)
                except MailtrapRetriable as exc:
                    # No answer at all, though a connection was made: the event may have arrived.
                    lost = exc.status is None and not isinstance(exc, MailtrapUnreachable)
                    if lost and on_lost is not None:
                        on_lost()
                    raise
                return
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    def create_export(self, *, list_ids: Sequence[int] = (),
                      subscription_status: str | None = None) -> ContactExport:
        """POST a contacts export, filtered by lists and/or subscription status."""
        filters: list[dict[str, Any]] = []
        if list_ids:
            filters.append({"name": "list_id", "operator": "equal", "value": list(list_ids)})
        if subscription_status is not None:
            filters.append({"name": "subscription_status", "operator": "equal",
                            "value": subscription_status})
        data = self._request("POST", "/contacts/exports", json={"filters": filters},
                             group="exports")
        return export_result(data)

    def get_export(self, export_id: int) -> ContactExport:
        return export_result(self._request("GET", f"/contacts/exports/{export_id}",
                                           group="exports"))

    def wait_for_export(self, export_id: int, *, interval: float = 2.0,
                        max_interval: float = 30.0, timeout: float = 3600.0
                        ) -> ContactExport | None:
        """Poll until finished (with a URL); None if a stop was requested meanwhile."""
        stop = httpkit.current_stop() or (lambda: False)
        deadline = time.monotonic() + timeout
        while True:
            result = self.get_export(export_id)
            if result.status == "finished" and result.url:
                return result
            if time.monotonic() + interval > deadline:
                raise MailtrapRetriable(f"export {export_id} still {result.status} after "
                                        f"{timeout:.0f}s")
            if not self._api.pause(interval, stop):
                return None
            interval = min(interval * 1.5, max_interval)

    def download(self, url: str, sink: BinaryIO, *, chunk_size: int = 65_536) -> int:
        """Stream a file (an export) into ``sink``; returns the bytes written. No API token."""
        for attempt in self._api.retrying():
            with attempt:
                sink.seek(0)
                sink.truncate()
                return self._download_once(url, sink, chunk_size)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    def _download_once(self, url: str, sink: BinaryIO, chunk_size: int) -> int:
        written = 0
        if self._downloads is None:
            self._downloads = httpx.Client(
                transport=self._download_transport, timeout=self._timeout,
                headers={"User-Agent": f"mailtrap-sync/{__version__}"}, follow_redirects=True)
        try:
            with self._downloads.stream("GET", url) as response:
                if response.status_code >= 500 or response.status_code in (408, 429):
                    raise MailtrapRetriable(f"GET {url} → {response.status_code}",
                                            status=response.status_code)
                if response.status_code != 200:
                    raise MailtrapUnexpectedAnswer(
                        f"GET {url} → {response.status_code}: cannot download the export",
                        status=response.status_code)
                for chunk in response.iter_bytes(chunk_size):
                    sink.write(chunk)
                    written += len(chunk)
        except httpx.TransportError as exc:
            raise MailtrapRetriable(f"GET {url}: {type(exc).__name__}: {exc}") from exc
        return written

    # plumbing ---------------------------------------------------------------------------------
    def _url(self, path: str, *, scoped: bool = True) -> str:
        return f"/api/accounts/{self.account_id}{path}" if scoped else path

    def _request(
        self, method: str, path: str, *, group: str, json: Any = None, scoped: bool = True,
        content: bytes | None = None,
    ) -> Any:
        url = self._url(path, scoped=scoped)
        account = self.account_id if scoped else None
        return self._api.request(method, url, json=json, group=group, pace_key=account,
                                 content=content)

    def _send(self, method: str, url: str, *, group: str, json: Any, account: int | None) -> Any:
        """One paced attempt, no retry (``create_list`` runs its own retry loop)."""
        return self._api.send(method, url, json=json, group=group, pace_key=account).body
