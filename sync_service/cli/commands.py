"""The commands: parse, build settings, call into the package, hand the result to ``render``.

Errors become exit codes in ``group.Root``; commands raise the project's errors and return or
``sys.exit`` with a code of their own (1 when a pipeline failed, 3 when one was busy).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from sqlalchemy.engine import make_url

from sync_service import __version__
from sync_service.allocator import release_large_blocks
from sync_service.cli import render
from sync_service.cli.checks import run_checks
from sync_service.cli.explain import explain as explain_contact
from sync_service.cli.group import Root
from sync_service.cli.state_view import ReadOnlyState, run_import_counts, status_rows
from sync_service.errors import ConfigError, PipelineBusy
from sync_service.housekeeping import prune
from sync_service.job import RunResult, SyncJob
from sync_service.logging import configure
from sync_service.models import RunKind, RunOutcome
from sync_service.settings import AppSettings, PipelineSettings, load_settings
from sync_service.state import StateStore
from sync_service.wiring import (
    EXIT_BUSY,
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    ProgressObserver,
    build_client,
    open_store,
    stop_on_signals,
)

json_option = click.option("--json", "as_json", is_flag=True,
                           help="print one JSON document (shape: README, 'JSON output')")


@click.group(cls=Root)
@click.version_option(__version__, prog_name="mailtrap-sync")
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
              help="TOML file [default: $MAILTRAP_SYNC_CONFIG or ./mailtrap-sync.toml]")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--log-format", type=click.Choice(["auto", "json", "console"]), default="auto",
              show_default=True, help="auto: JSON off a terminal, readable on one")
@click.pass_context
def cli(ctx: click.Context, config: str | None, log_level: str, log_format: str) -> None:
    """Keep Mailtrap contacts in step with a CRM or SQL database."""
    configure(json=None if log_format == "auto" else log_format == "json", level=log_level)
    ctx.obj = {"config": config}


def _settings(ctx: click.Context) -> AppSettings:
    return load_settings(ctx.find_root().obj["config"])


def _select(settings: AppSettings, names: Sequence[str]) -> list[PipelineSettings]:
    if names:
        return [settings.pipeline(name) for name in names]
    if not settings.pipelines:
        raise ConfigError("no [[pipelines]] configured")
    return list(settings.pipelines)


@contextmanager
def _services(settings: AppSettings) -> Iterator[tuple[StateStore, Any]]:
    store = open_store(settings)
    try:
        with build_client(settings) as client:
            yield store, client
    finally:
        store.close()


def _exit_code(results: Sequence[RunResult], busy: int) -> int:
    if any(r.config_error for r in results):
        return EXIT_CONFIG
    if any(r.outcome is not RunOutcome.SUCCEEDED for r in results):
        return EXIT_FAILED
    return EXIT_BUSY if busy else EXIT_OK


def _run_jobs(ctx: click.Context, names: Sequence[str], action: Callable[[SyncJob], RunResult],
              *, as_json: bool = False) -> int:
    settings = _settings(ctx)
    pipelines = _select(settings, names)
    summaries: list[dict[str, Any]] = []
    busy = 0
    results: list[RunResult] = []
    with _services(settings) as (store, client), stop_on_signals() as stop, \
            ProgressObserver() as observer:
        for pipeline in pipelines:
            if stop.is_set():
                break
            job = SyncJob(settings=settings, pipeline=pipeline, store=store, client=client,
                          stop=stop, observer=observer)
            try:
                result = action(job)
            except PipelineBusy as exc:
                busy += 1
                click.echo(f"mailtrap-sync: {exc}", err=True)
                summaries.append({"pipeline": pipeline.name, "outcome": "busy",
                                  "error": str(exc)})
                continue
            results.append(result)
            done = run_import_counts(store, result.run_id)
            if as_json:
                summaries.append(render.run_summary(result, done))
            else:
                click.echo(render.run_line(result, done))
    if as_json:
        render.emit_json(summaries)
    return _exit_code(results, busy)


@cli.command()
@click.argument("pipelines", nargs=-1)
@click.option("--allow-mass-delete", is_flag=True,
              help="apply deletions even when they exceed the mass-delete brake")
@json_option
@click.pass_context
def sync(ctx: click.Context, pipelines: tuple[str, ...], allow_mass_delete: bool,
         as_json: bool) -> None:
    """One incremental pass over PIPELINES (all when none named)."""
    sys.exit(_run_jobs(ctx, pipelines, lambda job: job.run(
        RunKind.SYNC, allow_mass_delete=allow_mass_delete), as_json=as_json))


@cli.command()
@click.argument("pipeline")
@click.option("--resend", is_flag=True, help="send every contact, even unchanged ones")
@click.option("--allow-mass-delete", is_flag=True,
              help="apply deletions even when they exceed the mass-delete brake")
@json_option
@click.pass_context
def backfill(ctx: click.Context, pipeline: str, resend: bool, allow_mass_delete: bool,
             as_json: bool) -> None:
    """Re-read PIPELINE's whole source, ignoring the watermark, and scan its keys for hard
    deletes."""
    sys.exit(_run_jobs(ctx, [pipeline], lambda job: job.run(
        RunKind.BACKFILL, resend=resend, allow_mass_delete=allow_mass_delete), as_json=as_json))


@cli.command()
@click.argument("pipeline")
@json_option
@click.pass_context
def retry(ctx: click.Context, pipeline: str, as_json: bool) -> None:
    """Send PIPELINE's rejected contacts again, from their current source rows."""
    sys.exit(_run_jobs(ctx, [pipeline], lambda job: job.retry_rejected(), as_json=as_json))


