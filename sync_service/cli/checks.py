"""``mailtrap-sync check``: each moving part verified, one line each; nothing is sent or written
beyond creating the state store's schema.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from itertools import islice

from sync_service.cli.render import check_line
from sync_service.errors import ConfigError, RecordError, SyncError
from sync_service.job import PlanReport, SyncJob
from sync_service.logging import redact
from sync_service.settings import AppSettings, PipelineSettings
from sync_service.state import StateStore
from sync_service.wiring import build_client

# Called once per check as it completes: (passed, label, detail or error).
Report = Callable[[bool, str, str | None], None]


def run_checks(settings: AppSettings, pipelines: Sequence[PipelineSettings],
               report: Report = check_line, *, fix: bool = False) -> int:
    """Check each moving part; ``report`` each (one printed line by default). The exit code: 0
    when all pass, 2 when a check found a configuration error, else 1. ``fix`` creates the
    missing declared fields and lists once their checks pass."""
    config: list[str] = []

    def _check(label: str, action: Callable[[], str | None]) -> bool:
        try:
            detail = action()
        except SyncError as exc:
            report(False, label, redact(str(exc)))
            if isinstance(exc, ConfigError):
                config.append(label)
            return False
        report(True, label, detail)
        return True

    report(True, "configuration", None)
    store = StateStore.from_url(settings.state.url)  # connects lazily: checked just below
    try:
        ok = _check("state store", lambda: _store_reachable(store))
        with build_client(settings, quick=True) as client:
            ok &= _check("token and account", lambda: f"account {client.resolve_account()}")
            for pipeline in pipelines:
                job = SyncJob(settings=settings, pipeline=pipeline, store=store, client=client)
                ok &= _check(f"{pipeline.name}: lists and fields", partial(_mapping, job, fix=fix))
                ok &= _check(f"{pipeline.name}: source", partial(_source, job))
    finally:
        store.close()
    return 0 if ok else 2 if config else 1


def _store_reachable(store: StateStore) -> str:
    store.ensure_schema()
    return "reachable"


def _mapping(job: SyncJob, *, fix: bool = False) -> str:
    plan = PlanReport(job.name)
    mapper = job.build_mapper(create_lists=fix, report=plan)
    missing = f"; lists to create on first run: {', '.join(plan.lists_to_create)}" \
        if plan.lists_to_create else ""
    if plan.fields_to_create:
        missing += f"; fields to create on first run: {', '.join(plan.fields_to_create)}"
    return f"list ids {list(mapper.list_ids)}{missing}"


def _source(job: SyncJob, sample: int = 3) -> str:
    """"reachable", or what the connector says of itself (``describe()``, e.g. API usage), and
    the first ``sample`` records as the contacts they would become."""
    with job.open_connector() as connector:
        describe = getattr(connector, "describe", None)
        said = str(describe()) if callable(describe) else "reachable"
        records = list(islice(connector.read(None), sample))
    if not records:
        return f"{said}; the source holds no record"
    try:
        mapper = job.build_mapper(create_lists=False)
    except ConfigError:  # already reported by the "lists and fields" check
        return f"{said}; sample keys: " + ", ".join(r.key_str for r in records)
    shown = []
    for record in records:
        try:
            contact = mapper.contact(record.values)
        except RecordError as exc:
            shown.append(f"key {record.key_str}: not sendable ({exc.reason})")
            continue
        fields = ", ".join(f"{k}={v}" for k, v in sorted(contact.fields.items()))
        shown.append(f"{contact.email}" + (f" ({fields})" if fields else ""))
    return f"{said}; sample: " + "; ".join(shown)
