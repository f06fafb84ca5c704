"""Reading progress: a live bar on a terminal, periodic structured log lines otherwise."""

from __future__ import annotations

import io

import orjson

from sync_service.logging import configure
from sync_service.wiring import ProgressObserver


def test_off_a_terminal_progress_is_logged_as_json_lines() -> None:
    """Without a terminal, progress goes to `read.progress` log lines with the running count."""
    stream = io.StringIO()
    configure(json=True, stream=stream)
    with ProgressObserver(interactive=False, every_s=0) as observer:
        observer.records_read("customers", 2_000)
        observer.records_read("customers", 500)
    events = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    progress = [e for e in events if e["event"] == "read.progress"]
    assert [e["records"] for e in progress] == [2_000, 2_500]
    assert all(e["pipeline"] == "customers" for e in progress)


def test_on_a_terminal_a_bar_counts_records() -> None:
    """On a terminal, a rich progress task counts the records read per pipeline."""
    with ProgressObserver(interactive=True) as observer:
        observer.records_read("customers", 1_000)
        observer.records_read("customers", 234)
        task = observer._progress.tasks[0]
    assert task.description == "customers"
    assert task.completed == 1_234


def test_log_lines_redact_registered_secrets_and_url_passwords() -> None:
    """The API token and passwords inside URLs never reach a log line."""
    from sync_service.logging import register_secret

    stream = io.StringIO()
    configure(json=True, stream=stream)
    register_secret("tok-very-secret-1")
    import structlog

    structlog.get_logger("t").info("x.event", token="tok-very-secret-1",
                                   url="postgresql://crm:hunter22@db/crm")
    line = stream.getvalue()
    assert "tok-very-secret-1" not in line
    assert "hunter22" not in line
    assert "postgresql://crm:***@db/crm" in line


def test_library_log_records_are_json_lines_too() -> None:
    """A warning from a library using stdlib logging is rendered as one JSON object, redacted."""
    import logging

    stream = io.StringIO()
    configure(json=True, stream=stream)
    logging.getLogger("uvicorn.error").warning("cannot reach postgresql://u:pw12345@h/db")
    event = orjson.loads(stream.getvalue().strip())
    assert event["logger"] == "uvicorn.error"
    assert event["level"] == "warning"
    assert "pw12345" not in event["event"]


def test_redaction_is_linear_on_long_values() -> None:
    """A multi-megabyte value without a URL is redacted at once (no catastrophic backtracking)."""
    import time

    from sync_service.logging import redact

    text = "a" * 4_000_000 + " postgresql://u:secret99@h/db"
    started = time.perf_counter()
    out = redact(text)
    assert "secret99" not in out
    assert time.perf_counter() - started < 30  # a bound on a hang, not a speed target
