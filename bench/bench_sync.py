"""A whole sync of N rows from SQLite into the Mailtrap double, in-process, timed phase by phase.

Three runs of the real ``SyncJob`` on one pipeline, each on the same source and state store:

1. ``first sync``: every row is new; every contact is sent, in imports of ``--batch-size``;
2. ``no-change sync``: the next incremental run; it re-reads only the lookback window (5 min);
3. ``no-change backfill``: a full re-read of all N rows, every one unchanged, nothing sent.

The double answers in-process (``InProcessTransport``, no spec validation), finishes imports on
their first poll and has no rate limits; the client is not paced (``pacer=None``). Time spent
inside the double (it validates and stores every contact; it is not the product) is measured at
the transport and reported on its own line, and subtracted in "rows/s without the double".

Phases are measured by wrapping the store's, the client's and the connector's methods, and the
job's ``Differ``, in this process only; nothing in the package is changed. "other" is what is left
of the wall time: the job's own bookkeeping, runs, lease, lists and fields.

The double shares the process, and its heap grows to every contact: each full garbage collection
of the syncing code would walk it (seconds per run at 200k rows). So the benchmark calls
``gc.freeze()`` after every request to the double (``--no-gc-freeze`` shows the difference), and
reports time in the collector on its own lines. Both email-validation caches (the mapper's and the
double's) are emptied before each state store's runs, as in a fresh process.

    .venv/bin/python bench/bench_sync.py [--rows 200000] [--batch-size 50000] [--json]
        [--state-url postgresql+psycopg://postgres@127.0.0.1:5432/test] [--profile]
        [--no-gc-freeze]

With ``--state-url`` the runs are repeated with the state store in a scratch PostgreSQL database
created next to the one named (and dropped at the end); no other database is touched.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import httpx
import sqlalchemy as sa
from common import (
    GcClock,
    Timings,
    create_source,
    emit_json,
    fast_double,
    machine,
    profile,
    settings,
    table,
)

import sync_service.job as job_module
from sync_service.diff import Differ
from sync_service.job import SyncJob
from sync_service.logging import configure
from sync_service.mailtrap.client import MailtrapClient
from sync_service.mapping import _domain_problem
from sync_service.models import RunKind, RunOutcome
from sync_service.state import StateStore
from sync_service.testing.mailtrap.double import DEFAULT_ACCOUNT_ID, DEFAULT_TOKEN
from sync_service.testing.mailtrap.rules import is_valid_email
from sync_service.testing.mailtrap.transport import InProcessTransport

API_URL = "https://mailtrap.bench"
RUNS = (("first sync", RunKind.SYNC), ("no-change sync", RunKind.SYNC),
        ("no-change backfill", RunKind.BACKFILL))

# (label, accumulator) in print order; "  " marks a part of the line above, not added to totals.
PHASES = (
    ("read+diff", None),
    ("  source read (SQLite pages)", "source read"),
    ("  map+hash", "map+hash"),
    ("  state look-ups (contacts, owners)", "state look-ups"),
    ("  diff", "diff"),
    ("  record rejections", "record rejections"),
    ("posting imports", None),
    ("  write-ahead (record_batch)", "record_batch"),
    ("  POST import (client)", "POST import"),
    ("    of which inside the double", "double: POST import"),
    ("  mark_batch_posted", "mark_batch_posted"),
    ("confirming", None),
    ("  poll import (GET)", "poll import"),
    ("  confirm_batch (hashes+watermark)", "confirm_batch"),
    ("  set_watermark", "set_watermark"),
    ("other (runs, lease, lists, job)", "other"),
)
GROUPS = {
    "read+diff": ("source read", "map+hash", "state look-ups", "diff", "record rejections"),
    "posting imports": ("record_batch", "POST import", "mark_batch_posted"),
    "confirming": ("poll import", "confirm_batch", "set_watermark"),
}
TOP_LEVEL = (*(name for names in GROUPS.values() for name in names), "lists+fields")


class _TimedTransport(httpx.BaseTransport):
    """Adds the time each request spends in the wrapped transport (the double) to ``timings``.

    With ``freeze``, every object alive after a request (above all the contacts the double now
    keeps) is moved out of the cyclic garbage collector's reach (``gc.freeze``), so that the
    syncing code's collections do not walk the double's ever larger heap, as they would not in a
    process of its own. Objects without reference cycles are still freed as usual.
    """

    def __init__(self, inner: httpx.BaseTransport, timings: list[Timings], *,
                 freeze: bool) -> None:
        self._inner, self._timings, self._freeze = inner, timings, freeze

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        name = ("double: POST import" if request.method == "POST" and path.endswith("/imports")
                else "double: GET import" if "/imports/" in path else "double: other")
        with self._timings[-1].measure(name):
            response = self._inner.handle_request(request)
            if self._freeze:
                gc.freeze()
            return response

    def close(self) -> None:
        self._inner.close()


class _TimedDiffer(Differ):
    timings: ClassVar[list[Timings]] = []

    def map(self, records: Any) -> Any:
        with self.timings[-1].measure("map+hash"):
            return super().map(records)

    def decide(self, *args: Any) -> Any:
        with self.timings[-1].measure("diff"):
            return super().decide(*args)


class _TimedJob(SyncJob):
    timings: ClassVar[list[Timings]] = []

    @contextmanager
    def open_connector(self) -> Iterator[Any]:
        with super().open_connector() as connector:
            read, timings = connector.read, self.timings

            def timed_read(since: Any) -> Iterator[Any]:
                return timings[-1].wrap_iterator("source read", read(since))

            connector.read = timed_read
            yield connector


def _instrument(store: StateStore, client: MailtrapClient, timings: list[Timings]) -> None:
    """Wrap the instance's methods so that each call adds its wall time to the current run."""

    def wrap(target: Any, method: str, name: str) -> None:
        original = getattr(target, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            with timings[-1].measure(name):
                return original(*args, **kwargs)

        setattr(target, method, timed)

    for method, name in (("get_contacts", "state look-ups"), ("get_holders", "state look-ups"),
                         ("get_rejections", "state look-ups"),
                         ("record_rejections", "record rejections"),
                         ("record_batch", "record_batch"),
                         ("mark_batch_posted", "mark_batch_posted"),
                         ("confirm_batch", "confirm_batch"), ("set_watermark", "set_watermark")):
        wrap(store, method, name)
    for method, name in (("create_import_body", "POST import"), ("get_import", "poll import"),
                         ("lists", "lists+fields"), ("fields", "lists+fields"),
                         ("create_list", "lists+fields")):
        wrap(client, method, name)


@contextmanager
def _scratch_postgres(url: str) -> Iterator[str]:
    """A new, empty database on the server of ``url``; dropped (only it) on the way out."""
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    name = f"mts_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield sa.make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def run_store(source: Path, state_url: str, batch_size: int, *, freeze: bool = True,
              verify: bool = True) -> dict[str, Any]:
    """The three runs against a fresh double, with the state store at ``state_url``."""
    # Both email caches are per process: empty them so that every pass starts as a fresh one.
    _domain_problem.cache_clear()
    is_valid_email.cache_clear()
    double = fast_double()
    timings: list[Timings] = [Timings()]
    _TimedDiffer.timings = _TimedJob.timings = timings
    job_module.Differ = _TimedDiffer  # type: ignore[misc] - this process only
    transport = _TimedTransport(InProcessTransport(double.app), timings, freeze=freeze)
    cfg = settings(source=source, state_url=state_url, api_url=API_URL, batch_size=batch_size)
    store = StateStore.from_url(state_url)
    store.ensure_schema()
    client = MailtrapClient(token=DEFAULT_TOKEN, base_url=API_URL, account_id=DEFAULT_ACCOUNT_ID,
                            transport=transport, pacer=None, retry_initial=0.01, retry_max=0.1)
    _instrument(store, client, timings)
    runs = []
    try:
        for label, kind in RUNS:
            timings.append(Timings())
            job = _TimedJob(settings=cfg, pipeline=cfg.pipelines[0], store=store, client=client)
            with GcClock().installed() as collector:
                started = time.perf_counter()
                result = job.run(kind)
                wall = time.perf_counter() - started
            if result.outcome is not RunOutcome.SUCCEEDED:
                raise SystemExit(f"{label} ended {result.outcome}: {result.error}")
            runs.append(_summary(label, wall, result.counts, timings[-1]))
            runs[-1]["gc_s"], runs[-1]["gc_collections"] = collector.seconds, collector.collections
        held = len(double.contacts()) if verify else runs[0]["counts"].get("sent", -1)
    finally:
        client.close()
        store.close()
        job_module.Differ = Differ  # type: ignore[misc]
        gc.unfreeze()
    if held != runs[0]["counts"].get("sent", -1) or runs[1]["counts"].get("sent", 0) \
            or runs[2]["counts"].get("sent", 0):
        raise SystemExit(f"unexpected counts: double holds {held}; runs {runs}")
    return {"state": sa.make_url(state_url).get_backend_name(), "double_contacts": held,
            "runs": runs}


