"""Reading speed and memory of each connector: N records from each source's double, full read.

Each source is read by a fresh child process (``--child``), so that its peak RSS (VmHWM) is the
connector's own: the parent prepares the data (a file) or serves the CRM double over local HTTP,
and the child only builds the connector from its settings (through the entry point, as the job
does), runs ``check()`` and drains ``read(None)``. Reported: records, seconds, records/s, peak RSS
and the RSS before the read (the interpreter and imports).

Sources are a dict of name → setup (``SETUPS``); a setup writes or serves N records and returns
the connector's ``[pipelines.source]`` table. Add one there (salesforce, pipedrive).

    .venv/bin/python bench/bench_connectors.py                  # --records N --only NAME --json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from common import emit_json, machine, peak_rss_mb, people, rss_mb, table

Setup = Callable[[int, Path, ExitStack], dict[str, Any]]
COLUMNS = ["id", "email", "first_name", "last_name", "plan", "seats", "signed_up"]


def _csv(records: int, folder: Path, _stack: ExitStack) -> dict[str, Any]:
    path = folder / "customers.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(people(records))
    return {"connector": "file", "path": str(path), "key": "id"}


def _jsonl(records: int, folder: Path, _stack: ExitStack) -> dict[str, Any]:
    path = folder / "customers.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for person in people(records):
            handle.write(json.dumps({k: person.get(k) for k in COLUMNS}, default=str) + "\n")
    return {"connector": "file", "path": str(path), "key": "id"}


def _hubspot(records: int, _folder: Path, stack: ExitStack) -> dict[str, Any]:
    from sync_service.testing.hubspot.double import DEFAULT_TOKEN, HubSpotDouble
    from sync_service.testing.server import serve_app

    double = HubSpotDouble()
    start = datetime.now(UTC) - timedelta(days=30)
    for n, person in enumerate(people(records), start=1):
        double.add(contact_id=n, email=person["email"], at=start + timedelta(seconds=n),
                   properties={"firstname": person["first_name"],
                               "lastname": person["last_name"]})
    url = stack.enter_context(serve_app(double.app, "hubspot"))
    return {"connector": "hubspot", "token": DEFAULT_TOKEN, "api_url": url,
            "properties": ["email", "firstname", "lastname"], "rate": "100000/1s",
            "search_rate": "100000/1s"}


def _salesforce(records: int, _folder: Path, stack: ExitStack) -> dict[str, Any]:
    from sync_service.testing.salesforce import SalesforceDouble
    from sync_service.testing.server import serve_app

    double = SalesforceDouble()
    start = datetime.now(UTC) - timedelta(days=30)
    for n, person in enumerate(people(records), start=1):
        double.add("Contact", modstamp=start + timedelta(seconds=n // 10),
                   Email=person["email"], FirstName=person["first_name"],
                   LastName=person["last_name"])
    url = stack.enter_context(serve_app(double.app, "salesforce"))
    return {"connector": "salesforce", "login_url": url, "client_id": double.client_id,
            "client_secret": double.client_secret, "fields": ["Email", "FirstName", "LastName"]}


def _pipedrive(records: int, _folder: Path, stack: ExitStack) -> dict[str, Any]:
    from sync_service.testing.pipedrive import PipedriveDouble
    from sync_service.testing.server import serve_app

    double = PipedriveDouble()
    plan = double.add_custom_field("Plan tier")
    start = datetime.now(UTC) - timedelta(days=30)
    for n, person in enumerate(people(records), start=1):
        double.add(person_id=n, first_name=person["first_name"], last_name=person["last_name"],
                   emails=[person["email"]] if person["email"] else [],
                   custom={plan: person["plan"]},
                   at=start + timedelta(seconds=n // 10))  # ten persons a second: ties
    url = stack.enter_context(serve_app(double.app, "pipedrive"))
    return {"connector": "pipedrive", "token": double.token, "api_url": url,
            "fields": ["first_name", "last_name", "Plan tier"], "rate": "100000/1s"}


SETUPS: dict[str, Setup] = {"file-csv": _csv, "file-jsonl": _jsonl, "hubspot": _hubspot,
                            "salesforce": _salesforce, "pipedrive": _pipedrive}


def child(raw: dict[str, Any]) -> dict[str, Any]:
    """Build the connector as the job does, check it, and drain a full read."""
    from sync_service.connector import load_connector

    factory = load_connector(str(raw["connector"]))
    connector = factory(factory.settings_model.model_validate(raw))
    before = rss_mb()
    try:
        connector.check()
        started = time.perf_counter()
        count = sum(1 for _ in connector.read(None))
        seconds = time.perf_counter() - started
    finally:
        connector.close()
    return {"records": count, "seconds": seconds, "peak_rss_mb": peak_rss_mb(),
            "rss_before_mb": before}


def run_one(name: str, records: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-connectors-") as tmp, ExitStack() as stack:
        prepared = time.perf_counter()
        raw = SETUPS[name](records, Path(tmp), stack)
        setup_s = time.perf_counter() - prepared
        done = subprocess.run(  # noqa: PLW1510 - the return code is checked below
            [sys.executable, __file__, "--child", json.dumps(raw)],
            capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
        if done.returncode != 0:
            raise RuntimeError(f"{name}: the reading process failed:\n{done.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if result["records"] != records:
        raise RuntimeError(f"{name}: read {result['records']} records, expected {records}")
    result.update(source=name, setup_s=setup_s,
                  records_per_s=result["records"] / max(result["seconds"], 1e-9))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--only", nargs="*", choices=sorted(SETUPS), help="sources to read")
    parser.add_argument("--json", action="store_true", help="print the raw numbers as JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    results = [run_one(name, args.records) for name in (args.only or list(SETUPS))]
    if args.json:
        emit_json({"machine": machine(), "records": args.records, "results": results})
        return
    print(f"full read of {args.records:,} records per source, each in a fresh process")
    print(table(["source", "records/s", "seconds", "peak RSS MiB", "RSS before MiB"],
                [[r["source"], r["records_per_s"], r["seconds"], r["peak_rss_mb"],
                  r["rss_before_mb"]] for r in results]))


if __name__ == "__main__":
    main()
