"""Validate Mailtrap traffic against Mailtrap's official OpenAPI specs, with openapi-core.

The specs are read from ``$MAILTRAP_SYNC_SPEC_DIR`` or, by default, ``<repo root>/../shared/
mailtrap/`` (CI lays ``shared/`` beside the clone). Missing files raise ``FileNotFoundError``:
a test that cannot validate must fail, never skip. Specs are built once per process
(``load_specs`` is cached); openapi-core is slow to build them.

Paths: the project calls the account-scoped form ``/api/accounts/{id}/contacts/...``; it is
checked against the contacts spec's ``/api/contacts/...`` (the README explains why the bodies are
the same). ``/api/accounts`` is checked against the account-management spec. Any other path is a
violation.

Responses whose status the spec does not list for the operation are a violation too, except
these, which Mailtrap documents elsewhere or which the double answers on purpose, checked against
the spec's own component schemas instead:

* 429 anywhere (Mailtrap's rate-limits page: every endpoint) → ``RateLimitExceededResponse``;
* 500 anywhere → ``ErrorResponse``;
* 404 on ``PATCH /api/contacts/{contact_identifier}`` (an unknown UUID) → ``NotFoundResponse``;
* 422 on contact-list create/update (blank name, the 50-list limit) → ``UnprocessableEntity``.

``ValidatingTransport(inner)`` wraps any httpx transport: it validates each request before
passing it on and each response after, raising ``AssertionError`` on the first violation, and
keeps a list (``checked``) of everything it validated.

A verdict depends only on the message and the specs, and openapi-core takes ~5-10 ms for even
the smallest message, while tests repeat many messages byte for byte (import status polls, list
and field reads, the same answers): a message (up to 64 KiB of body) that passed before, with
the same method, path and query, headers, body and, for a response, request, is not validated
again; it passes as it did. Failures are never remembered.
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl

import httpx
import yaml
from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.exceptions import OpenAPIError
from openapi_core.templating.responses.exceptions import ResponseNotFound
from openapi_schema_validator import OAS31Validator
from werkzeug.datastructures import Headers, ImmutableMultiDict

SPEC_DIR_ENV = "MAILTRAP_SYNC_SPEC_DIR"
CONTACTS_SPEC = "contacts.openapi.yml"
ACCOUNTS_SPEC = "account-management.openapi.yml"
_SPEC_HOST = "https://mailtrap.io"  # the specs' server; request hosts are rewritten to it
_ACCOUNT_SCOPED = re.compile(r"^/api/accounts/(?P<account>[^/]+)(?P<rest>/contacts(?:/.*)?)$")
_FALLBACK_ANYWHERE = {429: "RateLimitExceededResponse", 500: "ErrorResponse"}
_FALLBACK_SPECIFIC = [  # (method, spec path pattern, status) -> component schema
    ("patch", re.compile(r"/api/contacts/[^/]+"), 404, "NotFoundResponse"),
    ("post", re.compile(r"/api/contacts/lists"), 422, "UnprocessableEntity"),
    ("patch", re.compile(r"/api/contacts/lists/\d+"), 422, "UnprocessableEntity"),
]


def spec_dir() -> Path:
    """Where the spec files are; raises when they are missing."""
    configured = os.environ.get(SPEC_DIR_ENV)
    repo_root = Path(__file__).resolve().parents[2]
    folder = Path(configured) if configured else repo_root.parent / "shared" / "mailtrap"
    missing = [name for name in (CONTACTS_SPEC, ACCOUNTS_SPEC) if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Mailtrap OpenAPI specs not found: {', '.join(missing)} in {folder} "
            f"(set {SPEC_DIR_ENV}, or lay shared/mailtrap/ beside the repository)"
        )
    return folder


_REMEMBERED_BODY = 64 * 1024  # larger messages are validated every time (and rarely repeat)
_REMEMBERED_MAX = 100_000


@dataclass(frozen=True)
class Specs:
    contacts: OpenAPI
    accounts: OpenAPI
    # message key -> its Checked, for messages that passed against these specs
    passed: dict[tuple[object, ...], Checked] = field(
        default_factory=dict, compare=False, repr=False)

    def remembered(self, key: tuple[object, ...] | None) -> Checked | None:
        return None if key is None else self.passed.get(key)

    def remember(self, key: tuple[object, ...] | None, checked: Checked) -> None:
        if key is not None:
            if len(self.passed) >= _REMEMBERED_MAX:
                self.passed.clear()
            self.passed[key] = checked

    def schema(self, name: str) -> dict[str, Any]:
        """A component schema of the contacts spec, as a plain dict."""
        value: dict[str, Any] = (self.contacts.spec / "components" / "schemas" / name).read_value()
        return value


@functools.cache
def load_specs() -> Specs:
    """Both specs, built once per process."""
    folder = spec_dir()
    return Specs(
        contacts=_contacts_spec(folder / CONTACTS_SPEC),
        accounts=OpenAPI.from_file_path(str(folder / ACCOUNTS_SPEC)),
    )


# Mailtrap's contacts spec maps the export filters' discriminator to "ListIdFilter" and
# "#/SubscriptionStatusFilter", which resolve nowhere (the schemas sit under
# ContactExportRequest), so no export request could validate. The mapping is corrected in memory
# to point at those schemas; the file stays as Mailtrap published it.
_EXPORT_FILTERS = "#/components/schemas/ContactExportRequest/"


def _contacts_spec(path: Path) -> OpenAPI:
    with path.open(encoding="utf-8") as handle:
        spec: dict[str, Any] = yaml.safe_load(handle)
    export = spec.get("components", {}).get("schemas", {}).get("ContactExportRequest", {})
    mapping = export.get("Filter", {}).get("discriminator", {}).get("mapping", {})
    for name, target in list(mapping.items()):
        mapping[name] = _EXPORT_FILTERS + str(target).rsplit("/", 1)[-1]
    return OpenAPI.from_dict(spec, base_uri=path.as_uri())


@dataclass(frozen=True)
class Checked:
    """One validated message: a request, or the response to it."""

    kind: Literal["request", "response"]
    method: str
    path: str  # as sent
    spec_path: str  # as the spec writes it
    status: int | None = None
    fallback: str | None = None  # the component schema used for an undocumented status


def spec_route(specs: Specs, raw_path: str) -> tuple[OpenAPI, str]:
    """The spec and spec-form path for a path the project sends (percent-encoding kept)."""
    if raw_path == "/api/accounts":
        return specs.accounts, raw_path
    matched = _ACCOUNT_SCOPED.match(raw_path)
    if matched is None:
        raise AssertionError(f"{raw_path} is not a Mailtrap path the project may use")
    if not matched["account"].isdigit():
        raise AssertionError(f"{raw_path}: the account id must be an integer")
    return specs.contacts, "/api" + matched["rest"]


class _SpecRequest:
    """An httpx request seen through openapi-core's Request protocol, at the spec's path."""

    def __init__(self, request: httpx.Request, spec_path: str) -> None:
        self.host_url = _SPEC_HOST
        self.path = spec_path
        self.method = request.method.lower()
        self.body: bytes | None = request.content or None
        self.content_type = request.headers.get("content-type", "")
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(parse_qsl(request.url.query.decode("ascii"))),
            header=Headers(list(request.headers.multi_items())),
        )


class _SpecResponse:
    """An httpx response seen through openapi-core's Response protocol."""

    def __init__(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        self.content_type = response.headers.get("content-type", "")
        self.headers = Headers(list(response.headers.multi_items()))
        self.data: bytes | None = response.content or None


def _raw_path(request: httpx.Request) -> str:
    return request.url.raw_path.decode("ascii").partition("?")[0]


def _explain(exc: BaseException) -> str:
    details = [str(exc)]
    cause = exc.__cause__
    for error in getattr(cause, "schema_errors", None) or getattr(exc, "schema_errors", ()) or ():
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        details.append(f"at {where}: {error.message}")
    if cause is not None and not getattr(cause, "schema_errors", None):
        details.append(str(cause))
    return "; ".join(details)


def _request_key(request: httpx.Request) -> tuple[object, ...] | None:
    """Everything of a request that validation reads (and more), or None when it is large."""
    if len(request.content) > _REMEMBERED_BODY:
        return None
    headers = tuple(request.headers.multi_items())
    return (request.method, request.url.raw_path, headers, request.content)


def _response_key(request: httpx.Request, response: httpx.Response) -> tuple[object, ...] | None:
    asked = _request_key(request)
    if asked is None or len(response.content) > _REMEMBERED_BODY:
        return None
    headers = tuple(response.headers.multi_items())
    return ("response", *asked, response.status_code, headers, response.content)


def validate_request(request: httpx.Request, specs: Specs | None = None) -> Checked:
    """Check a request against the spec; ``AssertionError`` says what is wrong."""
    specs = specs or load_specs()
    key = _request_key(request)
    seen = specs.remembered(key)
    if seen is not None:
        return seen
    checked = _validated_request(request, specs)
    specs.remember(key, checked)
    return checked


def _validated_request(request: httpx.Request, specs: Specs) -> Checked:
    path = _raw_path(request)
    spec, spec_path = spec_route(specs, path)
    try:
        spec.validate_request(_SpecRequest(request, spec_path))
    except OpenAPIError as exc:
        raise AssertionError(
            f"{request.method} {path} breaks the Mailtrap spec: {_explain(exc)}"
        ) from exc
    return Checked("request", request.method, path, spec_path)


def validate_response(
    request: httpx.Request, response: httpx.Response, specs: Specs | None = None
) -> Checked:
    """Check a (read) response to ``request`` against the spec."""
    specs = specs or load_specs()
    key = _response_key(request, response)
    seen = specs.remembered(key)
    if seen is not None:
        return seen
    checked = _validated_response(request, response, specs)
    specs.remember(key, checked)
    return checked


def _validated_response(request: httpx.Request, response: httpx.Response, specs: Specs
                        ) -> Checked:
    path = _raw_path(request)
    spec, spec_path = spec_route(specs, path)
    what = f"{response.status_code} to {request.method} {path}"
    fallback = None
    try:
        spec.validate_response(_SpecRequest(request, spec_path), _SpecResponse(response))
    except ResponseNotFound as exc:
        fallback = _fallback_schema(request.method.lower(), spec_path, response.status_code)
        if fallback is None:
            raise AssertionError(f"{what}: status not in the Mailtrap spec") from exc
        _validate_against(specs, fallback, response, what)
    except OpenAPIError as exc:
        raise AssertionError(f"{what} breaks the Mailtrap spec: {_explain(exc)}") from exc
    return Checked("response", request.method, path, spec_path, response.status_code, fallback)


def _fallback_schema(method: str, spec_path: str, status: int) -> str | None:
    if status in _FALLBACK_ANYWHERE:
        return _FALLBACK_ANYWHERE[status]
    return next(
        (
            schema
            for verb, pattern, code, schema in _FALLBACK_SPECIFIC
            if (verb, code) == (method, status) and pattern.fullmatch(spec_path)
        ),
        None,
    )


def _validate_against(specs: Specs, schema: str, response: httpx.Response, what: str) -> None:
    if not response.headers.get("content-type", "").startswith("application/json"):
        raise AssertionError(f"{what}: expected a JSON body ({schema})")
    try:
        body = json.loads(response.content)
    except ValueError as exc:
        raise AssertionError(f"{what}: body is not JSON") from exc
    problems = [e.message for e in OAS31Validator(specs.schema(schema)).iter_errors(body)]
    if problems:
        raise AssertionError(f"{what} does not match the spec's {schema}: {'; '.join(problems)}")


class ValidatingTransport(httpx.BaseTransport):
    """Validate every request and response passing through ``inner`` against the specs."""

    def __init__(self, inner: httpx.BaseTransport, specs: Specs | None = None) -> None:
        self.inner = inner
        self.specs = specs or load_specs()
        self.checked: list[Checked] = []
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self._keep(validate_request(request, self.specs))
        response = self.inner.handle_request(request)
        response.read()  # the client later gets the cached content
        self._keep(validate_response(request, response, self.specs))
        return response

    def _keep(self, checked: Checked) -> None:
        with self._lock:
            self.checked.append(checked)

    @property
    def requests_checked(self) -> list[Checked]:
        with self._lock:
            return [c for c in self.checked if c.kind == "request"]

    @property
    def responses_checked(self) -> list[Checked]:
        with self._lock:
            return [c for c in self.checked if c.kind == "response"]

    def close(self) -> None:
        self.inner.close()
