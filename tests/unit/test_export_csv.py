"""The tolerant export-file reader: gzip or plain, header spellings, delimiters, list cells."""

from __future__ import annotations

import gzip
import io

import pytest

from sync_service.errors import ExportFormatError
from sync_service.export_csv import read_export
from sync_service.testing.mailtrap.model import Account, Contact, ContactList, Field
from sync_service.testing.mailtrap.state import export_file

TAGS = {"First name": "first_name", "first_name": "first_name", "seats": "seats"}
LISTS = {"Customers": 3, "Newsletter": 4}


def _read(data: bytes) -> list[tuple[str, bool, list[int], dict[str, str]]]:
    return [(c.email, c.unsubscribed, sorted(c.list_ids), dict(c.fields))
            for c in read_export(io.BytesIO(data), merge_tags=TAGS, list_names=LISTS)]


def test_reads_the_doubles_gzip_file() -> None:
    """The double's own export (gzip, one column per merge tag) reads back what it holds."""
    account = Account(1, "A", lists={3: ContactList(3, "Customers")},
                      fields={7: Field(7, "First name", "first_name", "text")})
    account.contacts["a@x.io"] = Contact("id1", "A@x.io", {"first_name": "Ann"}, {3},
                                         "unsubscribed", 1, 2)
    data = export_file(account, [], gzipped=True)
    assert data[:2] == b"\x1f\x8b"
    assert _read(data) == [("a@x.io", True, [3], {"first_name": "Ann"})]


@pytest.mark.parametrize("text", [
    "Email,Status,List IDs,First Name,seats\nA@x.io,subscribed,\"3,4\",Ann,5\n",
    "\ufeffemail;subscription_status;lists;fields.first_name;Fields.Seats\r\n"
    "a@x.io;subscribed;3|4;Ann;5\r\n",
    "email_address\tunsubscribed\tlist_ids\tfirst_name\tseats\na@x.io\tfalse\t3 4\tAnn\t5\n",
    "contact_email,status,lists,First name,seats,created_at\n"
    "a@x.io,subscribed,\"Customers, Newsletter\",Ann,5,1700000000000\n",
])
def test_header_and_cell_variations(text: str) -> None:
    """Header case, BOM, prefixes, ; tab | delimiters, ids or names in the lists cell."""
    for data in (text.encode(), gzip.compress(text.encode())):
        assert _read(data) == [("a@x.io", False, [3, 4], {"first_name": "Ann", "seats": "5"})]


def test_unsubscribed_column_and_empty_cells() -> None:
    """A boolean `unsubscribed` column counts; empty cells are absent values; blank rows skip."""
    data = b"email,unsubscribed,list_ids,seats\nb@x.io,true,,\n\n"
    assert _read(data) == [("b@x.io", True, [], {})]


def test_no_email_column_is_a_clear_error() -> None:
    """A file without an email column names the columns it has."""
    with pytest.raises(ExportFormatError, match=r"no email column.*name, status"):
        _read(b"name,status\nx,subscribed\n")


def test_empty_file_has_no_contacts() -> None:
    """An empty export (no header even) is no contacts, not an error."""
    assert _read(b"") == []
    assert _read(gzip.compress(b"")) == []
