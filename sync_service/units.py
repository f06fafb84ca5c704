"""Typed units of the configuration: durations and request rates, parsed once when it loads.

- ``Duration`` is a pydantic field type: ``"90s"``, ``"5m"``, ``"1h"``, ``"1d"``, ``"250ms"`` or
  a plain number of seconds in the TOML file becomes a ``float`` of seconds on the settings
  model. Daemon intervals, grace periods, back-offs and leases use it; nothing downstream parses
  text again.
- ``Rate`` is ``N/T`` (``"200/60s"``: 200 requests per 60 seconds) as a small named tuple, usable
  directly as a pydantic field type; the pacer takes it as it is.
- ``duration_parts`` splits a duration's text into amount and unit, for settings whose plain
  numbers mean something else (the SQL connector's lookback: cursor units on a numeric cursor).

Pure: no I/O, no import of the rest of the package.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, NamedTuple

from pydantic import BeforeValidator, GetCoreSchemaHandler
from pydantic_core import core_schema

UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*$")


def duration_parts(text: str) -> tuple[int | float, str | None] | None:
    """``"1.5h"`` → (1.5, "h"); ``"300"`` → (300, None); None when it is not a duration.

    Case and surrounding blanks do not matter. An amount without a fraction stays an ``int``.
    """
    match = _DURATION.match(text.lower())
    if match is None:
        return None
    amount_text, unit = match.group(1), match.group(2)
    amount = float(amount_text) if "." in amount_text else int(amount_text)
    return amount, unit


def parse_duration(value: str | float | timedelta) -> float:
    """A duration (text with a unit, plain seconds, or a ``timedelta``) → seconds, never negative.

    Already-parsed values (numbers, timedeltas) pass through, so code holding a ``Duration``
    field may still call this.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        parts = duration_parts(str(value))
        if parts is None:
            raise ValueError(f"duration {value!r} is not like 30s, 5m, 1h or 1d")
        amount, unit = parts
        seconds = float(amount) * UNIT_SECONDS[unit or "s"]
    if seconds < 0:
        raise ValueError(f"duration {value!r} is negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds, written in the configuration as ``"30s"``, ``"5m"``, ``"1h"``, ``"1d"`` or a number."""


class Rate(NamedTuple):
    """``requests`` per ``seconds``; written ``"200/60s"`` (units s, m, h; default s)."""

    requests: int
    seconds: float

    def __str__(self) -> str:
        return f"{self.requests}/{self.seconds:g}s"

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            parse_rate, serialization=core_schema.plain_serializer_function_ser_schema(str)
        )


def parse_rate(value: str | Rate) -> Rate:
    """``"200/60s"`` → ``Rate(200, 60.0)``; a ``Rate`` passes through."""
    if isinstance(value, Rate):
        return value
    match = _RATE.match(value) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"rate {value!r} is not of the form N/Ts (e.g. 200/60s)")
    count, span, unit = int(match.group(1)), float(match.group(2)), match.group(3) or "s"
    seconds = span * UNIT_SECONDS[unit]
    if count < 1 or seconds <= 0:
        raise ValueError(f"rate {value!r} must allow at least 1 request in a positive time")
    return Rate(count, seconds)
