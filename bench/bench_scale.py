"""Issue 11's scale scenario: every step of a pipeline's life on N rows, each against a baseline.

One invocation makes a ``customers`` table of N rows (``common.people``) and, per configuration
(SQLite source + SQLite state; with ``--pg-url`` also PostgreSQL source + PostgreSQL state in a
scratch database created next to the one named and dropped at the end), measures:

- **baseline**: the driver's plain read of the same columns in the same order (``sqlite3`` /
  ``psycopg`` server-side cursor, no SQLAlchemy), alone ("read") and with ``orjson`` of the import
  bodies of ``--batch-size`` contacts ("read+orjson", the figure the ratios are taken against);
- ``plan`` of a first sync (empty state: read, map, hash, diff; sends nothing);
- first ``sync`` (everything posted to a stand-in in imports of ``--batch-size``);
- no-change ``sync`` (re-reads the lookback window) and no-change ``backfill`` (re-reads all);
- incremental ``sync`` after ``--changed`` rows (spread over the table) got a new ``first_name``
  and a newer ``updated_at``;
- "bulk touch": every row stamped with one new ``updated_at`` (no content change), then the sync
  that reads them all, and the next no-change sync, which re-reads every row again because they
  all sit inside the lookback window ("one updated_at").

Besides the step times:

- **state store**: per step, the time in ``StateStore.confirm_batch`` + ``advance`` (confirming
  hashes and moving the watermark) and in ``record_batch`` (the write-ahead), and the
  confirmation's share of the step's own time (the issue's goal: under 10 % of the first sync);
- **pipelining** (``--import-seconds``, default 5): one more first sync, into an empty state
  store, against ``bench_pipeline.SlowImports`` (imports answer ``started`` until that many
  seconds after they were posted), with the default ``imports_in_flight`` and a paced client:
  wall time, time waiting with nothing to do (``Courier._pause``) and its share (goal < 25 %);
- **memory** (``--no-memory`` skips it): the peak RSS of a first sync of the same source into
  a new state store in a fresh process (``bench_memory.measure``, the benchmark stub with
  imports taking ``--import-seconds``, so that batches are held in flight), not the whole
  benchmark process, whose own peak is printed too.

The stand-in is ``stub_mailtrap.StubTransport`` in-process (it counts each import's contacts, stores
nothing, answers every import ``finished`` on its first poll; no pacing). Time inside it is
measured and subtracted: "own s" is the tool's own time, and the ratios use it. Each figure is
printed with its ratio to the baseline read+orjson (and, for the "one updated_at" sync, the
issue's goal compares with the read alone). Email-validation caches are emptied before each
configuration, as in a fresh process.

    .venv/bin/python bench/bench_scale.py [--rows 1000000] [--batch-size 50000] [--changed 1000]
        [--pg-url postgresql+psycopg://postgres@127.0.0.1:5432/test] [--only sqlite|postgresql]
        [--import-seconds 5] [--no-memory] [--json]
        [--profile plan|first-sync|backfill|bulk-touch|one-updated-at]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import httpx
import orjson
import sqlalchemy as sa
from bench_memory import measure as measure_memory
from bench_pipeline import FULL_BATCH
from bench_pipeline import first_sync as pipelined_first_sync
from bench_sync import _scratch_postgres
from common import (
    FIELDS,
    T0,
    create_source,
    customers,
    emit_json,
    machine,
    peak_rss_mb,
    people,
    profile,
    settings,
    table,
)
from stub_mailtrap import StubTransport

from sync_service.job import SyncJob
from sync_service.logging import configure
from sync_service.mailtrap.client import MailtrapClient
from sync_service.mapping import _domain_problem
from sync_service.models import RunKind, RunOutcome
from sync_service.settings import MailtrapSettings
from sync_service.state import StateStore
from sync_service.testing.mailtrap.double import DEFAULT_ACCOUNT_ID, DEFAULT_TOKEN

API_URL = "https://stub.mailtrap.bench"
COLUMNS = ("id", "email", "first_name", "last_name", "plan", "seats", "signed_up", "updated_at")
SELECT = f"SELECT {', '.join(COLUMNS)} FROM customers ORDER BY updated_at, id"
FETCH = 10_000


class _TimedStub(httpx.BaseTransport):
    """The stub, with the wall time spent inside it added up (it is not the tool's time)."""

    def __init__(self) -> None:
        self.stub = StubTransport()
        self.seconds = 0.0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        started = time.perf_counter()
        try:
            return self.stub.handle_request(request)
        finally:
            self.seconds += time.perf_counter() - started


class StoreClock:
    """Wall time in the state store's confirmation (``confirm_batch`` + ``advance``) and
    write-ahead (``record_batch``) methods, added up while installed (this process only; the job
    works on a fenced copy of the store, so the methods are wrapped on the class)."""

    WATCHED: ClassVar[dict[str, str]] = {
        "confirm_batch": "confirm", "advance": "confirm", "record_batch": "write_ahead"}

    def __init__(self) -> None:
        self.seconds = {"confirm": 0.0, "write_ahead": 0.0}

    def install(self) -> dict[str, Any]:
        originals = {name: getattr(StateStore, name) for name in self.WATCHED}
        for name, original in originals.items():
            setattr(StateStore, name, self._timed(original, self.WATCHED[name]))
        return originals

    def _timed(self, original: Callable[..., Any], part: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[part] += time.perf_counter() - started
        return timed

    @staticmethod
    def uninstall(originals: dict[str, Any]) -> None:
        for name, original in originals.items():
            setattr(StateStore, name, original)


# baseline ----------------------------------------------------------------------------------------
def _bodies(rows: Iterator[tuple[Any, ...]], batch_size: int) -> int:
    """orjson of the import bodies the rows would make (every row a contact; no checks)."""
    tags = list(FIELDS)
    encoded, batch = 0, []
    for row in rows:
        batch.append({"email": row[1], "fields": dict(zip(tags, row[2:7], strict=True))})
        if len(batch) == batch_size:
            encoded += len(orjson.dumps({"contacts": batch}))
            batch = []
    if batch:
        encoded += len(orjson.dumps({"contacts": batch}))
    return encoded


def _sqlite_rows(path: Path) -> Iterator[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        cursor = conn.execute(SELECT)
        while page := cursor.fetchmany(FETCH):
            yield from page
    finally:
        conn.close()


def _pg_rows(url: str) -> Iterator[tuple[Any, ...]]:
    import psycopg

    conninfo = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo) as conn, conn.cursor(name="bench_baseline") as cursor:
        cursor.itersize = FETCH
        cursor.execute(SELECT)
        while page := cursor.fetchmany(FETCH):
            yield from page


def baseline(rows: Callable[[], Iterator[tuple[Any, ...]]], batch_size: int) -> dict[str, float]:
    """The driver's read alone and with orjson of the bodies, after one warm-up read (the
    steps after it find the table in the same caches)."""
    for _ in rows():
        pass
    started = time.perf_counter()
    count = sum(1 for _ in rows())
    read = time.perf_counter() - started
    started = time.perf_counter()
    _bodies(rows(), batch_size)
    both = time.perf_counter() - started
    return {"read": read, "read+orjson": both, "rows": count}


# source set-up and changes -----------------------------------------------------------------------
def load_postgres(url: str, n: int, seed: int) -> float:
    """The same ``customers`` rows (same seed) in the PostgreSQL database at ``url``, by COPY."""
    import psycopg

    started = time.perf_counter()
    engine = sa.create_engine(url)
    customers.metadata.create_all(engine)
    engine.dispose()
    conninfo = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo) as conn, conn.cursor() as cursor:
        with cursor.copy(f"COPY customers ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for row in people(n, seed=seed):
                copy.write_row([row[c] for c in COLUMNS])
        cursor.execute("ANALYZE customers")
    return time.perf_counter() - started


def change_rows(source_url: str, n: int, changed: int) -> None:
    """``changed`` rows spread over the table get a new first_name and a newer updated_at."""
    step = max(1, n // changed)
    ids = list(range(1, n + 1, step))[:changed]
    engine = sa.create_engine(source_url)
    with engine.begin() as conn:
        # Through the Table, so that SQLite stores the datetimes as SQLAlchemy writes them.
        conn.execute(
            customers.update().where(customers.c.id == sa.bindparam("b_id"))
            .values(first_name=customers.c.first_name + "x", updated_at=sa.bindparam("ts")),
            [{"b_id": i, "ts": T0.replace(year=2026) + timedelta(seconds=j)}
             for j, i in enumerate(ids)])
    engine.dispose()


def touch_all(source_url: str) -> None:
    """Every row stamped with one newer updated_at; no content changes."""
    engine = sa.create_engine(source_url)
    with engine.begin() as conn:
        conn.execute(customers.update().values(updated_at=T0.replace(year=2027)))
    engine.dispose()


# the steps ---------------------------------------------------------------------------------------
STEPS = ("plan (first sync)", "first sync", "no-change sync", "no-change backfill",
         "incremental sync", "bulk-touch sync", "one-updated_at sync")


def run_config(name: str, source_url: str, state_url: str, args: argparse.Namespace
               ) -> list[dict[str, Any]]:
    """The steps in order on one source and state store (results per step)."""
    clock = StoreClock()
    originals = clock.install()
    try:
        return _run_steps(name, source_url, state_url, args, clock)
    finally:
        StoreClock.uninstall(originals)


def _run_steps(name: str, source_url: str, state_url: str, args: argparse.Namespace,
               clock: StoreClock) -> list[dict[str, Any]]:
    _domain_problem.cache_clear()
    cfg = settings(source=Path("unused"), state_url=state_url, api_url=API_URL,
                   batch_size=args.batch_size, source_url=source_url)
    store = StateStore.from_url(state_url)
    store.ensure_schema()
    stub = _TimedStub()
    client = MailtrapClient(token=DEFAULT_TOKEN, base_url=API_URL, account_id=DEFAULT_ACCOUNT_ID,
                            transport=stub, pacer=None, timeout=300)

    def job() -> SyncJob:
        return SyncJob(settings=cfg, pipeline=cfg.pipelines[0], store=store, client=client)

    def step(label: str, action: Callable[[], dict[str, int]]) -> None:
        if args.profile and label != PROFILED[args.profile]:
            action()
            return
        inside, started = stub.seconds, time.perf_counter()
        store_before = dict(clock.seconds)
        counts = (action() if not args.profile
                  else profile(action, top=35, sorts=("tottime", "cumulative")))
        wall = time.perf_counter() - started
        own = wall - (stub.seconds - inside)
        results.append({"config": name, "step": label, "wall_s": wall, "own_s": own,
                        "counts": counts, "rows_per_s": counts.get("read", 0) / own,
                        **{f"{part}_s": clock.seconds[part] - store_before[part]
                           for part in clock.seconds}})

    def sync(kind: RunKind) -> dict[str, int]:
        result = job().run(kind)
        if result.outcome is not RunOutcome.SUCCEEDED:
            raise SystemExit(f"{name}: {kind} ended {result.outcome}: {result.error}")
        return result.counts

    def plan() -> dict[str, int]:
        report = job().plan(sample=0)
        return dict(report.counts)

    results: list[dict[str, Any]] = []
    try:
        step("plan (first sync)", plan)
        step("first sync", lambda: sync(RunKind.SYNC))
        step("no-change sync", lambda: sync(RunKind.SYNC))
        step("no-change backfill", lambda: sync(RunKind.BACKFILL))
        change_rows(source_url, args.rows, args.changed)
        step("incremental sync", lambda: sync(RunKind.SYNC))
        touch_all(source_url)
        step("bulk-touch sync", lambda: sync(RunKind.SYNC))
        step("one-updated_at sync", lambda: sync(RunKind.SYNC))
    finally:
        client.close()
        store.close()
    if not args.profile:
        _check(name, results, stub.stub.contacts_received, args)
    return results


PROFILED = {"plan": "plan (first sync)", "first-sync": "first sync",
            "backfill": "no-change backfill", "bulk-touch": "bulk-touch sync",
            "one-updated-at": "one-updated_at sync"}


def pipelined(source_url: str, state_url: str, args: argparse.Namespace) -> dict[str, Any] | None:
    """A first sync from ``source_url`` into the empty state store at ``state_url`` against
    imports that take ``--import-seconds``, with the default ``imports_in_flight``."""
    if not args.import_seconds or args.profile:
        return None
    _domain_problem.cache_clear()
    in_flight = MailtrapSettings.model_fields["imports_in_flight"].default
    return pipelined_first_sync(source_url, state_url, batch_size=args.batch_size,
                                in_flight=in_flight, import_seconds=args.import_seconds,
                                scale=args.batch_size / FULL_BATCH, account=2001)


def memory(source: Path, tmp: Path, args: argparse.Namespace, *,
           source_url: str | None = None) -> dict[str, Any] | None:
    """Peak RSS of a first sync of ``source`` (or the database at ``source_url``, into a
    scratch PostgreSQL state store) in a fresh process (``bench_memory``)."""
    if args.no_memory or args.profile:
        return None
    if source_url is not None:
        options = argparse.Namespace(batch_size=args.batch_size, tracemalloc=False,
                                     double="stub", in_flight=None,
                                     import_seconds=args.import_seconds)
        with _scratch_postgres(args.pg_url) as state_url:
            return measure_memory(args.rows, source, tmp, options, source_url=source_url,
                                  state_url=state_url)
    # Imports that take --import-seconds, so that batches are held in flight as with Mailtrap.
    options = argparse.Namespace(batch_size=args.batch_size, tracemalloc=False, double="stub",
                                 in_flight=None, import_seconds=args.import_seconds)
    return measure_memory(args.rows, source, tmp, options)


def _check(name: str, results: list[dict[str, Any]], received: int,
           args: argparse.Namespace) -> None:
    """The runs did what the scenario says (else the timings describe something else)."""
    sent = {r["step"]: r["counts"].get("sent", 0) for r in results}
    problems = []
    if sent["first sync"] < args.rows * 0.95:
        problems.append(f"first sync sent {sent['first sync']}")
    if not 0 < sent["incremental sync"] <= args.changed:
        problems.append(f"incremental sync sent {sent['incremental sync']}")
    for label in ("no-change sync", "no-change backfill", "bulk-touch sync",
                  "one-updated_at sync"):
        if sent[label]:
            problems.append(f"{label} sent {sent[label]}")
    if received != sent["first sync"] + sent["incremental sync"]:
        problems.append(f"the stand-in received {received}")
    if problems:
        raise SystemExit(f"{name}: unexpected counts: {'; '.join(problems)}")


# output ------------------------------------------------------------------------------------------
def _print(result: dict[str, Any]) -> None:
    host = result["machine"]
    print(f"bench_scale: {result['rows']:,} rows, batch_size {result['batch_size']:,}, "
          f"{result['changed']:,} changed; {host['cpus']} CPUs ({host['cpu']}), "
          f"Python {host['python']}, load {host['loadavg_1m_at_start']} at start, "
          f"{result['load_at_end']} at end; peak RSS {result['peak_rss_mb']:.0f} MiB")
    for config in result["configs"]:
        base = config["baseline"]
        ref, read = base["read+orjson"], base["read"]
        rows: list[list[Any]] = [
            ["baseline: driver read", read, read, base["rows"] / read, read / ref,
             "", "", "", ""],
            ["baseline: read + orjson bodies", ref, ref, base["rows"] / ref, 1.0,
             "", "", "", ""],
        ]
        for r in config["steps"]:
            rows.append([r["step"], r["wall_s"], r["own_s"], r["rows_per_s"], r["own_s"] / ref,
                         r["counts"].get("read", 0), r["counts"].get("sent", 0),
                         r["write_ahead_s"], r["confirm_s"]])
        print(f"\n{config['name']} (source made in {config['source_s']:.1f} s)")
        print(table(["step", "wall s", "own s", "rows/s", "× baseline", "rows read", "sent",
                     "write-ahead s", "confirm s"], rows))
        first = next((r for r in config["steps"] if r["step"] == "first sync"), None)
        if first:
            print(f"first sync: confirming (confirm_batch + advance) {first['confirm_s']:.2f} s, "
                  f"{first['confirm_s'] / first['own_s']:.1%} of its own time (goal < 10 %); "
                  f"write-ahead {first['write_ahead_s']:.2f} s")
        if piped := config.get("pipelined"):
            print(f"pipelined first sync, imports taking {result['import_seconds']:g} s, "
                  f"{piped['in_flight']} in flight: wall {piped['wall_s']:.1f} s, waiting with "
                  f"nothing to do {piped['idle_s']:.1f} s = {piped['idle_share']:.1%} "
                  f"(goal < 25 %); {piped['imports']} imports, {piped['polls']} polls")
        if mem := config.get("memory"):
            print(f"first sync in a fresh process: peak RSS {mem['peak_mb']:.0f} MiB "
                  f"(goal ≤ 200 MiB), {mem['growth_mb']:.0f} MiB over its start")
        touch = next((r for r in config["steps"] if r["step"] == "one-updated_at sync"), None)
        if touch:
            print(f"one-updated_at sync: {touch['own_s'] / read:.2f}× the baseline read alone "
                  "(goal ≤ 1.5×)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=50_000)
    parser.add_argument("--changed", type=int, default=1_000)
    parser.add_argument("--pg-url", help="also run PostgreSQL source + state in a scratch "
                        "database on this server, e.g. postgresql+psycopg://postgres@127.0.0.1/test")
    parser.add_argument("--only", choices=("sqlite", "postgresql"))
    parser.add_argument("--import-seconds", type=float, default=5.0,
                        help="how long each import of the pipelining step runs (0: no such step)")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the peak-RSS first sync in a fresh process")
    parser.add_argument("--profile", choices=tuple(PROFILED),
                        help="cProfile one step (by own time) instead of timing the table")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    configure(level="WARNING")
    host = machine()
    configs = []
    with tempfile.TemporaryDirectory(prefix="mts-scale-") as tmp:
        if args.only != "postgresql":
            source = Path(tmp) / "crm.db"
            made = create_source(source, args.rows, seed=args.seed)
            base = baseline(lambda: _sqlite_rows(source), args.batch_size)
            steps = run_config("sqlite", f"sqlite:///{source}",
                               f"sqlite:///{Path(tmp) / 'state.db'}", args)
            piped = pipelined(f"sqlite:///{source}",
                              f"sqlite:///{Path(tmp) / 'state-pipelined.db'}", args)
            configs.append({"name": "SQLite source + SQLite state", "source_s": made,
                            "baseline": base, "steps": steps, "pipelined": piped,
                            "memory": memory(source, Path(tmp), args)})
        if args.pg_url and args.only != "sqlite":
            with _scratch_postgres(args.pg_url) as pg_url:
                made = load_postgres(pg_url, args.rows, args.seed)
                base = baseline(lambda: _pg_rows(pg_url), args.batch_size)
                steps = run_config("postgresql", pg_url, pg_url, args)
                with _scratch_postgres(args.pg_url) as fresh_state:
                    piped = pipelined(pg_url, fresh_state, args)
                configs.append({"name": "PostgreSQL source + PostgreSQL state",
                                "source_s": made, "baseline": base, "steps": steps,
                                "pipelined": piped,
                                "memory": memory(Path(tmp) / "unused.db", Path(tmp), args,
                                                 source_url=pg_url)})
    if args.profile:
        return 0
    result = {"benchmark": "bench_scale", "rows": args.rows, "batch_size": args.batch_size,
              "changed": args.changed, "import_seconds": args.import_seconds,
              "configs": configs, "machine": host,
              "load_at_end": round(os.getloadavg()[0], 2), "peak_rss_mb": peak_rss_mb()}
    if args.json:
        emit_json(result)
    else:
        _print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
