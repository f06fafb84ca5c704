"""structlog set-up: JSON lines off a terminal, readable console output on one; secrets redacted.

Event names are constants (``run.finished``), values are key-value pairs, and context (pipeline,
run id, import id) is bound once with ``structlog.contextvars``. Registered secrets (the API token)
and passwords inside URLs are replaced before anything is rendered.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

_SECRETS: set[str] = set()
# Bounded repetitions, anchored after a non-scheme character: linear on long values (an
# unbounded scheme run backtracked quadratically on a 4 MB value).
_URL_PASSWORD = re.compile(
    r"(?<![a-z0-9+.-])(?P<scheme>[a-z][a-z0-9+.-]{0,31}://[^:/@\s]{1,256}):(?P<pw>[^@\s]{1,512})@",
    re.I,
)
REDACTED = "***"
_SELF_CONFIGURED = ("uvicorn", "uvicorn.error", "uvicorn.access", "alembic")


def register_secret(value: str | None) -> None:
    """Never render this value (e.g. the API token) in a log line."""
    if value and len(value) >= 4:
        _SECRETS.add(value)


def redact(text: str) -> str:
    """Hide registered secrets and URL passwords in ``text``."""
    for secret in _SECRETS:
        text = text.replace(secret, REDACTED)
    return _URL_PASSWORD.sub(lambda m: f"{m.group('scheme')}:{REDACTED}@", text)


def _redact_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = redact(value)
        elif isinstance(value, BaseException):
            event_dict[key] = redact(repr(value))
    return event_dict


def configure(
    *, json: bool | None = None, level: str = "INFO", stream: TextIO | None = None
) -> None:
    """Set up structlog (and stdlib logging underneath) once per process."""
    stream = stream or sys.stderr
    use_json = not stream.isatty() if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info
        if use_json
        else structlog.processors.StackInfoRenderer(),
        _redact_processor,
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    _route_stdlib(stream, renderer)


def _route_stdlib(stream: TextIO, renderer: Any) -> None:
    """Records from libraries that use ``logging`` (uvicorn, SQLAlchemy, Alembic) are rendered
    like our own events, so a container's log stays one JSON object per line."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_logger_name,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _redact_processor,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.WARNING)
    for name in _SELF_CONFIGURED:  # these install handlers of their own; send them to ours
        library = logging.getLogger(name)
        library.handlers.clear()
        library.propagate = True
