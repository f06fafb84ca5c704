"""What the CLI prints: run lines, plans, status, rejects and checks (rich tables on a terminal).

Nothing here writes state. The API token never appears: it lives only in the client's headers.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import click
import orjson
from rich.console import Console
from rich.table import Table

from sync_service.errors import StateError, SyncError
from sync_service.job import PlanReport, RunResult, SyncJob
from sync_service.logging import redact
from sync_service.models import Position, StoredContact
from sync_service.runtime import build_client
from sync_service.settings import AppSettings, PipelineSettings
from sync_service.state import BatchRecord, RejectionRecord, RunRecord, StateStore

_console = Console()


def run_line(result: RunResult) -> str:
    counts = " ".join(f"{k}={v}" for k, v in sorted(result.counts.items()))
    line = (f"{result.pipeline}: {result.kind} {result.outcome} in {result.duration_s:.1f}s"
            f"{' ' + counts if counts else ''}")
    return line + (f" error: {redact(result.error)}" if result.error else "")


class ReadOnlyState:
    """The state the plan reads; a store without a schema yet reads as empty (plan writes none)."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        try:
            store.pipelines()
            self.empty = False
        except StateError:
            self.empty = True

    def get_watermark(self, pipeline: str) -> Position | None:
        return None if self.empty else self.store.get_watermark(pipeline)

    def get_contacts(self, pipeline: str, keys: Sequence[str]) -> dict[str, StoredContact]:
        return {} if self.empty else self.store.get_contacts(pipeline, keys)

    def get_owners(self, pipeline: str, emails: Sequence[str]) -> dict[str, str]:
        return {} if self.empty else self.store.get_owners(pipeline, emails)


def print_plan(plan: PlanReport) -> None:
    table = Table(title=f"plan for pipeline {plan.pipeline} (nothing was sent)")
    table.add_column("change")
    table.add_column("records", justify="right")
    for kind, count in sorted(plan.counts.items()):
        table.add_row(kind, str(count))
    _console.print(table)
    _console.print(f"imports that would be posted: {plan.imports}")
    if plan.lists_to_create:
        _console.print(f"lists that would be created: {', '.join(plan.lists_to_create)}")
    for kind, examples in sorted(plan.samples.items()):
        if examples:
            _console.print(f"[bold]{kind}[/bold] examples:")
            for example in examples:
                _console.print(f"  {orjson.dumps(example).decode()}", markup=False)


def status_rows(store: StateStore, configured: Sequence[str]) -> list[dict[str, Any]]:
    names = list(dict.fromkeys([*configured, *store.pipelines()]))
    rows = []
    for name in names:
        run = store.last_run(name)
        batch = store.last_batch(name)
        mark = store.get_watermark(name)
        rows.append({
            "pipeline": name,
            "configured": name in configured,
            "last_run": None if run is None else {
                "kind": str(run.kind), "outcome": str(run.outcome),
                "started_at": run.started_at, "finished_at": run.finished_at,
                "counts": dict(run.counts), "error": redact(run.error) if run.error else None,
            },
            "watermark": None if mark is None else {"cursor": str(mark.cursor),
                                                     "key": str(mark.key)},
            "contacts_tracked": store.count_contacts(name),
            "rejected": store.count_rejections(name),
            "audience": store.audience_counts(name),  # consent branch: opt-outs and events
            "last_import": None if batch is None else {
                "batch_id": batch.id, "import_id": batch.import_id, "status": str(batch.status),
                "size": batch.size, "created": batch.created_count,
                "updated": batch.updated_count, "over_limit": _over_limit(batch, run),
                "finished_at": batch.finished_at, "error": batch.error,
            },
        })
    return rows


def _over_limit(batch: BatchRecord, run: RunRecord | None) -> int | None:
    """Contacts over the quota in the last import; a failed batch keeps no counts, so a batch
    that failed in the last run takes that run's ``over_limit`` count."""
    if batch.over_limit_count is not None or run is None or batch.run_id != run.id:
        return batch.over_limit_count
    return run.counts.get("over_limit")


