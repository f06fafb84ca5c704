"""Throughput of the pure core: mapping, hashing and diffing N synthetic records (no I/O).

What is timed, per repeat, in chunks of the job's READ_CHUNK (2,000) records:

- ``map+hash``: ``Differ.map`` (row → Contact through ``Mapper.contact``, then ``contact_hash``);
  ``normalise_email`` and ``contact_hash`` alone are timed in a separate pass, for the breakdown;
- ``diff (first sync)``: ``Differ.diff`` with nothing stored: every record becomes a CREATE;
- ``diff (no change)``: ``Differ.diff`` with every stored hash equal: every record is UNCHANGED.

Chunks are handled one after another and dropped, as in the job. The stored contacts and owners the
no-change diff needs are built untimed from the chunk's own mapping (in the job they come from the
state store, measured by bench_sync.py). The mapper's per-domain validation cache is cleared before
each repeat, so every repeat pays what a fresh process (a cron run) pays.

    .venv/bin/python bench/bench_diff.py [--rows 100000] [--repeat 3] [--json] [--profile]

``--sql`` times the per-row layers from a SQLite table instead (issue 11): the SQL connector's
read, ``Differ.map`` with a cold and a warm domain cache, and ``Differ.decide`` against an empty
and an all-confirmed view, chunked as the job, in CPU seconds of this process (on a shared
machine they move less with the load than wall time). No state store, no delivery.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from contextlib import suppress
from typing import Any

from common import (
    FIELD_TYPES,
    FIELDS,
    create_source,
    emit_json,
    machine,
    median_of,
    people,
    profile,
    table,
)

from sync_service.diff import Change, Differ, Mapped, Pending, View
from sync_service.job import READ_CHUNK
from sync_service.mapping import (
    Mapper,
    MappingRejected,
    _domain_problem,  # its cache is cleared so that every repeat starts cold
    contact_hash,
    normalise_email,
)
from sync_service.models import SourceRecord, StoredContact

BATCH = 50_000  # the job resets its "emails in this batch" map every batch


def _records(n: int, seed: int) -> list[SourceRecord]:
    return [SourceRecord(row["id"], row["updated_at"], row) for row in people(n, seed=seed)]


def _mapper() -> Mapper:
    return Mapper(email_column="email", fields=FIELDS, field_types=FIELD_TYPES, list_ids=(1,))


def _confirmed(mapped: list[Mapped]) -> tuple[dict[str, StoredContact], dict[str, str]]:
    """The state store's answer for a chunk after a sync that confirmed every contact."""
    known = {m.record.key_str: StoredContact(m.record.key_str, m.contact.email, m.digest)
             for m in mapped if m.contact is not None and m.digest is not None}
    return known, {c.email: key for key, c in known.items()}


class _Pending:
    """The job's "emails already in the batch being built", emptied every full batch."""

    def __init__(self) -> None:
        self.emails: dict[str, str] = {}
        self.sent = 0

    def add(self, changes: list[Change]) -> None:
        for change in changes:
            for entry in change.entries:
                self.emails[entry.email] = entry.source_key
                self.sent += 1
                if len(self.emails) >= BATCH:
                    self.emails = {}


def _pass(
    differ: Differ, chunks: list[list[SourceRecord]], times: dict[str, float]
) -> dict[str, int]:
    """One pass over every chunk, as the job's ``_scan`` goes: map, then diff, then drop the chunk.

    Each chunk is diffed twice: against an empty state store (first sync) and against one that
    confirmed every contact of it (no change). Building that second state is not timed.
    """
    first, again = _Pending(), _Pending()
    contacts = 0
    clock = time.perf_counter
    for chunk in chunks:
        t0 = clock()
        mapped = differ.map(chunk)
        t1 = clock()
        first.add(differ.diff(mapped, {}, {}, first.emails))
        t2 = clock()
        stored, owners = _confirmed(mapped)
        t3 = clock()
        again.add(differ.diff(mapped, stored, owners, again.emails))
        t4 = clock()
        times["map+hash"] += t1 - t0
        times["diff (first sync)"] += t2 - t1
        times["diff (no change)"] += t4 - t3
        contacts += len(stored)
    return {"contacts": contacts, "sent_first_sync": first.sent, "sent_no_change": again.sent}


def _parts(chunks: list[list[SourceRecord]], mapper: Mapper, times: dict[str, float]) -> int:
    """The two largest parts of map+hash on their own: email normalisation, hashing."""
    _domain_problem.cache_clear()
    valid = 0
    clock = time.perf_counter
    for chunk in chunks:
        t0 = clock()
        emails = []
        for record in chunk:
            with suppress(MappingRejected):
                emails.append(normalise_email(record.values["email"]))
        t1 = clock()
        contacts = []
        for record in chunk:
            with suppress(MappingRejected):
                contacts.append(mapper.contact(record.values))
        t2 = clock()
        for contact in contacts:
            contact_hash(contact)
        t3 = clock()
        times["normalise_email alone"] += t1 - t0
        times["contact_hash alone"] += t3 - t2
        valid += len(emails)
    return valid


