"""Bounded memory (design invariant 5): peak RSS of a full first sync of N rows, for several N.

For each N (default 50k, 200k, 400k) the parent process makes a SQLite source of N rows, and a
fresh child process runs the real ``SyncJob`` (first sync, state in a new SQLite file,
``batch_size`` fixed, the client not paced) and reports:

- ``baseline``: RSS after imports and set-up, just before the run;
- ``peak``: the process's high-water RSS after the run (``VmHWM``, set-up included). Not
  ``ru_maxrss``: on Linux a child inherits its parent's high-water mark through the exec, and the
  parent here holds the double (the JSON output has ``ru_maxrss_mb`` too, for comparison);
- ``growth``: peak - baseline, what the run itself added;
- with ``--tracemalloc``: the peak of Python allocations during the run alone (slower).

Where the imports go (``--double``):

- ``stub`` (default): ``stub_mailtrap.StubTransport`` in the child, a benchmark stub that stores
  no contacts and answers every import ``finished``; the child measures the syncing code alone;
- ``server``: the real Mailtrap double, served over HTTP by the parent (``serve(double)``, uvicorn
  on 127.0.0.1; imports finish on their first poll, no rate limits). The double keeps every
  contact, which is why it lives in the parent, where its memory is not counted. It validates
  every contact, so this takes about 3 minutes on 2 cores for the default sizes.

Invariant 5 holds when peak and growth stay roughly flat as N grows: the ratios against the
smallest N are printed. "domains cached" is the size of the mapper's per-domain validation cache
(``lru_cache(maxsize=65_536)``), the one structure found to grow with N: it stops at its maxsize.

    .venv/bin/python bench/bench_memory.py [--rows 50000 200000 400000] [--batch-size 10000]
        [--double stub|server] [--in-flight N] [--import-seconds S] [--pg-url URL]
        [--tracemalloc] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    GcClock,
    copy_prefix,
    create_source,
    emit_json,
    fast_double,
    machine,
    peak_rss_mb,
    rss_mb,
    ru_maxrss_mb,
    settings,
    table,
)

STUB_URL = "https://stub.mailtrap.bench"


def child(args: argparse.Namespace) -> int:
    """Run one sync and print what it measured as one JSON line."""
    import tracemalloc

    from bench_pipeline import SlowImports
    from stub_mailtrap import StubTransport

    from sync_service.allocator import release_large_blocks
    from sync_service.job import SyncJob
    from sync_service.logging import configure
    from sync_service.mailtrap.client import MailtrapClient
    from sync_service.mapping import _domain_problem  # its cache is the one thing that grows
    from sync_service.models import RunOutcome
    from sync_service.state import StateStore
    from sync_service.testing.mailtrap.double import DEFAULT_ACCOUNT_ID, DEFAULT_TOKEN

    configure(level="WARNING")
    release_large_blocks()  # as the CLI does at start (sync_service/allocator.py)
    cfg = settings(source=Path(args.source), state_url=args.state_url or f"sqlite:///{args.state}",
                   api_url=args.api_url, batch_size=args.batch_size, source_url=args.source_url)
    if args.in_flight is not None:
        mailtrap = cfg.mailtrap.model_copy(update={"imports_in_flight": args.in_flight})
        cfg = cfg.model_copy(update={"mailtrap": mailtrap})
    store = StateStore.from_url(cfg.state.url)
    store.ensure_schema()
    stub: StubTransport | None = None
    if args.api_url == STUB_URL:
        # Imports that finish on their first poll never overlap: with --import-seconds they run
        # that long, so up to imports_in_flight batches are held at once, as with Mailtrap.
        stub = SlowImports(args.import_seconds) if args.import_seconds else StubTransport()
    client = MailtrapClient(token=DEFAULT_TOKEN, base_url=args.api_url, transport=stub,
                            account_id=DEFAULT_ACCOUNT_ID, pacer=None, timeout=300)
    job = SyncJob(settings=cfg, pipeline=cfg.pipelines[0], store=store, client=client)
    baseline = rss_mb()
    if args.tracemalloc:
        tracemalloc.start()
    with GcClock().installed() as collector:
        started = time.perf_counter()
        result = job.run()
        wall = time.perf_counter() - started
    traced = tracemalloc.get_traced_memory()[1] / 2**20 if args.tracemalloc else None
    client.close()
    store.close()
    print(json.dumps({
        "outcome": str(result.outcome), "error": result.error, "counts": result.counts,
        "wall_s": wall, "baseline_mb": baseline, "peak_mb": peak_rss_mb(),
        "ru_maxrss_mb": ru_maxrss_mb(),
        "traced_peak_mb": traced, "gc_s": collector.seconds,
        "ok": result.outcome is RunOutcome.SUCCEEDED,
        "received": stub.contacts_received if stub is not None else None,
        "domains_cached": _domain_problem.cache_info().currsize,
    }))
    return 0


def measure(n: int, source: Path, tmp: Path, args: argparse.Namespace, *,
            source_url: str | None = None, state_url: str | None = None) -> dict[str, Any]:
    """One first sync of ``source`` (or the database at ``source_url``) into a new state store
    (``state_url``: an empty database; else a new SQLite file), in a fresh process."""
    from sync_service.testing.mailtrap.double import serve

    state = tmp / f"state-{n}.db"
    command = [sys.executable, __file__, "--child", "--source", str(source), "--state", str(state),
               "--batch-size", str(args.batch_size)]
    if source_url:
        command += ["--source-url", source_url]
    if state_url:
        command += ["--state-url", state_url]
    if getattr(args, "in_flight", None) is not None:
        command += ["--in-flight", str(args.in_flight)]
    if getattr(args, "import_seconds", 0):
        command += ["--import-seconds", str(args.import_seconds)]
    if args.tracemalloc:
        command.append("--tracemalloc")
    double = fast_double() if args.double == "server" else None
    if double is None:
        done = subprocess.run([*command, "--api-url", STUB_URL], capture_output=True, text=True,
                              check=False)
    else:
        with serve(double) as url:
            done = subprocess.run([*command, "--api-url", url], capture_output=True, text=True,
                                  check=False)
    if done.returncode != 0:
        raise SystemExit(f"child for N={n} failed:\n{done.stderr}")
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if not report["ok"]:
        raise SystemExit(f"sync of N={n} ended {report['outcome']}: {report['error']}")
    held = report["received"] if double is None else len(double.contacts())
    if held != report["counts"].get("sent"):
        raise SystemExit(f"N={n}: the double holds {held} contacts, the run sent "
                         f"{report['counts'].get('sent')}")
    return {"rows": n, **report, "growth_mb": report["peak_mb"] - report["baseline_mb"]}


def _measure_postgres(n: int, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``measure`` with the source (the same rows, loaded by COPY) and the state store in two
    scratch databases on the server of ``--pg-url``, dropped afterwards."""
    from bench_scale import load_postgres
    from bench_sync import _scratch_postgres

    with _scratch_postgres(args.pg_url) as source_url, _scratch_postgres(args.pg_url) as state:
        load_postgres(source_url, n, args.seed)
        return measure(n, tmp / "unused.db", tmp, args, source_url=source_url, state_url=state)


