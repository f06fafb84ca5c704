"""The connector contract suite: what every connector (built in or third party) must pass.

Use it from a test module: subclass ``ConnectorContract`` in a class whose name starts with
``Test`` and give it a ``source`` fixture that returns a ``ContractSource`` of your own (a source
the test can fill, change and empty, and connectors on it)::

    from sync_service.testing.contract import ConnectorContract, ContractSource, Row

    class MySource(ContractSource):
        def put(self, rows): ...            # create or replace records
        def delete(self, keys): ...         # delete records (however the source deletes)
        def connect(self, *, page_size): ...  # a connector reading pages of page_size records
        def connect_with_bad_credentials(self): ...  # or, without credentials, a missing source

    class TestMyConnector(ConnectorContract):
        @pytest.fixture
        def source(self, tmp_path):
            return MySource(tmp_path)

What is checked (each one a test): strict (cursor, key) order; resumption from every possible
watermark; ties on the cursor across page boundaries; an empty source; records without an email
or with several; deletions (a record marked ``deleted``, or for a full-snapshot connector a key
no longer yielded and reported in ``deleted_keys``); a record changed during the read; ``fetch``
of known and unknown keys; ``keys()`` when the connector offers it; ``check`` on bad
credentials (a ``ConfigError`` naming the problem, which the CLI turns into exit code 2).

``Row.tick`` is a logical modification time: rows with the same tick must get the same cursor
value, a higher tick a higher one. The source maps ticks to its own cursor values. Connectors are
expected without a lookback window (configure none): resumption is checked exactly.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import pytest

from sync_service.connector import Connector, KeyListing, in_order
from sync_service.errors import ConfigError
from sync_service.models import Position, SourceRecord


@dataclass(frozen=True)
class Row:
    """One source record as the suite wants it; the source maps it to its own shape."""

    key: str
    tick: int
    emails: tuple[str, ...] = ()
    name: str = ""


class ContractSource(ABC):
    """A source the contract suite can fill and change, and connectors reading it."""

    email_column: ClassVar[str] = "email"  # the record value holding the email address
    name_column: ClassVar[str] = "name"  # the record value holding ``Row.name``
    several_emails: ClassVar[bool] = True  # can a record hold several addresses?
    snapshot: ClassVar[bool] = False  # a full snapshot: deletions are keys no longer yielded
    unknown_key: ClassVar[str] = "999999"  # a key no record has
    bad_credentials_hint: ClassVar[str] = "credential|token|password|auth|key"  # regex

    @abstractmethod
    def put(self, rows: Sequence[Row]) -> None:
        """Create these records, or replace them (same key) with these values."""

    @abstractmethod
    def delete(self, keys: Sequence[str]) -> None:
        """Delete these records the way the source deletes."""

    @abstractmethod
    def connect(self, *, page_size: int) -> Connector:
        """A new connector on this source, reading ``page_size`` records a request or query."""

    @abstractmethod
    def connect_with_bad_credentials(self) -> Connector:
        """A connector whose credentials the source refuses; for a source that has none (a
        file, SQLite), one pointed at a source that is not there. ``bad_credentials_hint``
        matches the error's words."""

    def expected_email(self, row: Row) -> str | None:
        """The address a connector yields for ``row`` (by default the first one)."""
        return row.emails[0] if row.emails else None

    def deleted_keys(self, connector: Connector) -> set[str]:
        """For a snapshot connector: the keys its last full read found gone."""
        return {str(key) for key in getattr(connector, "deleted_keys", ())}


def strict_order(records: Iterable[SourceRecord], name: str = "connector") -> list[SourceRecord]:
    """The records as a list; fails the test unless each is strictly after the previous."""
    return list(in_order(records, name))


def _rows(count: int, *, start: int = 1, ticks: Sequence[int] | None = None) -> list[Row]:
    found = []
    for number in range(start, start + count):
        tick = ticks[(number - start) % len(ticks)] if ticks else number
        found.append(Row(str(number), tick, (f"c{number}@example.com",), f"name {number}"))
    return found


def _keys(records: Iterable[SourceRecord]) -> list[str]:
    return [record.key_str for record in records]


