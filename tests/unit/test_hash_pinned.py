"""The hash of a known set of rows is pinned: a faster mapping or hashing path must not re-send
everyone after an upgrade (issue 11). If one of these digests changes, every stored contact of
every user would look changed on the next run."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pytest

from sync_service.diff import Differ
from sync_service.mapping import Mapper, contact_hash
from sync_service.models import SourceRecord

FIELDS = {"first_name": "first", "seats": "seats", "score": "score", "vip": "vip",
          "since": "since"}
TYPES = {"first_name": "text", "seats": "integer", "score": "float", "vip": "boolean",
         "since": "date"}

# (row, digest) taken with the mapper of commit 6b69111, before any performance work.
PINNED: list[tuple[dict[str, Any], str]] = [
    ({"email": "ada@example.com", "first": "Ada", "seats": 3, "score": 1.5, "vip": True,
      "since": date(2024, 1, 2)}, "cba3363296a63dff0bfbad0358897401"),
    ({"email": "  Grace.HOPPER@Outlook.COM ", "first": None, "seats": None, "score": None,
      "vip": None, "since": None}, "646c82512419449144e8c5234d4a4ffe"),
    ({"email": "jürgen@bücher.de", "first": "Jürgen", "seats": "42", "score": "2.25",
      "vip": "yes", "since": "2023-05-06"}, "d0da0d364e10fe8c0ee7f23b1c0bbccf"),
    ({"email": "alan+news@turing.org", "first": "x" * 255, "seats": -9007199254740991,
      "score": Decimal("0.1"), "vip": "0", "since": datetime(2022, 3, 4, 5, 6, 7)},
     "a210b459b59527ef06a3e638ede53382"),
    ({"email": "ken@bell-labs.com", "first": 'tab\there "quoted" é', "seats": 0, "score": -0.0,
      "vip": False, "since": date(1999, 12, 31)}, "78f5a78ecfc46ca5857663f0b83244ac"),
]


def _mapper() -> Mapper:
    return Mapper(email_column="email", fields=FIELDS, field_types=TYPES, list_ids=(7, 3))


@pytest.mark.parametrize(("row", "digest"), PINNED)
def test_known_row_hashes_to_its_pinned_digest(row: dict[str, Any], digest: str) -> None:
    """Mapping and hashing a known row gives the digest it gave before the performance work."""
    assert contact_hash(_mapper().contact(row)) == digest


def test_differ_map_gives_the_pinned_digests() -> None:
    """The job's mapping path (``Differ.map``) hashes known rows to the same pinned digests."""
    records = [SourceRecord(key=i, cursor=i, values=row) for i, (row, _) in enumerate(PINNED)]
    mapped = Differ(_mapper()).map(records)
    assert [m.digest for m in mapped] == [digest for _, digest in PINNED]


def test_pinned_digest_without_lists_or_other_fields() -> None:
    """A mapping of one text field and no lists hashes a known row to its pinned digest."""
    mapper = Mapper(email_column="email", fields={"first_name": "first"},
                    field_types={"first_name": "text"}, list_ids=())
    assert contact_hash(mapper.contact(PINNED[0][0])) == "b8012b957b966956deb112029158eddc"