def _ago(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return f"{moment:%Y-%m-%d %H:%M:%S}Z ({(datetime.now(UTC) - moment).total_seconds():.0f}s ago)"


def print_status(rows: Sequence[dict[str, Any]]) -> None:
    table = Table(title="mailtrap-sync status")
    for column in ("pipeline", "last run", "watermark", "tracked", "rejected", "last import"):
        table.add_column(column)
    for row in rows:
        run, batch, mark = row["last_run"], row["last_import"], row["watermark"]
        run_text = "never" if run is None else (
            f"{run['kind']} {run['outcome']} {_ago(run['finished_at'] or run['started_at'])}"
            + (f"\n{run['error']}" if run["error"] else ""))
        batch_text = "-" if batch is None else (
            f"#{batch['import_id']} {batch['status']} ({batch['size']} contacts)"
            + (f"\nOVER QUOTA: {batch['over_limit']}" if batch["over_limit"] else "")
            + (f"\n{batch['error']}" if batch["error"] and batch["status"] == "failed" else ""))
        table.add_row(row["pipeline"], run_text,
                      "-" if mark is None else f"{mark['cursor']} / {mark['key']}",
                      str(row["contacts_tracked"]), str(row["rejected"]), batch_text)
    _console.print(table)
    print_audience(rows)


def print_audience(rows: Sequence[dict[str, Any]]) -> None:
    """Consent branch: opt-out and event counters of each pipeline that has any."""
    for row in rows:
        counts = {k: v for k, v in (row.get("audience") or {}).items() if v}
        if counts:
            _console.print(f"{row['pipeline']}: " + " ".join(f"{k}={v}" for k, v in
                                                             sorted(counts.items())))


def print_rejects(rows: Sequence[RejectionRecord], total: int, *, as_json: bool) -> None:
    if as_json:
        click.echo(orjson.dumps([{
            "source_key": r.source_key, "email": r.email, "kind": str(r.kind),
            "reason": r.reason, "attempts": r.attempts, "first_seen": r.first_seen,
            "last_seen": r.last_seen} for r in rows], option=orjson.OPT_INDENT_2).decode())
        return
    table = Table(title=f"rejected contacts ({len(rows)} of {total})")
    for column in ("source key", "email", "kind", "reason", "attempts", "last seen"):
        table.add_column(column)
    for r in rows:
        table.add_row(r.source_key, r.email or "-", str(r.kind), r.reason, str(r.attempts),
                      f"{r.last_seen:%Y-%m-%d %H:%M:%S}")
    _console.print(table)


def _check(label: str, action: Any) -> bool:
    try:
        detail = action()
    except SyncError as exc:
        _console.print(f"[red]✗[/red] {label}: {redact(str(exc))}", highlight=False)
        return False
    _console.print(f"[green]✓[/green] {label}{': ' + detail if detail else ''}", highlight=False)
    return True


def run_checks(settings: AppSettings, pipelines: Sequence[PipelineSettings]) -> bool:
    """Check each moving part; print one line per check; True when all pass."""
    _console.print("[green]✓[/green] configuration", highlight=False)
    store = StateStore.from_url(settings.state.url)  # connects lazily: checked just below
    try:
        ok = _check("state store", lambda: _store_reachable(store))
        with build_client(settings) as client:
            ok &= _check("token and account", lambda: f"account {client.resolve_account()}")
            for pipeline in pipelines:
                job = SyncJob(settings=settings, pipeline=pipeline, store=store, client=client)
                ok &= _check(f"{pipeline.name}: lists and fields", lambda job=job: _mapping(job))
                ok &= _check(f"{pipeline.name}: source", lambda job=job: _source(job))
    finally:
        store.close()
    return ok


def _store_reachable(store: StateStore) -> str:
    store.ensure_schema()
    return "reachable"


def _mapping(job: SyncJob) -> str:
    plan = PlanReport(job.name)
    mapper = job.build_mapper(create_lists=False, report=plan)
    missing = f"; lists to create on first run: {', '.join(plan.lists_to_create)}" \
        if plan.lists_to_create else ""
    return f"list ids {list(mapper.list_ids)}{missing}"


def _source(job: SyncJob) -> str:
    with job.open_connector():
        return "reachable"
