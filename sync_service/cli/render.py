"""What the CLI prints: run lines, plans, status, rejects, checks, explanations; tables and JSON.

On a terminal tables are drawn with rich; off one (a pipe, a file, cron mail, a container log)
they are tab-separated lines with a header row, at full width and never wrapped, so
``mailtrap-sync rejects customers | cut -f2`` works. ``--json`` output is one JSON document on
stdout (shapes documented in the README).

Values that come from source data (keys, addresses, reasons quoting them) may hold control
characters; ``printable`` escapes them (``\\x1b``, ``\\n``, ``\\u202e``) wherever text is printed,
so a row cannot move the cursor, recolour the terminal or break a TSV line. JSON output keeps the
values exact (JSON escapes control characters itself). Nothing here writes state, and the API
token never appears: it lives only in the client's headers, and errors are redacted.
"""

from __future__ import annotations

import sys
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import click
import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

from sync_service.job import PlanReport, RunResult
from sync_service.logging import redact
from sync_service.state import RejectionRecord

# Format and bidirectional controls (U+200E, U+202A-U+202E, U+2066-U+2069) can reorder what a
# terminal shows; they are escaped like C0/C1 controls.
_BIDI = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(value: object, *, lines: bool = False) -> str:
    """``value`` as text with control characters escaped (``\\x07``, ``\\t``, ``\\u202e``);
    with ``lines``, newlines are kept (multi-line messages such as configuration errors)."""
    text = str(value)
    if text.isprintable():  # the common case: nothing to escape (space counts as printable)
        return text
    if lines:
        return "\n".join(printable(part) for part in text.split("\n"))
    return "".join(_escape(ch) for ch in text)


def _escape(ch: str) -> str:
    if ch in _BIDI or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
        if ch in "\t\n\r":
            return {"\t": "\\t", "\n": "\\n", "\r": "\\r"}[ch]
        code = ord(ch)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return ch


def interactive() -> bool:
    """True when stdout is a terminal (rich tables and colours); False in pipes and logs."""
    return sys.stdout.isatty()


def console() -> Console:
    return Console(highlight=False)