class ConnectorContract:
    """The suite. Subclass it in a ``Test...`` class that defines a ``source`` fixture."""

    page_size: ClassVar[int] = 3  # small, so that every test crosses page boundaries

    @pytest.fixture
    def source(self) -> ContractSource:
        raise NotImplementedError("define a `source` fixture returning a ContractSource")

    def read(self, source: ContractSource, since: Position | None = None, *,
             page_size: int | None = None) -> list[SourceRecord]:
        """A checked connector's records from ``since``, verified in strict order."""
        with closing(source.connect(page_size=page_size or self.page_size)) as conn:
            conn.check()
            return strict_order(conn.read(since), type(conn).__name__)

    # the tests ---------------------------------------------------------------------------------
    def test_full_read_is_complete_and_in_strict_order(self, source: ContractSource) -> None:
        """read(None) yields every record exactly once in strictly increasing (cursor, key)."""
        rows = _rows(14, ticks=[5, 1, 3, 3, 9, 1, 7])
        source.put(rows)
        records = self.read(source)
        assert sorted(_keys(records)) == sorted(r.key for r in rows)
        assert {r.key_str: r.values[source.name_column] for r in records} == {
            r.key: r.name for r in rows}

    def test_resumes_from_every_watermark(self, source: ContractSource) -> None:
        """read(p) for every position p of a full read yields exactly the records after p."""
        source.put(_rows(11, ticks=[2, 2, 4, 1, 4, 4, 6]))
        full = self.read(source)
        for index, record in enumerate(full):
            rest = self.read(source, record.position)
            assert _keys(rest) == _keys(full[index + 1:]), f"resuming after {record.position}"

    def test_ties_across_page_boundaries_are_each_read_once(self, source: ContractSource) -> None:
        """Ten records sharing one cursor value, read 3 a page, each come once, also resumed."""
        tied = [replace(row, tick=50) for row in _rows(10, start=100)]
        source.put([*_rows(3, ticks=[10, 60, 70]), *tied])
        full = self.read(source)
        assert Counter(_keys(full)) == Counter([*(str(n) for n in range(1, 4)),
                                                *(row.key for row in tied)])
        middle = next(i for i, r in enumerate(full) if r.key_str == tied[4].key) - 1
        assert _keys(self.read(source, full[middle].position)) == _keys(full[middle + 1:])

    def test_empty_source_reads_nothing(self, source: ContractSource) -> None:
        """A source without records passes check() and yields no record, without error."""
        assert self.read(source) == []

    def test_records_without_email_or_with_several(self, source: ContractSource) -> None:
        """A record with no address, or several, is still yielded; its email value is expected."""
        rows = [Row("1", 1, (), "no email"), Row("2", 2, ("first@example.com",), "one")]
        if source.several_emails:
            rows.append(Row("3", 3, ("main@example.com", "other@example.com"), "two"))
        source.put(rows)
        records = {r.key_str: r for r in self.read(source)}
        assert set(records) == {row.key for row in rows}
        for row in rows:
            value = records[row.key].values.get(source.email_column)
            assert (value or None) == source.expected_email(row), row

    def test_deletions_are_seen(self, source: ContractSource) -> None:
        """A deleted record is yielded as deleted (or, for a snapshot, reported as gone)."""
        rows = _rows(6)
        source.put(rows)
        before = self.read(source)
        source.delete([rows[2].key])
        if source.snapshot:
            with closing(source.connect(page_size=self.page_size)) as conn:
                after = strict_order(conn.read(None))
                gone = source.deleted_keys(conn)
            assert rows[2].key not in _keys(after)
            assert gone == {rows[2].key}
        else:
            after = self.read(source, before[-1].position)
            deleted = [r.key_str for r in after if r.deleted]
            assert deleted == [rows[2].key]

    def test_record_changed_during_the_read(self, source: ContractSource) -> None:
        """A change made mid-read loses nothing: the new state is read now or on the next read."""
        rows = _rows(12)
        source.put(rows)
        changed = [replace(rows[1], tick=100, name="changed early"),
                   replace(rows[9], tick=101, name="changed late")]
        seen: list[SourceRecord] = []
        with closing(source.connect(page_size=self.page_size)) as conn:
            conn.check()
            for record in in_order(conn.read(None), type(conn).__name__):
                seen.append(record)
                if len(seen) == 4:
                    source.put(changed)
        counts = Counter(_keys(seen))
        assert set(counts) == {row.key for row in rows}
        assert all(n == 1 for key, n in counts.items() if key not in {c.key for c in changed})
        latest = {r.key_str: r.values[source.name_column]
                  for r in [*seen, *self.read(source, seen[-1].position)]}
        assert latest[changed[0].key] == "changed early"
        assert latest[changed[1].key] == "changed late"

    def test_fetch_known_and_unknown_keys(self, source: ContractSource) -> None:
        """fetch() yields the current record of each known key and skips unknown ones."""
        rows = _rows(5)
        source.put(rows)
        source.put([replace(rows[3], tick=20, name="current")])
        with closing(source.connect(page_size=self.page_size)) as conn:
            conn.check()
            fetched = {r.key_str: r.values[source.name_column]
                       for r in conn.fetch([rows[0].key, rows[3].key, source.unknown_key])}
        assert fetched == {rows[0].key: rows[0].name, rows[3].key: "current"}

    def test_check_names_bad_credentials(self, source: ContractSource) -> None:
        """check() with refused credentials (or, without any, a source that is not there)
        raises ConfigError naming the problem (CLI exit 2)."""
        # Refused when the connector is built, or at check().
        with pytest.raises(ConfigError) as raised, \
                closing(source.connect_with_bad_credentials()) as connector:
            connector.check()
        assert re.search(source.bad_credentials_hint, str(raised.value), re.IGNORECASE), \
            str(raised.value)


def drain(records: Iterator[Any]) -> int:
    """Consume an iterator; how many items it gave (for benchmarks and smoke tests)."""
    return sum(1 for _ in records)


class KeyListingContract(ConnectorContract):
    """The contract of the optional ``keys()`` (``KeyListing``), for connectors that offer it:
    subclass this instead of ``ConnectorContract`` (without it, a key scan reads in full)."""

    def test_key_listing_matches_a_full_read(self, source: ContractSource) -> None:
        """keys() (the hard-delete key scan) lists exactly the keys a full read yields, as
        text."""
        source.put(_rows(7))
        with closing(source.connect(page_size=self.page_size)) as conn:
            assert isinstance(conn, KeyListing), "the connector has no keys() to test"
            conn.check()
            listed = list(conn.keys())
            read = _keys(conn.read(None))
        assert sorted(listed) == sorted(read)