@cli.command()
@click.argument("pipeline")
@click.option("--sample", default=5, show_default=True, help="examples shown per kind")
@json_option
@click.pass_context
def plan(ctx: click.Context, pipeline: str, sample: int, as_json: bool) -> None:
    """Dry run: what a sync of PIPELINE would send now. Sends and writes nothing."""
    settings = _settings(ctx)
    chosen = settings.pipeline(pipeline)
    # A state store that does not exist yet reads as empty; opening it would create the file.
    store = StateStore.from_url("sqlite://" if _missing_sqlite(settings.state.url)
                                else settings.state.url)
    try:
        state = ReadOnlyState(store)
        with build_client(settings) as client:
            job = SyncJob(settings=settings, pipeline=chosen, store=store, client=client)
            result = job.plan(sample=sample, state=state)
    finally:
        store.close()
    if as_json:
        render.emit_json(result)
    else:
        render.print_plan(result)


def _missing_sqlite(url: str) -> bool:
    parsed = make_url(url)
    path = parsed.database
    if parsed.get_backend_name() != "sqlite" or not path or path == ":memory:":
        return False
    return not Path(path).exists()


@cli.command()
@json_option
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Per pipeline: last run, watermark, contacts tracked, rejects, last import."""
    settings = _settings(ctx)
    store = open_store(settings)
    try:
        rows = status_rows(store, [p.name for p in settings.pipelines])
        size = store.size()
    finally:
        store.close()
    for row in rows:
        row["state_store"] = size  # the whole store: rows per table and bytes
    if as_json:
        render.emit_json(rows)
    else:
        render.print_status(rows)
        render.print_size(size)


@cli.command()
@click.argument("pipeline")
@json_option
@click.pass_context
def reconcile(ctx: click.Context, pipeline: str, as_json: bool) -> None:
    """Compare Mailtrap with the state store; the next sync repairs what drifted."""
    from sync_service.reconcile import reconcile as run_reconcile  # noqa: PLC0415 - on demand

    sys.exit(_run_jobs(ctx, [pipeline], run_reconcile, as_json=as_json))


@cli.command()
@click.argument("pipeline")
@click.option("--limit", default=100, show_default=True)
@json_option
@click.pass_context
def rejects(ctx: click.Context, pipeline: str, limit: int, as_json: bool) -> None:
    """List PIPELINE's rejected contacts with their reasons."""
    settings = _settings(ctx)
    settings.pipeline(pipeline)
    store = open_store(settings)
    try:
        rows = store.list_rejections(pipeline, limit=limit)
        total = store.count_rejections(pipeline)
    finally:
        store.close()
    render.print_rejects(rows, total, as_json=as_json)


@cli.command()
@click.argument("pipeline")
@click.argument("contact", metavar="EMAIL|KEY")
@click.option("--no-source", is_flag=True,
              help="only the state store: do not re-read the source (nor ask Mailtrap)")
