"""Pipelining (issue 11): a first sync into a Mailtrap whose imports take a fixed time, with
``mailtrap.imports_in_flight`` = 1 (each import confirmed before the next batch is read) and
with the default, reporting how much of the wall time the run spent waiting with nothing to do.

Each run is a first sync of the same N-row SQLite source into a fresh SQLite state store, by the
real ``SyncJob``, through a paced client, against ``SlowImports``: the benchmark stub of Mailtrap
(``stub_mailtrap``: stores no contacts, so the time measured is the syncing code's) whose imports
answer ``started`` until ``--import-seconds`` after they were posted, then ``finished``.

"Waiting with nothing to do" is the time the courier spends sleeping until the next poll of an
import is due (``Courier._pause``): nothing is being read, decided, posted or confirmed then.
Polls themselves, pacing waits and everything else count as work.

The scenario of the issue is 1M rows in imports of 50,000 that take 5 s each. By default the
benchmark runs a scaled copy that takes a minute or two: 200,000 rows in imports of 10,000 with
every duration scaled by 10,000 / 50,000 (imports take 1 s, polls start at 0.4 s and grow to
6 s, and the pacing windows shrink likewise, so the ratio of requests to work is kept).
``--rows 1000000 --batch-size 50000`` runs the issue's scenario unscaled.

    .venv/bin/python bench/bench_pipeline.py [--rows 200000] [--batch-size 10000]
        [--import-seconds S] [--in-flight 1 3] [--json]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from common import create_source, emit_json, machine, settings, table
from stub_mailtrap import StubTransport, _json

from sync_service.courier import Courier
from sync_service.job import SyncJob
from sync_service.logging import configure
from sync_service.mailtrap.client import MailtrapClient
from sync_service.models import RunOutcome
from sync_service.pacing import Pacer
from sync_service.settings import MailtrapSettings
from sync_service.state import StateStore

API_URL = "https://mailtrap.bench"
FULL_BATCH = 50_000  # the import size; durations are scaled by batch_size / this
_IMPORT = re.compile(r"/contacts/imports/(\d+)$")


class SlowImports(StubTransport):
    """The stub, with imports that finish ``seconds`` after they were posted."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.posted_at: dict[int, float] = {}
        self.polls = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        found = _IMPORT.search(request.url.path)
        if found and request.method == "GET":
            self.polls += 1
            import_id = int(found.group(1))
            if time.monotonic() - self.posted_at[import_id] < self.seconds:
                return _json({"id": import_id, "status": "started"})
        response = super().handle_request(request)
        if request.method == "POST" and request.url.path.endswith("/contacts/imports"):
            self.posted_at[len(self.imports)] = time.monotonic()
        return response


class IdleClock:
    """Time spent in ``Courier._pause`` (waiting for a poll to be due), while installed."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.pauses = 0

    def install(self) -> Any:
        original = Courier._pause
        clock = self

        def timed(courier: Courier, seconds: float) -> bool:
            started = time.perf_counter()
            try:
                return original(courier, seconds)
            finally:
                clock.seconds += time.perf_counter() - started
                clock.pauses += 1

        Courier._pause = timed  # type: ignore[method-assign] - this process only
        return original


def first_sync(source_url: str, state_url: str, *, batch_size: int, in_flight: int,
               import_seconds: float, scale: float, account: int) -> dict[str, Any]:
    """One first sync from ``source_url`` into an empty state store at ``state_url`` with
    ``imports_in_flight`` = ``in_flight``; its wall and idle time (also used by bench_scale)."""
    base = settings(source=Path("unused"), state_url=state_url, api_url=API_URL,
                    batch_size=batch_size, source_url=source_url)
    rates = {"account": f"200/{60 * scale:g}s", "token": f"150/{10 * scale:g}s"}
    mailtrap = MailtrapSettings(api_url=API_URL, account_id=account, poll_interval=2.0 * scale,
                                poll_max_interval=30.0 * scale, imports_in_flight=in_flight)
    cfg = base.model_copy(update={"mailtrap": mailtrap})
    store = StateStore.from_url(state_url)
    store.ensure_schema()
    stub = SlowImports(import_seconds)
    # A token of its own per run: the pacing limiters are per process, keyed by token/account.
    token = f"bench-token-{account}"
    client = MailtrapClient(token=token, base_url=API_URL, account_id=account, transport=stub,
                            pacer=Pacer(token=token, account_rate=rates["account"],
                                        token_rate=rates["token"]),
                            retry_initial=0.01, retry_max=0.1)
    idle = IdleClock()
    original = idle.install()
    try:
        job = SyncJob(settings=cfg, pipeline=cfg.pipelines[0], store=store, client=client)
        started = time.perf_counter()
        result = job.run()
        wall = time.perf_counter() - started
    finally:
        Courier._pause = original  # type: ignore[method-assign]
        client.close()
        store.close()
    if result.outcome is not RunOutcome.SUCCEEDED:
        raise SystemExit(f"in_flight={in_flight}: {result.outcome}: {result.error}")
    if stub.contacts_received != result.counts.get("sent"):
        raise SystemExit(f"in_flight={in_flight}: stub got {stub.contacts_received}, "
                         f"run counted {result.counts.get('sent')}")
    return {"in_flight": in_flight, "wall_s": wall, "idle_s": idle.seconds,
            "idle_share": idle.seconds / wall if wall else 0.0, "imports": len(stub.imports),
            "polls": stub.polls, "sent": stub.contacts_received,
            "read": result.counts.get("read", 0)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--import-seconds", type=float, default=None,
                        help="how long each import runs (default 5 s scaled by batch size)")
    parser.add_argument("--in-flight", type=int, nargs="+", default=None,
                        help="imports_in_flight values to run (default: 1 and the default)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    configure(level="WARNING")
    scale = args.batch_size / FULL_BATCH
    import_seconds = args.import_seconds if args.import_seconds is not None else 5.0 * scale
    default = MailtrapSettings.model_fields["imports_in_flight"].default
    counts = args.in_flight or [1, default]
    host = machine()
    with tempfile.TemporaryDirectory(prefix="mts-bench-") as tmp:
        source = Path(tmp) / "crm.db"
        source_s = create_source(source, args.rows, seed=args.seed)
        runs = [first_sync(f"sqlite:///{source}", f"sqlite:///{Path(tmp) / f'state-{index}.db'}",
                           batch_size=args.batch_size, in_flight=count,
                           import_seconds=import_seconds, scale=scale, account=1001 + index)
                for index, count in enumerate(counts)]
    result = {"benchmark": "bench_pipeline", "rows": args.rows, "batch_size": args.batch_size,
              "import_seconds": import_seconds, "scale": scale, "source_s": source_s,
              "runs": runs, "machine": host}
    if args.json:
        emit_json(result)
        return 0
    print(f"bench_pipeline: {args.rows:,} rows, imports of {args.batch_size:,} taking "
          f"{import_seconds:g} s (durations scaled by {scale:g}), {host['cpus']} CPUs, "
          f"Python {host['python']}, load {host['loadavg_1m_at_start']}; source made in "
          f"{source_s:.1f} s")
    print(table(["imports_in_flight", "wall s", "idle s", "idle share", "imports", "polls",
                 "rows/s"],
                [[r["in_flight"], r["wall_s"], r["idle_s"], f"{r['idle_share']:.0%}",
                  r["imports"], r["polls"], r["read"] / r["wall_s"]] for r in runs]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
