"""The Salesforce double answers as Salesforce does: SOQL subset, error bodies, paging, tokens."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from sync_service.testing.mailtrap.transport import InProcessTransport
from sync_service.testing.salesforce import API_VERSION, SalesforceDouble
from sync_service.testing.salesforce.soql import SoqlError, parse

T0 = datetime(2026, 6, 1, tzinfo=UTC)
SCHEMA = {"Contact": {"id": "Id", "email": "Email", "systemmodstamp": "SystemModstamp"}}
QUERY = f"/services/data/v{API_VERSION}/query"


@pytest.fixture
def sf() -> SalesforceDouble:
    return SalesforceDouble(batch_size=2)


@pytest.fixture
def http(sf: SalesforceDouble) -> Iterator[httpx.Client]:
    with httpx.Client(transport=InProcessTransport(sf.app),
                      base_url="https://acme.my.salesforce.com") as client:
        token = client.post("/services/oauth2/token", data={
            "grant_type": "client_credentials", "client_id": sf.client_id,
            "client_secret": sf.client_secret}).json()["access_token"]
        client.headers["Authorization"] = f"Bearer {token}"
        yield client


def test_soql_filters_orders_and_limits() -> None:
    """WHERE with OR/AND/IN and datetime literals, ORDER BY and LIMIT evaluate like SOQL."""
    query = parse("select Id, email FROM contact WHERE (SystemModstamp > 2026-06-01T00:00:00Z "
                  "OR Id IN ('a', 'b')) AND Email != null ORDER BY SystemModstamp DESC, Id "
                  "LIMIT 5", SCHEMA)
    assert query.fields == ["Id", "Email"]
    assert query.order == [("SystemModstamp", True), ("Id", False)]
    assert query.limit == 5
    row = {"Id": "a", "Email": "x@y.z", "SystemModstamp": T0}
    assert query.where(row)
    assert not query.where({**row, "Email": None})
    assert not query.where({**row, "Id": "c"})
    assert query.where({**row, "Id": "c", "SystemModstamp": T0 + timedelta(seconds=1)})


@pytest.mark.parametrize(("soql", "code", "words"), [
    ("SELECT Id, Emale FROM Contact", "INVALID_FIELD",
     "No such column 'Emale' on entity 'Contact'"),
    ("SELECT Id FROM Contact WHERE", "MALFORMED_QUERY", "unexpected token: <EOF>"),
    ("SELECT Id FROM Contact WHERE Email = ", "MALFORMED_QUERY", "unexpected token"),
    ("SELECT Id FROM Contactz", "INVALID_TYPE", "sObject type 'Contactz' is not supported"),
])
def test_soql_errors_in_salesforce_words(soql: str, code: str, words: str) -> None:
    """Each refusal carries Salesforce's code, the query, a caret line and its reason."""
    with pytest.raises(SoqlError) as raised:
        parse(soql, SCHEMA)
    assert raised.value.error_code == code
    assert words in raised.value.message
    assert "ERROR at Row:1:Column:" in raised.value.message


def test_query_pages_and_query_all(sf: SalesforceDouble, http: httpx.Client) -> None:
    """query leaves deleted records out, queryAll keeps them; pages follow nextRecordsUrl."""
    ids = [sf.add(Email=f"p{n}@example.com", modstamp=T0 + timedelta(seconds=n))
           for n in range(5)]
    sf.delete(ids[0])
    soql = "SELECT Id, IsDeleted FROM Contact ORDER BY SystemModstamp, Id"
    live = http.get(QUERY, params={"q": soql}).json()
    assert (live["totalSize"], live["done"], len(live["records"])) == (4, False, 2)
    seen, body = [], http.get(f"{QUERY}All", params={"q": soql}).json()
    while True:
        seen += [(r["Id"], r["IsDeleted"]) for r in body["records"]]
        if body["done"]:
            break
        assert "/queryAll/" in body["nextRecordsUrl"]
        body = http.get(body["nextRecordsUrl"]).json()
    assert seen == [*[(i, False) for i in ids[1:]], (ids[0], True)]
    assert http.get(f"{QUERY}/01gUNKNOWN-2").json()[0]["errorCode"] == "INVALID_QUERY_LOCATOR"


def test_tokens_limits_and_usage_header(sf: SalesforceDouble, http: httpx.Client) -> None:
    """Sforce-Limit-Info counts requests; 403 REQUEST_LIMIT_EXCEEDED and 401 on demand."""
    first = http.get(QUERY, params={"q": "SELECT Id FROM Contact"})
    assert first.headers["Sforce-Limit-Info"] == f"api-usage=1/{sf.api_limit}"
    sf.limit_exceeded(1)
    refused = http.get(QUERY, params={"q": "SELECT Id FROM Contact"})
    assert refused.status_code == 403
    assert refused.json() == [{"message": "TotalRequests Limit exceeded.",
                               "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
    sf.expire_tokens()
    expired = http.get(QUERY, params={"q": "SELECT Id FROM Contact"})
    assert expired.status_code == 401
    assert expired.json()[0]["errorCode"] == "INVALID_SESSION_ID"


def test_token_endpoint_refusals(sf: SalesforceDouble, http: httpx.Client) -> None:
    """Wrong secret, unknown grant and a JWT without a registered key are 400s with reasons."""
    wrong = http.post("/services/oauth2/token", data={
        "grant_type": "client_credentials", "client_id": sf.client_id, "client_secret": "x"})
    assert (wrong.status_code, wrong.json()["error"]) == (400, "invalid_client")
    grant = http.post("/services/oauth2/token", data={"grant_type": "password"})
    assert grant.json()["error"] == "unsupported_grant_type"
    jwt = http.post("/services/oauth2/token", data={
        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": "a.b.c"})
    assert jwt.json()["error"] == "invalid_grant"