def emit_json(data: Any) -> None:
    """``data`` as one indented JSON document on stdout (datetimes as ISO 8601)."""
    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode())


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A rich table on a terminal; tab-separated lines under a header row off one."""
    if interactive():
        grid = Table(title=title)
        for column in columns:
            grid.add_column(column)
        for row in rows:
            grid.add_row(*(Text(printable(cell)) for cell in row))
        console().print(grid)
        return
    click.echo("\t".join(columns))
    for row in rows:
        click.echo("\t".join(printable(cell) for cell in row))


def line(text: str) -> None:
    """One line of prose, never wrapped; control characters escaped."""
    click.echo(printable(text))


# runs --------------------------------------------------------------------------------------
# Kinds of change the job found (counted per source record), in the order they are printed.
CHANGE_COUNTS = ("read", "created", "updated", "email_changed", "unlisted", "unchanged",
                 "invalid", "duplicate")


def run_summary(result: RunResult, mailtrap: Mapping[str, int] | None = None) -> dict[str, Any]:
    """A run as data: the changes found, what Mailtrap did with them, what was rejected.

    ``changes`` are kinds of change the job found in the source (``created`` means "a contact
    new to this pipeline", not a Mailtrap result). ``mailtrap`` sums what the finished imports
    of the run reported (``created``/``updated`` are Mailtrap's counts), when known.
    """
    counts = result.counts
    imports = {"finished": counts.get("imports", 0), "failed": counts.get("imports_failed", 0)}
    return {
        "pipeline": result.pipeline, "kind": str(result.kind), "outcome": str(result.outcome),
        "run_id": result.run_id, "duration_s": round(result.duration_s, 3),
        "changes": {k: counts[k] for k in CHANGE_COUNTS if k in counts},
        "sent": counts.get("sent", 0),
        "imports": imports,
        "mailtrap": dict(mailtrap) if mailtrap is not None else None,
        "rejected_by_mailtrap": counts.get("rejected", 0),
        "over_limit": counts.get("over_limit", 0),
        # Everything else the run counted: opt-outs and events sent, a reconcile's findings.
        "other": {k: v for k, v in sorted(counts.items())
                  if k not in CHANGE_COUNTS and k not in _MAILTRAP_COUNTS},
        "error": redact(result.error) if result.error else None,
    }


_MAILTRAP_COUNTS = frozenset({"imports", "imports_failed", "sent", "rejected", "over_limit"})


def run_line(result: RunResult, mailtrap: Mapping[str, int] | None = None) -> str:
    """One line per run: ``changes found: …; Mailtrap: …`` so the two kinds of count never mix."""
    summary = run_summary(result, mailtrap)
    text = (f"{result.pipeline}: {result.kind} {result.outcome} in {result.duration_s:.1f}s")
    changes = " ".join(f"{k}={v}" for k, v in summary["changes"].items())
    if changes:
        text += f"; changes found: {changes}"
    if result.counts:
        done = summary["mailtrap"] or {}
        text += (f"; Mailtrap: imports finished={summary['imports']['finished']}"
                 f" failed={summary['imports']['failed']}"
                 f" contacts created={done.get('created', 0)} updated={done.get('updated', 0)}"
                 f" rejected={summary['rejected_by_mailtrap']}")
        if summary["over_limit"]:
            text += f" over_limit={summary['over_limit']}"
    if summary["other"]:
        text += "; " + " ".join(f"{k}={v}" for k, v in summary["other"].items())
    return printable(text + (f"; error: {summary['error']}" if summary["error"] else ""))


# plan ----------------------------------------------------------------------------------------
def print_plan(plan: PlanReport) -> None:
    table(f"plan for pipeline {plan.pipeline} (nothing was sent)", ("change", "records"),
          [(kind, count) for kind, count in sorted(plan.counts.items())])
    line(f"imports that would be posted: {plan.imports}")
    if plan.lists_to_create:
        line(f"lists that would be created: {', '.join(plan.lists_to_create)}")
    if plan.deletions:
        held = " (the mass-delete brake would hold them: --allow-mass-delete applies them)" \
            if plan.brake_would_hold else ""
        line(f"keys gone from the source (on_delete applies): {plan.deletions}{held}")
    if plan.fields_to_create:
        line(f"fields that would be created: {', '.join(plan.fields_to_create)}")
    for kind, examples in sorted(plan.samples.items()):
        if examples:
            line(f"{kind} examples:")
            for example in examples:
                line(f"  {orjson.dumps(example).decode()}")


# status --------------------------------------------------------------------------------------
def _ago(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return f"{moment:%Y-%m-%d %H:%M:%S}Z ({(datetime.now(UTC) - moment).total_seconds():.0f}s ago)"


def print_status(rows: Sequence[dict[str, Any]]) -> None:
    sep = "\n" if interactive() else "; "
    cells = []
    for row in rows:
        run, batch, mark = row["last_run"], row["last_import"], row["watermark"]
        run_text = "never" if run is None else (
            f"{run['kind']} {run['outcome']} {_ago(run['finished_at'] or run['started_at'])}"
            + (f"{sep}{run['error']}" if run["error"] else ""))
        batch_text = "-" if batch is None else (
            f"#{batch['import_id']} {batch['status']} ({batch['size']} contacts)"
            + (f"{sep}OVER QUOTA: {batch['over_limit']}" if batch["over_limit"] else "")
            + (f"{sep}{batch['error']}" if batch["error"] and batch["status"] == "failed"
               else ""))
        cells.append((row["pipeline"], run_text,
                      "-" if mark is None else f"{mark['cursor']} / {mark['key']}",
                      row["contacts_tracked"], row["rejected"], batch_text))
    table("mailtrap-sync status",
          ("pipeline", "last run", "watermark", "tracked", "rejected", "last import"), cells)
    print_audience(rows)


def print_audience(rows: Sequence[dict[str, Any]]) -> None:
    """Opt-out and event counters of each pipeline that has any, one line each."""
    for row in rows:
        counts = {k: v for k, v in (row.get("audience") or {}).items() if v}
        if counts:
            line(f"{row['pipeline']}: " + " ".join(f"{k}={v}" for k, v in sorted(counts.items())))


def print_size(size: Mapping[str, int]) -> None:
    """One line: the state store's rows per table and, where known, its size on disk."""
    rows = ", ".join(f"{name} {count}" for name, count in size.items() if name != "bytes")
    disk = f"; {size['bytes'] / 1e6:.1f} MB" if "bytes" in size else ""
    line(f"state store rows: {rows}{disk}")


# rejects -------------------------------------------------------------------------------------
def rejection_json(r: RejectionRecord) -> dict[str, Any]:
    return {"source_key": r.source_key, "email": r.email, "kind": str(r.kind),
            "reason": r.reason, "attempts": r.attempts, "first_seen": r.first_seen,
            "last_seen": r.last_seen}


def print_rejects(rows: Sequence[RejectionRecord], total: int, *, as_json: bool) -> None:
    if as_json:
        emit_json([rejection_json(r) for r in rows])
        return
    table(f"rejected contacts ({len(rows)} of {total})",
          ("source key", "email", "kind", "reason", "attempts", "last seen"),
          [(r.source_key, r.email or "-", str(r.kind), r.reason, r.attempts,
            f"{r.last_seen:%Y-%m-%d %H:%M:%S}") for r in rows])
    if not interactive() and len(rows) < total:
        click.echo(f"# {len(rows)} of {total} shown; --limit shows more", err=True)


# checks --------------------------------------------------------------------------------------
def check_line(ok: bool, label: str, detail: str | None) -> None:
    """``✓ label: detail`` or ``✗ label: error``, coloured on a terminal, plain off one."""
    text = f"{label}{': ' + printable(redact(detail)) if detail else ''}"
    if interactive():
        mark = "[green]✓[/green]" if ok else "[red]✗[/red]"
        console().print(Text.from_markup(mark + " ").append(text))
    else:
        click.echo(f"{'✓' if ok else '✗'} {text}")


# explain -------------------------------------------------------------------------------------
def _when(moment: object) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S}Z" if isinstance(moment, datetime) else "-"


def print_explanation(answer: Mapping[str, Any]) -> None:
    """``explain``'s one screen: per source key, what the store knows and what the source says."""
    query, pipeline = answer["query"], answer["pipeline"]
    if not answer["known"]:
        line(f"{pipeline}: the state store knows nothing of {query!r} (no confirmed contact, "
             "no batch in flight, no rejection). If the source has it, the next sync sends it; "
             f"`mailtrap-sync plan {pipeline}` shows what that would be.")
        return
    keys = answer["keys"]
    line(f"{pipeline}: {query} - {len(keys)} source key{'s' if len(keys) != 1 else ''}")
    for email, key in answer["address_owner"].items():
        line(f"address {email} belongs to source key {key}")
    for item in keys:
        line("")
        line(f"source key {item['key']}")
        for label, text in _explain_lines(item):
            line(f"  {label:<14}{text}")


def _explain_lines(item: Mapping[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    confirmed = item["confirmed"]
    if confirmed is None:
        out.append(("confirmed", "never (Mailtrap has confirmed no contact for this key)"))
    else:
        batch = confirmed["batch"]
        carried = "" if batch is None else f" (batch {batch['batch_id']}, run {batch['run_id']})"
        state = "removed from the lists: gone from the source" if confirmed["deleted_at_source"] \
            else f"hash {str(confirmed['hash'])[:12]}"
        out.append(("confirmed", f"{confirmed['email']}, {state}, at "
                                 f"{_when(confirmed['confirmed_at'])} by import "
                                 f"{confirmed['import_id'] or '-'}{carried}"))
    for entry in item["pending"]:
        out.append(("in flight", f"{entry['email']} ({entry['kind']}) in batch {entry['batch_id']}"
                                 f" {entry['status']}, import {entry['import_id'] or '-'}, run "
                                 f"{entry['run_id']}; the next run polls or re-sends it"))
    rejection = item["rejection"]
    if rejection is None:
        out.append(("rejection", "none"))
    else:
        out.append(("rejection", f"{rejection['kind']}: {rejection['reason']} ({rejection['email']}"
                                 f", {rejection['attempts']} attempts, last "
                                 f"{_when(rejection['last_seen'])})"))
    waiting = item["waiting_on_owner"]
    if waiting is not None:
        out.append(("waiting on", f"source key {waiting['owner_key']}, which holds "
                                  f"{waiting['email']}; re-checked when it lets go"))
    out.append(("addresses", "; ".join(f"{a['email']} ({a['state']} {_when(a['since'])})"
                                       for a in item["addresses"]) or "-"))
    source = item["source"]
    if source is not None:
        detail = {
            "unchanged": "unchanged since the confirmed hash: nothing to send",
            "differs": f"differs from what Mailtrap confirmed: the next sync sends "
                       f"{source.get('email')} ({source.get('change')})",
            "rejected": f"would be rejected again: {source.get('reason')}",
            "missing": "no row with this key in the source any more",
            "unavailable": f"could not be re-read: {source.get('error')}",
        }.get(source["status"], source["status"])
        out.append(("source now", detail))
    return out
