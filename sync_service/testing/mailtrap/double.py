"""A stateful test double of Mailtrap's contacts API, served as an ASGI app.

``MailtrapDouble`` behaves like Mailtrap for everything mailtrap-sync uses, on the account-scoped
paths (``/api/accounts/{account_id}/contacts/...``) and ``GET /api/accounts``, with the status
codes and error bodies of Mailtrap's OpenAPI specs: lists, custom fields, single contacts, and
asynchronous bulk imports that are validated in full when posted and applied atomically when they
finish. It enforces Mailtrap's rate limits (200 contacts requests / 60 s per account, 150
requests / 10 s per token; 429 ``{"errors": "Rate limit exceeded"}``, no headers), and injects
faults on demand (500s, dropped connections, 429 bursts, failed or slow imports, refused emails),
all drawn from a seeded ``random.Random`` so runs repeat.

Reach it in-process with ``InProcessTransport(double.app)`` or over HTTP with
``serve(double)``; inspect it with ``contacts()``, ``lists()``, ``fields()``, ``imports()`` and
``requests()``. Defaults: one account 1001 "Demo" seen by token "test-token".

State is plain objects guarded by ``double.lock`` (re-entrant): requests are served under it, so
a test may inspect while a server thread answers. Behaviour rules are documented where they
live: ``rules`` (422s), ``contacts`` (imports), ``limits`` (knobs).

Run one by hand: ``python -m sync_service.testing.mailtrap.double --port 8025``.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping

from starlette.types import ASGIApp

from sync_service.testing.mailtrap import contacts
from sync_service.testing.mailtrap.app import build_app
from sync_service.testing.mailtrap.limits import (
    DropError,
    FakeClock,
    Fault,
    Faults,
    ImportPolicy,
    RateLimits,
    SlidingWindow,
)
from sync_service.testing.mailtrap.model import (
    ApiError,
    AudienceState,
    ContactView,
    FieldView,
    ImportView,
    Json,
    LoggedRequest,
    ReceivedEvent,
    email_key,
)
from sync_service.testing.mailtrap.server import serve
from sync_service.testing.mailtrap.state import OWNER, DoubleState

__all__ = [
    "DEFAULT_ACCOUNT_ID",
    "DEFAULT_TOKEN",
    "ContactView",
    "DropError",
    "FakeClock",
    "Fault",
    "Faults",
    "FieldView",
    "ImportPolicy",
    "ImportView",
    "LoggedRequest",
    "MailtrapDouble",
    "RateLimits",
    "serve",
]

DEFAULT_ACCOUNT_ID = 1001
DEFAULT_ACCOUNT_NAME = "Demo"
DEFAULT_TOKEN = "test-token"  # noqa: S105 - the double's published demo token
_RATE_LIMITED: Json = {"errors": "Rate limit exceeded"}


class MailtrapDouble:
    """The double; see the module docstring. All public methods are thread-safe."""

    def __init__(
        self,
        *,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
        rate_limits: RateLimits | None = None,
        import_policy: ImportPolicy | None = None,
        max_contacts: int | None = None,
        default_account: bool = True,
    ) -> None:
        self.lock = threading.RLock()
        self.clock = clock
        self.rate_limits = rate_limits or RateLimits()
        self.faults = Faults()
        self._state = DoubleState(seed)
        self._state.import_policy = import_policy or ImportPolicy()
        self._state.max_contacts = max_contacts
        self._rng = random.Random(seed)  # noqa: S311 - repeatable faults, not security
        self._windows = SlidingWindow()
        self._log: list[LoggedRequest] = []
        self._app: ASGIApp | None = None
        self.audience = AudienceState()  # consent branch: events and exports
        if default_account:
            self.add_account(DEFAULT_ACCOUNT_ID, DEFAULT_ACCOUNT_NAME, token=DEFAULT_TOKEN)

    @property
    def app(self) -> ASGIApp:
        """The ASGI app (built once)."""
        with self.lock:
            if self._app is None:
                self._app = build_app(self)
            return self._app

    # configuration

    @property
    def import_policy(self) -> ImportPolicy:
        return self._state.import_policy

    @import_policy.setter
    def import_policy(self, policy: ImportPolicy) -> None:
        with self.lock:
            self._state.import_policy = policy

    @property
    def max_contacts(self) -> int | None:
        """Contact quota per account (None: unlimited); new contacts beyond it are not stored."""
        return self._state.max_contacts

    @max_contacts.setter
    def max_contacts(self, quota: int | None) -> None:
        with self.lock:
            self._state.max_contacts = quota

    def force(self, *outcomes: Fault) -> None:
        """The next requests end this way, in order: "429", "500", "drop_before", "drop_after"."""
        with self.lock:
            self.faults.forced.extend(outcomes)

    def force_429(self, count: int) -> None:
        """The next ``count`` requests answer 429, whatever they are."""
        outcomes: list[Fault] = ["429"] * count
        self.force(*outcomes)

    # seeding

    def add_account(
        self, account_id: int, name: str, *, token: str | None = None, access_level: int = OWNER
    ) -> None:
        """A new account, optionally visible to ``token``."""
        with self.lock:
            self._state.add_account(account_id, name)
            if token is not None:
                self._state.grant(token, account_id, access_level)

    def grant(self, token: str, account_id: int, access_level: int = OWNER) -> None:
        """Let ``token`` see ``account_id`` (10 viewer: read only, 100 admin, 1000 owner)."""
        with self.lock:
            self._state.grant(token, account_id, access_level)

    def add_list(self, name: str, account_id: int = DEFAULT_ACCOUNT_ID) -> int:
        """A new contact list; returns its id."""
        with self.lock:
            return self._state.create_list(self._state.account(account_id), name).id

    def add_field(
        self,
        merge_tag: str,
        data_type: str = "text",
        *,
        name: str | None = None,
        account_id: int = DEFAULT_ACCOUNT_ID,
    ) -> int:
        """A new custom field; returns its id. ``name`` defaults to the merge tag."""
        body = {"name": name or merge_tag, "merge_tag": merge_tag, "data_type": data_type}
        with self.lock:
            return self._state.create_field(self._state.account(account_id), body).id

    def add_contact(
        self,
        email: str,
        *,
        fields: Mapping[str, Json] | None = None,
        list_ids: Iterable[int] = (),
        unsubscribed: bool = False,
        account_id: int = DEFAULT_ACCOUNT_ID,
    ) -> str:
        """A contact stored directly (no validation, no quota); returns its id."""
        with self.lock:
            account = self._state.account(account_id)
            saved = self._state.max_contacts
            self._state.max_contacts = None
            try:
                contact = contacts.new_contact(self._state, account, email)
            finally:
                self._state.max_contacts = saved
            if contact is None:
                raise RuntimeError("unreachable: no quota applies while seeding")
            contacts.merge(account, contact, dict(fields or {}), list(list_ids), [])
            if unsubscribed:
                contact.status = "unsubscribed"
            return contact.id

    # inspection

    def contacts(self, account_id: int = DEFAULT_ACCOUNT_ID) -> dict[str, ContactView]:
        """The account's contacts, keyed by lower-cased email."""
        with self.lock:
            self._settle()
            stored = self._state.account(account_id).contacts
            return {key: ContactView.of(c) for key, c in stored.items()}

    def contact(self, email: str, account_id: int = DEFAULT_ACCOUNT_ID) -> ContactView | None:
        """One contact by email (case-insensitive), or None."""
        return self.contacts(account_id).get(email_key(email))

    def lists(self, account_id: int = DEFAULT_ACCOUNT_ID) -> dict[int, str]:
        """The account's contact lists: id -> name."""
        with self.lock:
            return {i: x.name for i, x in self._state.account(account_id).lists.items()}

    def fields(self, account_id: int = DEFAULT_ACCOUNT_ID) -> dict[str, FieldView]:
        """The account's custom fields, keyed by merge tag."""
        with self.lock:
            stored = self._state.account(account_id).fields.values()
            return {f.merge_tag: FieldView(f.id, f.name, f.merge_tag, f.data_type) for f in stored}

    def imports(self, account_id: int | None = None) -> list[ImportView]:
        """Imports in the order posted, of one account or of all."""
        with self.lock:
            self._settle()
            accounts = self._state.accounts.values()
            jobs = [j for a in accounts if account_id in (None, a.id) for j in a.imports.values()]
            return [ImportView.of(j) for j in sorted(jobs, key=lambda j: j.id)]

    def finish_imports(self, *, failed: bool = False) -> None:
        """End every pending import now (applying it unless ``failed``), whatever the policy."""
        with self.lock:
            for job in list(self._state.pending.values()):
                contacts.finish_import(self._state, job, failed=failed)

    def requests(self) -> list[LoggedRequest]:
        """Every request received so far, in arrival order."""
        with self.lock:
            return list(self._log)

    def clear_requests(self) -> None:
        with self.lock:
            self._log.clear()

    def max_requests_in_window(
        self,
        window: float,
        *,
        account_id: int | None = None,
        token: str | None = None,
        contacts_only: bool = False,
    ) -> int:
        """The most requests that reached the double within any ``window`` seconds.

        Filters narrow the count to one account, one token, or contacts endpoints. Requests
        dropped before reaching the server are not counted.
        """
        times = sorted(
            r.time
            for r in self.requests()
            if r.fault != "drop_before"
            and account_id in (None, r.account_id)
            and token in (None, r.token)
            and (r.is_contacts or not contacts_only)
        )
        best, start = 0, 0
        for end, moment in enumerate(times):
            while moment - times[start] >= window:
                start += 1
            best = max(best, end - start + 1)
        return best

    # consent branch: events, exports, and changes made "in Mailtrap's UI" behind the sync

    def events(self, account_id: int = DEFAULT_ACCOUNT_ID) -> list[ReceivedEvent]:
        """Custom events accepted so far, in arrival order."""
        with self.lock:
            return [e for e in self.audience.events if e.account_id == account_id]

    def delete_contact(self, email: str, account_id: int = DEFAULT_ACCOUNT_ID) -> None:
        """Delete a contact as a user of Mailtrap's UI would (KeyError if unknown)."""
        with self.lock:
            del self._state.account(account_id).contacts[email_key(email)]

    def edit_contact(
        self,
        email: str,
        *,
        fields: Mapping[str, Json] | None = None,
        remove_lists: Iterable[int] = (),
        unsubscribed: bool | None = None,
        account_id: int = DEFAULT_ACCOUNT_ID,
    ) -> None:
        """Change a contact as a user of Mailtrap's UI would: fields, lists, subscription."""
        with self.lock:
            account = self._state.account(account_id)
            contact = account.contacts[email_key(email)]
            contacts.merge(account, contact, dict(fields or {}), [], list(remove_lists))
            if unsubscribed is not None:
                contact.status = "unsubscribed" if unsubscribed else "subscribed"

    # the app's interface (``app.Backend``: the app calls these under or around the lock)

    @property
    def state(self) -> DoubleState:
        """The accounts, contacts and imports themselves (for the app; tests use the views)."""
        return self._state

    def admit_rate(self, token: str, account_id: int | None) -> None:
        """Count one request against the rate windows; ApiError 429 when over a limit."""
        now, limits = self.clock(), self.rate_limits
        by_token, by_account = ("token", token), ("account", account_id)
        if not self._windows.admits(by_token, now, limits.token_requests, limits.token_window):
            raise ApiError(429, _RATE_LIMITED)
        if account_id is not None and not self._windows.admits(
            by_account, now, limits.account_requests, limits.account_window
        ):
            raise ApiError(429, _RATE_LIMITED)
        self._windows.record(by_token, now)
        if account_id is not None:
            self._windows.record(by_account, now)

    def next_fault(self) -> tuple[Fault | None, DropError]:
        """The outcome forced or drawn for the request now arriving, and how a drop looks."""
        with self.lock:
            self._settle()
            faults = self.faults
            fault = faults.forced.popleft() if faults.forced else self._roll_fault()
            drop_error = faults.drop_error
            if drop_error is None and fault in ("drop_before", "drop_after"):
                drop_error = self._rng.choice(("remote_protocol", "read"))
            return fault, drop_error or "remote_protocol"

    def _roll_fault(self) -> Fault | None:
        faults = self.faults
        if faults.drop_rate <= 0 and faults.error_rate <= 0:
            return None
        draw = self._rng.random()
        if draw < faults.drop_rate:
            applied = self._rng.random() < faults.drop_applied_rate
            return "drop_after" if applied else "drop_before"
        if draw < faults.drop_rate + faults.error_rate:
            return "500"
        return None

    def import_fails(self) -> bool:
        """Whether an import finishing now fails (drawn from the seeded failure rate)."""
        rate = self.faults.import_failure_rate
        return rate > 0 and self._rng.random() < rate

    def rejected_emails(self) -> frozenset[str]:
        """Lower-cased emails that imports and contact calls must refuse."""
        return frozenset(email_key(e) for e in self.faults.reject_emails)

    def _settle(self) -> None:
        if self._state.pending:
            contacts.settle_imports(self._state, self.clock(), self.import_fails)

    def record(self, entry: LoggedRequest) -> None:
        """Append one request to the log."""
        with self.lock:
            self._log.append(entry)


def main(argv: list[str] | None = None) -> None:
    """Run a double over HTTP until interrupted; prints where and how to reach it."""
    parser = argparse.ArgumentParser(description="Serve a Mailtrap test double.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--token", default=DEFAULT_TOKEN)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--import-polls", type=int, default=2, help="polls before finished")
    parser.add_argument(
        "--import-seconds", type=float, default=None, help="seconds before finished"
    )
    args = parser.parse_args(argv)
    double = MailtrapDouble(
        seed=args.seed,
        default_account=False,
        import_policy=ImportPolicy(args.import_polls, args.import_seconds),
    )
    double.add_account(DEFAULT_ACCOUNT_ID, DEFAULT_ACCOUNT_NAME, token=args.token)
    with serve(double, args.host, args.port) as url:
        print(f"Mailtrap double at {url}", flush=True)
        print(f"token: {args.token}", flush=True)
        print(f"account: {DEFAULT_ACCOUNT_ID} ({DEFAULT_ACCOUNT_NAME})", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print("stopping", flush=True)


if __name__ == "__main__":
    main()
