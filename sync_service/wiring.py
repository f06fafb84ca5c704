"""Wiring shared by the CLI, the daemon and the demo: state store, Mailtrap client, observer.

Exit codes (the cron contract, documented in the README):
0 every pipeline succeeded; 1 a pipeline failed or was interrupted; 2 configuration error;
3 a pipeline was busy (another process holds its lease) and none failed.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import structlog

from sync_service.errors import ConfigError
from sync_service.logging import register_secret
from sync_service.mailtrap.client import MailtrapClient
from sync_service.mailtrap.pacing import Pacer
from sync_service.models import ImportResult
from sync_service.observers import RequestObserver
from sync_service.settings import AppSettings
from sync_service.state import StateStore

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_BUSY = 0, 1, 2, 3
log = structlog.get_logger(__name__)


def open_store(settings: AppSettings) -> StateStore:
    """The state store, with its schema created if the database is new."""
    store = StateStore.from_url(settings.state.url)
    store.ensure_schema()
    return store


def api_token(settings: AppSettings) -> str:
    token = settings.mailtrap.api_token
    if token is None or not token.get_secret_value().strip():
        raise ConfigError("MAILTRAP_API_TOKEN is not set: the Mailtrap API token is read only "
                          "from the environment")
    value = token.get_secret_value().strip()
    register_secret(value)
    return value


def build_client(
    settings: AppSettings,
    *,
    transport: httpx.BaseTransport | None = None,
    observer: RequestObserver | None = None,
) -> MailtrapClient:
    cfg = settings.mailtrap
    token = api_token(settings)
    pacer = Pacer(token=token, account_rate=cfg.pacing.account, token_rate=cfg.pacing.token)
    hook = observer.request_done if observer is not None else None
    return MailtrapClient(
        token=token, base_url=cfg.api_url, account_id=cfg.account_id, transport=transport,
        timeout=cfg.timeout, pacer=pacer, max_retries=cfg.max_retries, on_response=hook,
    )


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGTERM/SIGINT (a second SIGINT interrupts at once)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()
        # Not logged here: the signal may have interrupted this very thread inside a log write,
        # whose lock is not re-entrant. A thread writes the line once that write is done.
        threading.Thread(target=log.warning, args=("stop.requested",),
                         kwargs={"signal": signal.Signals(signum).name}, daemon=True).start()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class ProgressObserver:
    """Shows reading progress: a live bar on a terminal, a log line every 10 s otherwise."""

    def __init__(self, *, interactive: bool | None = None, every_s: float = 10.0) -> None:
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.every_s = every_s
        self._read: dict[str, int] = {}
        self._last_log = time.monotonic()
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> ProgressObserver:
        if self.interactive:
            from rich.progress import (  # noqa: PLC0415 - only on a terminal
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), MofNCompleteColumn(),
                TextColumn("records"), TimeElapsedColumn(), transient=True,
            )
            self._progress.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def records_read(self, pipeline: str, count: int) -> None:
        self._read[pipeline] = self._read.get(pipeline, 0) + count
        if self._progress is not None:
            if pipeline not in self._tasks:
                self._tasks[pipeline] = self._progress.add_task(pipeline, total=None)
            self._progress.update(self._tasks[pipeline], completed=self._read[pipeline])
        elif time.monotonic() - self._last_log >= self.every_s:
            self._last_log = time.monotonic()
            log.info("read.progress", pipeline=pipeline, records=self._read[pipeline])

    def import_done(self, pipeline: str, result: ImportResult) -> None:
        log.debug("import.done", pipeline=pipeline, import_id=result.id, status=result.status)