def _print(result: dict[str, Any]) -> None:
    host = result["machine"]
    where = ("the real double over HTTP in the parent" if result["double"] == "server"
             else "the benchmark stub (stores nothing)")
    print(f"bench_memory: full first sync per N in a fresh process, batch_size "
          f"{result['batch_size']:,}, imports to {where}; {host['cpus']} CPUs, "
          f"Python {host['python']}, load {host['loadavg_1m_at_start']}")
    runs = result["runs"]
    first = runs[0]
    rows = []
    for r in runs:
        rows.append([f"{r['rows']:,}", r["baseline_mb"], r["peak_mb"], r["growth_mb"],
                     r["peak_mb"] / first["peak_mb"],
                     r["growth_mb"] / first["growth_mb"] if first["growth_mb"] > 0 else 0.0,
                     *([r["traced_peak_mb"]] if r["traced_peak_mb"] is not None else []),
                     r["wall_s"], r["rows"] / r["wall_s"], r["domains_cached"]])
    headers = ["N", "baseline MiB", "peak MiB", "growth MiB", "peak ratio", "growth ratio",
               *(["traced peak MiB"] if first["traced_peak_mb"] is not None else []),
               "wall s", "rows/s", "domains cached"]
    print(table(headers, rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[50_000, 200_000, 400_000])
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--double", choices=("stub", "server"), default="stub",
                        help="where imports go: an in-process stub that stores nothing "
                        "(default), or the real double served over HTTP by the parent")
    parser.add_argument("--in-flight", type=int, default=None,
                        help="mailtrap.imports_in_flight (default: the product's default)")
    parser.add_argument("--import-seconds", type=float, default=0.0,
                        help="with the stub: imports run this long (default: they finish on the "
                        "first poll, so no two are ever in flight at once)")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="also report tracemalloc's peak during the run (slower)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--state", help=argparse.SUPPRESS)
    parser.add_argument("--api-url", help=argparse.SUPPRESS)
    parser.add_argument("--source-url", help=argparse.SUPPRESS)
    parser.add_argument("--state-url", help=argparse.SUPPRESS)
    parser.add_argument("--pg-url", help="source and state in scratch PostgreSQL databases on "
                        "this server instead of SQLite files (imports to the stub only)")
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    from sync_service.logging import configure

    configure(level="WARNING")
    host = machine()
    sizes = sorted(args.rows)
    runs = []
    with tempfile.TemporaryDirectory(prefix="mts-bench-") as tmp_name:
        tmp = Path(tmp_name)
        if args.pg_url:
            runs = [_measure_postgres(n, tmp, args) for n in sizes]
            sizes = []
        else:
            largest = tmp / f"crm-{sizes[-1]}.db"
            create_source(largest, sizes[-1], seed=args.seed)
        for n in sizes:
            source = largest
            if n != sizes[-1]:
                source = tmp / f"crm-{n}.db"
                copy_prefix(largest, source, n)
            runs.append(measure(n, source, tmp, args))
    result = {"benchmark": "bench_memory", "batch_size": args.batch_size, "double": args.double,
              "in_flight": args.in_flight, "import_seconds": args.import_seconds,
              "database": "postgresql" if args.pg_url else "sqlite",
              "runs": runs, "machine": host}
    if args.json:
        emit_json(result)
    else:
        _print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