@json_option
@click.pass_context
def explain(ctx: click.Context, pipeline: str, contact: str, no_source: bool,
            as_json: bool) -> None:
    """Everything known about one contact of PIPELINE, and what a sync would do with it now."""
    settings = _settings(ctx)
    chosen = settings.pipeline(pipeline)
    store = StateStore.from_url("sqlite://" if _missing_sqlite(settings.state.url)
                                else settings.state.url)
    try:
        answer = explain_contact(settings, chosen, contact, store, reread=not no_source)
    finally:
        store.close()
    if as_json:
        render.emit_json(answer)
    else:
        render.print_explanation(answer)


@cli.command()
@click.argument("pipelines", nargs=-1)
@click.option("--fix", is_flag=True, help="create the missing declared fields and lists")
@json_option
@click.pass_context
def check(ctx: click.Context, pipelines: tuple[str, ...], fix: bool, as_json: bool) -> None:
    """Check config, state store, token and account, lists, fields and sources (``--fix``
    creates the missing declared fields and lists)."""
    settings = _settings(ctx)
    found: list[dict[str, Any]] = []

    def collect(ok: bool, label: str, detail: str | None) -> None:
        found.append({"check": label, "ok": ok, "detail": detail})

    code = run_checks(settings, _select(settings, pipelines),
                      collect if as_json else render.check_line, fix=fix)
    if as_json:
        render.emit_json({"ok": code == EXIT_OK, "checks": found})
    sys.exit(code)


@cli.group()
def db() -> None:
    """State store maintenance."""


@db.command("upgrade")
@json_option
@click.pass_context
def db_upgrade(ctx: click.Context, as_json: bool) -> None:
    """Apply the state store's migrations (Alembic) up to this version's schema."""
    settings = _settings(ctx)
    store = StateStore.from_url(settings.state.url)
    try:
        store.upgrade()
        revision = store.schema_revision()
    finally:
        store.close()
    if as_json:
        render.emit_json({"revision": revision})
    else:
        click.echo("state store schema is up to date")


@db.command("prune")
@click.argument("pipelines", nargs=-1)
@click.option("--no-source", is_flag=True,
              help="do not re-read rejected keys: only keys the source reported deleted count "
                   "as gone")
@json_option
@click.pass_context
def db_prune(ctx: click.Context, pipelines: tuple[str, ...], no_source: bool,
             as_json: bool) -> None:
    """Delete finished runs, their batches and the rejections of keys gone from the source
    older than [state] retention (default 90d); never what a later run needs."""
    settings = _settings(ctx)
    chosen = _select(settings, pipelines)
    store = open_store(settings)
    try:
        reports = prune(settings, store, chosen, reread=not no_source)
        size = store.size()
    finally:
        store.close()
    if as_json:
        render.emit_json({"retention": settings.state.retention,
                          "pruned": [vars(r) for r in reports], "size": size})
        return
    for r in reports:
        tokens = f" (and {r.reread_tokens} re-read tokens of forgotten keys)" \
            if r.reread_tokens else ""
        click.echo(f"{r.pipeline}: pruned {r.runs} runs, {r.batches} batches, {r.rejections} "
                   f"rejections older than {settings.state.retention}{tokens}")
    render.print_size(size)


@cli.command()
@click.pass_context
def run(ctx: click.Context) -> None:
    """The daemon: run every pipeline on its schedule until SIGTERM/SIGINT."""
    from sync_service.scheduler import Daemon  # noqa: PLC0415 - daemon-only dependencies

    settings = _settings(ctx)
    _select(settings, ())
    with stop_on_signals() as stop:
        sys.exit(Daemon(settings, stop=stop, exit_hard=True).run())


@cli.command()
@click.option("--dir", "workdir", type=click.Path(file_okay=False), default="mailtrap-sync-demo",
              show_default=True, help="where the sample CRM, config and state are written")
@click.option("--contacts", default=2_000, show_default=True, help="rows in the sample CRM")
@click.option("--source", default="sql", show_default=True,
              help="sample CRM: sql, file, hubspot, salesforce or pipedrive (a local double)")
def demo(workdir: str, contacts: int, source: str) -> None:
    """Sync a generated sample CRM into a local Mailtrap test double, three times."""
    from sync_service.demo import run_demo  # noqa: PLC0415 - demo-only dependencies

    sys.exit(run_demo(workdir, contacts, source))


def main() -> None:
    release_large_blocks()  # before any run allocates (sync_service/allocator.py)
    cli(prog_name="mailtrap-sync")


__all__ = ["cli", "main"]
