"""structlog set-up: JSON lines off a terminal, readable console output on one; secrets redacted.

Event names are constants (``run.finished``), values are key-value pairs, and context (pipeline,
run id, import id) is bound once with ``structlog.contextvars``.

One redaction (``redact``) serves every log line, error message and URL shown: registered secrets
(the API token, URL passwords, ``${VAR}`` values whose name says they are secret) in each form
they can be written (as given, percent-encoded as in a URL, ``quote_plus``-encoded as in a query,
escaped as ``repr`` shows them), passwords in a URL's user part, and secret-looking query or
``key=value`` parameters (``password=``, ``sslpassword=``, ``token=``, ``api_key=``...). Values
nested in dicts and lists of a log line are redacted too.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO
from urllib.parse import quote, quote_plus, unquote, unquote_plus

import structlog

_SECRETS: set[str] = set()
# Bounded repetitions, anchored after a non-scheme character: linear on long values (an
# unbounded scheme run backtracked quadratically on a 4 MB value).
_URL_PASSWORD = re.compile(
    r"(?<![a-z0-9+.-])(?P<scheme>[a-z][a-z0-9+.-]{0,31}://[^:/@\s]{1,256}):(?P<pw>[^@\s]{1,512})@",
    re.I,
)
# key=value pairs whose key names a secret: URL query parameters, libpq/ODBC connection strings.
_SENSITIVE_NAMES = (r"(?:[a-z_]*(?:password|passwd|pwd|secret|token)[a-z_]*|api_?key|access_?key"
                r"|private_?key|auth|authorization|credentials?)")
_PARAMETER = re.compile(
    rf"(?P<name>(?<![a-z0-9_]){_SENSITIVE_NAMES})(?P<sep>\s?=\s?)"
    r"(?P<value>'[^']{0,512}'|\"[^\"]{0,512}\"|[^&\s#;,'\")]{1,512})",
    re.I,
)
# Names of environment variables whose ${VAR} values are secrets.
SECRET_VARIABLE = re.compile(r"PASSWORD|PASSWD|PWD|SECRET|TOKEN|KEY|CREDENTIAL|AUTH", re.I)
REDACTED = "***"
_SELF_CONFIGURED = ("uvicorn", "uvicorn.error", "uvicorn.access", "alembic")


def register_secret(value: str | None) -> None:
    """Never render this value (e.g. the API token), in any form it can be written, anywhere.

    Values shorter than 4 characters are not registered (they would blank out ordinary words);
    the structural rules of ``redact`` still hide them inside URLs and ``key=value`` pairs.
    """
    if not value or len(value) < 4:
        return
    forms = {value, quote(value, safe=""), quote(value, safe=" +"), quote_plus(value),
             repr(value)[1:-1], value.encode("unicode_escape").decode("ascii")}
    _SECRETS.update(form for form in forms if len(form) >= 4)


def register_url(url: str | None) -> None:
    """Register the secrets a URL carries: its password and secret-looking query parameters."""
    if not url:
        return
    for match in _URL_PASSWORD.finditer(url):
        _register_decoded(match.group("pw"))
    for match in _PARAMETER.finditer(url):
        _register_decoded(match.group("value").strip("'\""))


def _register_decoded(raw: str) -> None:
    register_secret(raw)
    register_secret(unquote(raw))
    register_secret(unquote_plus(raw))


def redact(text: str) -> str:
    """Hide registered secrets, URL passwords and secret parameters in ``text``."""
    # Longest first, so a secret's encoded form is not half-replaced by a shorter form's match.
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = _URL_PASSWORD.sub(lambda m: f"{m.group('scheme')}:{REDACTED}@", text)
    return _PARAMETER.sub(lambda m: f"{m.group('name')}{m.group('sep')}{REDACTED}", text)


def _redact_value(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, BaseException):
        return redact(repr(value))
    if depth < 4 and isinstance(value, dict):
        return {k: _redact_value(v, depth + 1) for k, v in value.items()}
    if depth < 4 and isinstance(value, list | tuple):
        return [_redact_value(v, depth + 1) for v in value]
    return value


def _redact_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in event_dict.items():
        event_dict[key] = _redact_value(value)
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
