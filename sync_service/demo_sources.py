"""The demo's other sources (``mailtrap-sync demo --source NAME``): each prepares a sample CRM
(a local test double served over HTTP, or files), and says how to edit it between runs.

``SETUPS`` maps a source name to its setup; ``sync_service.demo`` adds "sql". A setup takes the
demo folder, the number of records and an ``ExitStack`` for what it starts, and returns a
``DemoSource``. Add a source by adding an entry here.
"""

from __future__ import annotations

import csv
import os
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sync_service.demo_data import DemoSetup, DemoSource, edited_ids, sample_people
from sync_service.testing.server import serve_app

HUBSPOT_SOURCE = """\
connector = "hubspot"
token = "${{HUBSPOT_TOKEN}}"
api_url = "{url}"
properties = ["email", "firstname", "lastname", "lifecyclestage"]
"""
HUBSPOT_FIELDS = """\
first_name = "firstname"
last_name = "lastname"
plan = "lifecyclestage"
"""
FILE_SOURCE = """\
connector = "file"
path = "{folder}"
pattern = "customers-*.csv"
key = "id"
"""
FILE_FIELDS = """\
first_name = "first_name"
last_name = "last_name"
plan = "plan"
seats = "seats"
signed_up = "signed_up"
"""
SALESFORCE_SOURCE = """\
connector = "salesforce"
login_url = "{url}"
client_id = "${{SF_CLIENT_ID}}"
client_secret = "${{SF_CLIENT_SECRET}}"
object = "Contact"
fields = ["Email", "FirstName", "LastName", "Plan__c"]
"""
SALESFORCE_FIELDS = """\
first_name = "FirstName"
last_name = "LastName"
plan = "Plan__c"
"""
PIPEDRIVE_SOURCE = """\
connector = "pipedrive"
api_url = "{url}"
token = "${{PIPEDRIVE_TOKEN}}"
fields = ["first_name", "last_name", "Plan tier"]
"""
PIPEDRIVE_FIELDS = """\
first_name = "first_name"
last_name = "last_name"
plan = "Plan tier"
"""


def _hubspot(folder: Path, rows: int, stack: ExitStack) -> DemoSource:
    """The HubSpot double with ``rows`` contacts, stamped over the past days."""
    from sync_service.testing.hubspot.double import DEFAULT_TOKEN, HubSpotDouble  # noqa: PLC0415

    double = HubSpotDouble()
    start = datetime.now(UTC) - timedelta(days=3)
    for person in sample_people(rows):
        double.add(contact_id=person["id"], email=person["email"],
                   at=start + timedelta(seconds=person["id"]),
                   properties={"firstname": person["first_name"],
                               "lastname": person["last_name"],
                               "lifecyclestage": person["plan"]})
    url = stack.enter_context(serve_app(double.app, "hubspot"))
    os.environ["HUBSPOT_TOKEN"] = DEFAULT_TOKEN

    def edit(count: int) -> None:
        for ident in edited_ids(count):
            double.update(ident, lifecyclestage="customer")

    return DemoSource(HUBSPOT_SOURCE.format(url=url), HUBSPOT_FIELDS, edit,
                      f"{rows} contacts in the HubSpot test double at {url}")


def _file(folder: Path, rows: int, _stack: ExitStack) -> DemoSource:
    """A folder of CSV drops; an edit is a new, newer drop."""
    drops = folder / "drops"
    drops.mkdir(parents=True, exist_ok=True)
    for old in drops.glob("customers-*.csv"):
        old.unlink()
    people = sample_people(rows)
    columns = ["id", "email", "first_name", "last_name", "plan", "seats", "signed_up"]

    def write(number: int) -> None:
        path = drops / f"customers-{number:03d}.csv"
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(people)
        os.utime(path, ns=(number * 10**9, number * 10**9))  # each drop newer than the last

    write(1)

    def edit(count: int) -> None:
        for ident in edited_ids(count):
            people[ident - 1]["plan"] = "enterprise-plus"
        write(2)

    return DemoSource(FILE_SOURCE.format(folder=drops.resolve()), FILE_FIELDS, edit,
                      f"{rows} customers in {drops}/customers-001.csv")


def _salesforce(folder: Path, rows: int, stack: ExitStack) -> DemoSource:
    """The Salesforce double with ``rows`` Contacts and a custom field Plan__c."""
    from sync_service.testing.salesforce import SalesforceDouble  # noqa: PLC0415

    double = SalesforceDouble()
    double.add_field("Contact", "Plan__c")
    start = datetime.now(UTC) - timedelta(days=3)
    ids: dict[int, str] = {}
    for person in sample_people(rows):
        ids[person["id"]] = double.add(
            "Contact", modstamp=start + timedelta(seconds=person["id"]), Email=person["email"],
            FirstName=person["first_name"], LastName=person["last_name"],
            Plan__c=person["plan"])
    url = stack.enter_context(serve_app(double.app, "salesforce"))
    os.environ["SF_CLIENT_ID"] = double.client_id
    os.environ["SF_CLIENT_SECRET"] = double.client_secret

    def edit(count: int) -> None:
        for ident in edited_ids(count):
            double.update(ids[ident], Plan__c="enterprise-plus")

    return DemoSource(SALESFORCE_SOURCE.format(url=url), SALESFORCE_FIELDS, edit,
                      f"{rows} Contacts in the Salesforce test double at {url}",
                      email_column="Email")


def _pipedrive(folder: Path, rows: int, stack: ExitStack) -> DemoSource:
    """The Pipedrive double with ``rows`` persons (two addresses each, the work one primary)
    and a custom field "Plan tier"."""
    from sync_service.testing.pipedrive import PipedriveDouble  # noqa: PLC0415

    double = PipedriveDouble()
    plan = double.add_custom_field("Plan tier")
    start = datetime.now(UTC) - timedelta(days=3)
    for person in sample_people(rows):
        double.add(person_id=person["id"], first_name=person["first_name"],
                   last_name=person["last_name"], at=start + timedelta(seconds=person["id"]),
                   emails=[{"value": f"home.{person['id']}@example.net", "primary": False},
                           {"value": person["email"], "primary": True}],
                   custom={plan: person["plan"]})
    url = stack.enter_context(serve_app(double.app, "pipedrive"))
    os.environ["PIPEDRIVE_TOKEN"] = double.token

    def edit(count: int) -> None:
        for ident in edited_ids(count):
            double.update(ident, custom={plan: "enterprise-plus"})

    return DemoSource(PIPEDRIVE_SOURCE.format(url=url), PIPEDRIVE_FIELDS, edit,
                      f"{rows} persons in the Pipedrive test double at {url}")


SETUPS: dict[str, DemoSetup] = {"hubspot": _hubspot, "file": _file,
                                "salesforce": _salesforce, "pipedrive": _pipedrive}
