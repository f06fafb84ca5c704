"""The ``mailtrap-sync`` command line: parse, build settings, call into the package.

Exit codes: 0 success; 1 a pipeline failed or was interrupted; 2 configuration error;
3 a pipeline is busy (another process holds its lease).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson
from sqlalchemy.engine import make_url

from sync_service import __version__, report
from sync_service.errors import ConfigError, PipelineBusy, SyncError
from sync_service.job import RunResult, SyncJob
from sync_service.logging import configure, redact
from sync_service.models import RunKind, RunOutcome
from sync_service.runtime import (
    EXIT_BUSY,
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    ProgressObserver,
    build_client,
    open_store,
    stop_on_signals,
)
from sync_service.settings import AppSettings, PipelineSettings, load_settings
from sync_service.state import StateStore

F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int) -> None:
    click.echo(f"mailtrap-sync: {redact(message)}", err=True)
    sys.exit(code)


def guarded(func: F) -> F:
    """Turn the project's errors into one clear line on stderr and the documented exit code."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            _fail(f"configuration error: {exc}", EXIT_CONFIG)
        except PipelineBusy as exc:
            _fail(str(exc), EXIT_BUSY)
        except SyncError as exc:
            _fail(str(exc), EXIT_FAILED)
        return None

    return wrapper  # type: ignore[return-value]


@click.group()
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
    return load_settings(ctx.obj["config"])


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
    if any(r.outcome is not RunOutcome.SUCCEEDED for r in results):
        return EXIT_FAILED
    return EXIT_BUSY if busy else EXIT_OK


def _run_jobs(ctx: click.Context, names: Sequence[str], action: Callable[[SyncJob], RunResult]
              ) -> int:
    settings = _settings(ctx)
    pipelines = _select(settings, names)
    results: list[RunResult] = []
    busy = 0
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
                continue
            results.append(result)
            click.echo(report.run_line(result))
    return _exit_code(results, busy)


@cli.command()
@click.argument("pipelines", nargs=-1)
@click.pass_context
@guarded
def sync(ctx: click.Context, pipelines: tuple[str, ...]) -> None:
    """One incremental pass over PIPELINES (all when none named)."""
    sys.exit(_run_jobs(ctx, pipelines, lambda job: job.run(RunKind.SYNC)))


@cli.command()
@click.argument("pipeline")
@click.option("--resend", is_flag=True, help="send every contact, even unchanged ones")
@click.pass_context
@guarded
def backfill(ctx: click.Context, pipeline: str, resend: bool) -> None:
    """Re-read PIPELINE's whole source, ignoring the watermark."""
    sys.exit(_run_jobs(ctx, [pipeline], lambda job: job.run(RunKind.BACKFILL, resend=resend)))


@cli.command()
@click.argument("pipeline")
@click.pass_context
@guarded
def retry(ctx: click.Context, pipeline: str) -> None:
    """Send PIPELINE's rejected contacts again, from their current source rows."""
    sys.exit(_run_jobs(ctx, [pipeline], lambda job: job.retry_rejected()))


@cli.command()
@click.argument("pipeline")
@click.option("--sample", default=5, show_default=True, help="examples shown per kind")
@click.option("--json", "as_json", is_flag=True, help="print the plan as JSON")
@click.pass_context
@guarded
def plan(ctx: click.Context, pipeline: str, sample: int, as_json: bool) -> None:
    """Dry run: what a sync of PIPELINE would send now. Sends and writes nothing."""
    settings = _settings(ctx)
    chosen = settings.pipeline(pipeline)
    # A state store that does not exist yet reads as empty; opening it would create the file.
    store = StateStore.from_url("sqlite://" if _missing_sqlite(settings.state.url)
                                else settings.state.url)
    try:
        state = report.ReadOnlyState(store)
        with build_client(settings) as client:
            job = SyncJob(settings=settings, pipeline=chosen, store=store, client=client)
            result = job.plan(sample=sample, state=state)
    finally:
        store.close()
    if as_json:
        click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        report.print_plan(result)


def _missing_sqlite(url: str) -> bool:
    parsed = make_url(url)
    path = parsed.database
    if parsed.get_backend_name() != "sqlite" or not path or path == ":memory:":
        return False
    return not Path(path).exists()


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="print as JSON")
@click.pass_context
@guarded
def status(ctx: click.Context, as_json: bool) -> None:
    """Per pipeline: last run, watermark, contacts tracked, rejects, last import."""
    settings = _settings(ctx)
    store = open_store(settings)
    try:
        rows = report.status_rows(store, [p.name for p in settings.pipelines])
    finally:
        store.close()
    if as_json:
        click.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2, default=str).decode())
    else:
        report.print_status(rows)


@cli.command()
@click.argument("pipeline")
@click.pass_context
@guarded
def reconcile(ctx: click.Context, pipeline: str) -> None:
    """Compare Mailtrap with the state store; the next sync repairs what drifted."""
    from sync_service.reconcile import reconcile as run_reconcile  # noqa: PLC0415 - consent

    sys.exit(_run_jobs(ctx, [pipeline], run_reconcile))


@cli.command()
@click.argument("pipeline")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print as JSON")
@click.pass_context
@guarded
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
    report.print_rejects(rows, total, as_json=as_json)


@cli.command()
@click.argument("pipelines", nargs=-1)
@click.pass_context
@guarded
def check(ctx: click.Context, pipelines: tuple[str, ...]) -> None:
    """Check config, state store, token and account, lists, fields and sources."""
    settings = _settings(ctx)
    ok = report.run_checks(settings, _select(settings, pipelines))
    sys.exit(EXIT_OK if ok else EXIT_FAILED)


@cli.group()
def db() -> None:
    """State store maintenance."""


@db.command("upgrade")
@click.pass_context
@guarded
def db_upgrade(ctx: click.Context) -> None:
    """Apply the state store's migrations (Alembic) up to this version's schema."""
    settings = _settings(ctx.find_root())
    store = StateStore.from_url(settings.state.url)
    try:
        store.upgrade()
    finally:
        store.close()
    click.echo("state store schema is up to date")


@cli.command()
@click.pass_context
@guarded
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
@guarded
def demo(workdir: str, contacts: int) -> None:
    """Sync a generated sample CRM into a local Mailtrap test double, three times."""
    from sync_service.demo import run_demo  # noqa: PLC0415 - demo-only dependencies

    sys.exit(run_demo(workdir, contacts))


def main() -> None:
    cli(prog_name="mailtrap-sync")


if __name__ == "__main__":
    main()
