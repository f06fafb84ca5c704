"""The root click group: the project's errors become exit codes here, once for every command.

Exit codes (the cron contract, documented in the README): 0 success; 1 a pipeline failed or was
interrupted; 2 configuration error; 3 a pipeline is busy (another process holds its lease).
"""

from __future__ import annotations

from typing import Any, NoReturn

import click

from sync_service.cli.render import printable
from sync_service.errors import ConfigError, PipelineBusy, SyncError
from sync_service.logging import redact
from sync_service.wiring import EXIT_BUSY, EXIT_CONFIG, EXIT_FAILED


def fail(message: str, code: int) -> NoReturn:
    """One redacted line on stderr (control characters escaped), then exit with ``code``."""
    click.echo(f"mailtrap-sync: {printable(redact(message), lines=True)}", err=True)
    raise SystemExit(code)


def exit_code_for(exc: SyncError) -> int:
    """The documented exit code of an error that ends a command."""
    if isinstance(exc, ConfigError):
        return EXIT_CONFIG
    if isinstance(exc, PipelineBusy):
        return EXIT_BUSY
    return EXIT_FAILED


class Root(click.Group):
    """A click group whose commands (and sub-groups') errors end as one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SyncError as exc:
            prefix = "configuration error: " if isinstance(exc, ConfigError) else ""
            fail(f"{prefix}{exc}", exit_code_for(exc))