def run(n: int, repeat: int, seed: int) -> dict[str, Any]:
    host = machine()
    records = _records(n, seed)
    chunks = [records[i:i + READ_CHUNK] for i in range(0, n, READ_CHUNK)]
    # The job holds one chunk at a time; the records made up front would otherwise make every
    # garbage collection walk N rows that the real job never holds.
    gc.collect()
    gc.freeze()
    differ = Differ(_mapper())
    names = ("map+hash", "normalise_email alone", "contact_hash alone",
             "diff (first sync)", "diff (no change)")
    samples: dict[str, list[float]] = {name: [] for name in names}
    counts: dict[str, int] = {}
    for _ in range(repeat):
        times = dict.fromkeys(names, 0.0)
        _domain_problem.cache_clear()
        counts = _pass(differ, chunks, times)
        counts["valid_emails"] = _parts(chunks, differ.mapper, times)
        for name, seconds in times.items():
            samples[name].append(seconds)
    counts |= {"records": n, "rejected": n - counts["contacts"]}
    if counts["sent_no_change"]:
        raise SystemExit("a no-change diff sent entries: the benchmark is broken")
    median = {name: median_of(values) for name, values in samples.items()}
    median["first sync core (map+hash+diff)"] = median["map+hash"] + median["diff (first sync)"]
    median["no-change core (map+hash+diff)"] = median["map+hash"] + median["diff (no change)"]
    return {"benchmark": "bench_diff", "rows": n, "repeat": repeat, "seconds_median": median,
            "seconds_all": samples,
            "rows_per_s": {k: n / v for k, v in median.items() if v > 0}, "counts": counts,
            "machine": host}


SQL_LAYERS = ("connector read", "map+hash, cold", "map+hash, warm", "decide, first sync",
              "decide, no change")


def _sql_pass(differ: Differ, records: Any, times: dict[str, float]) -> None:
    """One read of the table, each chunk mapped twice and decided twice (CPU seconds)."""
    clock = time.process_time
    _domain_problem.cache_clear()
    while True:
        started = clock()
        chunk = [record for _, record in zip(range(READ_CHUNK), records, strict=False)]
        mapped_at = clock()
        times["connector read"] += mapped_at - started
        if not chunk:
            return
        differ.map(chunk)
        warm_at = clock()
        mapped = differ.map(chunk)
        decided_at = clock()
        for item in mapped:
            differ.decide(item, View(), Pending())
        confirmed_at = clock()
        stored, owners = _confirmed(mapped)
        view = View(stored=stored, holders={email: [key] for email, key in owners.items()})
        pending = Pending()
        again_at = clock()
        for item in mapped:
            differ.decide(item, view, pending)
        times["decide, no change"] += clock() - again_at
        times["decide, first sync"] += confirmed_at - decided_at
        times["map+hash, warm"] += decided_at - warm_at
        times["map+hash, cold"] += warm_at - mapped_at


def run_sql(n: int, repeat: int, seed: int) -> dict[str, Any]:
    import tempfile
    from pathlib import Path

    from sync_service.connectors.sql import SqlConnector, SqlSourceSettings
    from sync_service.logging import configure

    configure(level="WARNING")
    host = machine()
    with tempfile.TemporaryDirectory(prefix="mts-diff-") as tmp:
        create_source(Path(tmp) / "crm.db", n, seed=seed)
        connector = SqlConnector(SqlSourceSettings(
            url=f"sqlite:///{Path(tmp) / 'crm.db'}", table="customers", key="id",
            cursor="updated_at"))
        samples: dict[str, list[float]] = {name: [] for name in SQL_LAYERS}
        try:
            for _ in range(repeat):
                gc.collect()
                times = dict.fromkeys(SQL_LAYERS, 0.0)
                _sql_pass(Differ(_mapper()), iter(connector.read(None)), times)
                for name, seconds in times.items():
                    samples[name].append(seconds)
        finally:
            connector.close()
    median = {name: median_of(values) for name, values in samples.items()}
    return {"benchmark": "bench_diff --sql", "rows": n, "repeat": repeat, "cpu_s_median": median,
            "cpu_s_all": samples, "machine": host}


def _print_sql(result: dict[str, Any]) -> None:
    n = result["rows"]
    rows = [(name, seconds, n / seconds, seconds / n * 1e6,
             " ".join(f"{s:.2f}" for s in result["cpu_s_all"][name]))
            for name, seconds in result["cpu_s_median"].items()]
    print(f"per-row layers from SQLite, {n:,} rows, CPU s, median of {result['repeat']} "
          f"({result['machine']['cpus']} CPUs, Python {result['machine']['python']}, load "
          f"{result['machine']['loadavg_1m_at_start']})")
    print(table(("layer", "cpu s", "rows/s", "µs/row", "all runs"), rows))


def _print(result: dict[str, Any]) -> None:
    n = result["rows"]
    rows = [(f"  {name}" if name.endswith(" alone") else name, seconds, n / seconds,
             seconds / n * 1e6)
            for name, seconds in result["seconds_median"].items()]
    print(f"pure core, {n:,} records, median of {result['repeat']} "
          f"({result['machine']['cpus']} CPUs, Python {result['machine']['python']})")
    print(table(("phase", "seconds", "rows/s", "µs/row"), rows))
    c = result["counts"]
    print(f"records {c['records']:,}: {c['contacts']:,} contacts, {c['rejected']:,} rejected "
          f"(invalid email); first sync sends {c['sent_first_sync']:,}, no-change sends "
          f"{c['sent_no_change']:,}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--profile", action="store_true",
                        help="profile one map+hash+diff pass (cProfile, by own time)")
    parser.add_argument("--sql", action="store_true",
                        help="time the per-row layers from a SQLite table (CPU seconds)")
    args = parser.parse_args(argv)
    if args.sql:
        result = run_sql(args.rows, args.repeat, args.seed)
        if args.json:
            emit_json(result)
        else:
            _print_sql(result)
        return 0
    if args.profile:
        records = _records(args.rows, args.seed)
        chunks = [records[i:i + READ_CHUNK] for i in range(0, args.rows, READ_CHUNK)]
        gc.collect()
        gc.freeze()
        times = dict.fromkeys(("map+hash", "diff (first sync)", "diff (no change)"), 0.0)
        profile(lambda: _pass(Differ(_mapper()), chunks, times))
        return 0
    result = run(args.rows, args.repeat, args.seed)
    if args.json:
        emit_json(result)
    else:
        _print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