def _summary(label: str, wall: float, counts: dict[str, int], t: Timings) -> dict[str, Any]:
    seconds = {name: t.get(name) for name in (*TOP_LEVEL, "double: POST import",
                                               "double: GET import", "double: other")}
    for group, names in GROUPS.items():
        seconds[group] = sum(seconds[name] for name in names)
    seconds["other"] = wall - sum(seconds[name] for name in TOP_LEVEL) + seconds["lists+fields"]
    double = seconds["double: POST import"] + seconds["double: GET import"] \
        + seconds["double: other"]
    seconds["inside the double (all requests)"] = double
    read = counts.get("read", 0)
    missed = [name for name in ("source read", "map+hash", "diff")
              if read and not t.calls.get(name)]
    if missed:
        raise SystemExit(f"bench_sync's instrumentation no longer sees {', '.join(missed)}: "
                         "has the job's reading loop moved out of sync_service.job?")
    return {"run": label, "wall_s": wall, "counts": counts, "seconds": seconds,
            "calls": dict(t.calls), "rows_per_s": read / wall if wall else 0.0,
            "rows_per_s_without_double": read / (wall - double) if wall > double else 0.0}


def _print(result: dict[str, Any]) -> None:
    host = result["machine"]
    print(f"bench_sync: {result['rows']:,} rows, batch_size {result['batch_size']:,}, "
          f"gc.freeze after each request to the double: {result['gc_freeze']}, "
          f"{host['cpus']} CPUs, Python {host['python']}, load {host['loadavg_1m_at_start']}; "
          f"source made in {result['source_s']:.1f} s")
    for store in result["stores"]:
        runs = store["runs"]
        print(f"\nstate store: {store['state']}  (seconds per phase)")
        rows: list[list[Any]] = []
        for label, name in PHASES:
            key = name or label
            rows.append([label, *(r["seconds"].get(key, 0.0) for r in runs)])
        rows.append(["inside the double (all requests)",
                     *(r["seconds"]["inside the double (all requests)"] for r in runs)])
        rows.append(["garbage collection, gen 2 (any thread)", *(r["gc_s"][2] for r in runs)])
        rows.append(["garbage collection, gen 0+1", *(r["gc_s"][0] + r["gc_s"][1] for r in runs)])
        rows.append(["wall", *(r["wall_s"] for r in runs)])
        rows.append(["rows read", *(r["counts"].get("read", 0) for r in runs)])
        rows.append(["contacts sent / imports",
                     *(f"{r['counts'].get('sent', 0):,} / {r['counts'].get('imports', 0)}"
                       for r in runs)])
        rows.append(["rows/s overall", *(r["rows_per_s"] for r in runs)])
        rows.append(["rows/s without the double", *(r["rows_per_s_without_double"]
                                                     for r in runs)])
        print(table(["phase", *(r["run"] for r in runs)], rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=50_000)
    parser.add_argument("--state-url", help="also run with the state in a scratch PostgreSQL "
                        "database on this server, e.g. postgresql+psycopg://postgres@127.0.0.1/test")
    parser.add_argument("--no-gc-freeze", action="store_true",
                        help="let the garbage collector walk the in-process double's heap too")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--profile", action="store_true",
                        help="profile the three runs (SQLite state; cProfile, by own time)")
    args = parser.parse_args(argv)
    configure(level="WARNING")
    host = machine()
    freeze = not args.no_gc_freeze
    with tempfile.TemporaryDirectory(prefix="mts-bench-") as tmp:
        source = Path(tmp) / "crm.db"
        source_s = create_source(source, args.rows, seed=args.seed)
        sqlite_url = f"sqlite:///{Path(tmp) / 'state.db'}"
        if args.profile:
            profile(lambda: run_store(source, sqlite_url, args.batch_size, freeze=freeze,
                                      verify=False), top=40)
            return 0
        stores = [run_store(source, sqlite_url, args.batch_size, freeze=freeze)]
        if args.state_url:
            with _scratch_postgres(args.state_url) as pg_url:
                stores.append(run_store(source, pg_url, args.batch_size, freeze=freeze))
    result = {"benchmark": "bench_sync", "rows": args.rows, "batch_size": args.batch_size,
              "gc_freeze": freeze,
              "source_s": source_s, "stores": stores, "machine": host}
    if args.json:
        emit_json(result)
    else:
        _print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
