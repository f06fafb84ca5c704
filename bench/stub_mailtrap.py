"""A BENCHMARK STUB of Mailtrap, not a test double: it stores no contacts and checks almost nothing.

``StubTransport`` is an ``httpx`` transport answering just what one sync needs: the list and field
look-ups, ``POST .../contacts/imports`` (answered ``created``, keeping only the contact count) and
``GET .../contacts/imports/{id}`` (answered ``finished`` with that count as created contacts).
Its memory is a few integers per import, so a process syncing through it measures the syncing
code alone. It does not parse an import's body either (parsing 50,000 contacts costs ~30 MiB
for a moment, which would be counted as the syncing process's peak): it counts the contacts by
their opening ``{"email":`` (the client writes ``email`` first; inside a JSON string a quote is
always escaped, so the sequence only occurs where a contact starts). The benchmarks compare that
count with what the run says it sent. Use ``sync_service.testing.mailtrap.double.MailtrapDouble``
for anything that must behave like Mailtrap (validation, 422s, rate limits, state).
"""

from __future__ import annotations

import re

import httpx
import orjson
from common import FIELD_TYPES

_IMPORT = re.compile(r"/contacts/imports/(\d+)$")


class StubTransport(httpx.BaseTransport):
    def __init__(self) -> None:
        self.lists: list[dict[str, object]] = []
        self.imports: dict[int, int] = {}  # import id -> contacts in it
        self.contacts_received = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        if path.endswith("/contacts/fields"):
            return _json([{"id": i, "name": tag, "merge_tag": tag, "data_type": data_type}
                          for i, (tag, data_type) in enumerate(FIELD_TYPES.items(), 1)])
        if path.endswith("/contacts/lists"):
            if method == "POST":
                name = orjson.loads(request.read())["name"]
                self.lists.append({"id": len(self.lists) + 1, "name": name})
                return _json(self.lists[-1])
            return _json(self.lists)
        if path.endswith("/contacts/imports") and method == "POST":
            count = _contacts(request.read())
            import_id = len(self.imports) + 1
            self.imports[import_id] = count
            self.contacts_received += count
            return _json({"id": import_id, "status": "created"}, 201)
        if (found := _IMPORT.search(path)) and method == "GET":
            import_id = int(found.group(1))
            return _json({"id": import_id, "status": "finished",
                          "created_contacts_count": self.imports[import_id],
                          "updated_contacts_count": 0, "contacts_over_limit_count": 0})
        return _json({"error": f"the benchmark stub does not serve {method} {path}"}, 404)


def _contacts(body: bytes) -> int:
    """How many contacts an import body carries (see the module's docstring)."""
    if not body.startswith(b'{"contacts":[') or not body.endswith(b"]}"):
        raise ValueError(f"not an import body: {body[:60]!r}")
    return body.count(b'{"email":')


def _json(body: object, status: int = 200) -> httpx.Response:
    return httpx.Response(status, content=orjson.dumps(body),
                          headers={"Content-Type": "application/json"})
