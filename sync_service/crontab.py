"""Crontab lines as cron means them, turned into APScheduler 3 triggers (always UTC).

APScheduler 3 numbers weekdays from Monday = 0 where crontab counts from Sunday = 0 (and 7), and
it ANDs day-of-month with day-of-week where cron ORs them when both are restricted. A user who
writes ``0 9 * * 1-5`` gets Monday to Friday here as in crontab.
"""

from __future__ import annotations

import re
from datetime import UTC
from typing import Any

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger

_MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
           "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
           "@hourly": "0 * * * *"}
_DOW_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_DOW_TERM = re.compile(r"^(?:(\*)|([0-9]+|[a-z]{3})(?:-([0-9]+|[a-z]{3}))?)(?:/([0-9]+))?$", re.I)


def _weekday_number(token: str) -> int:
    if token.isdigit():
        if int(token) > 7:
            raise ValueError(f"day of week {token} is not 0-7")
        return int(token)
    if token.lower() not in _DOW_NAMES:
        raise ValueError(f"day of week {token!r} is not a day name (sun..sat)")
    return _DOW_NAMES.index(token.lower())


def crontab_weekdays(field: str) -> list[int]:
    """The days a crontab day-of-week field names, sorted, Sunday = 0 (``7`` is Sunday too)."""
    days: set[int] = set()
    for term in field.split(","):
        match = _DOW_TERM.match(term)
        if not match:
            raise ValueError(f"day of week {term!r} is not understood")
        star, first, last, step = match.groups()
        low = 0 if star else _weekday_number(first)
        high = 6 if star else _weekday_number(last) if last else 7 if step else low
        if low > high:
            raise ValueError(f"day-of-week range {term!r} runs backwards")
        if step is not None and int(step) < 1:
            raise ValueError(f"day-of-week step in {term!r} must be at least 1")
        days.update(day % 7 for day in range(low, high + 1, int(step or 1)))
    return sorted(days)


def crontab_trigger(expression: str, *, jitter: float | None = None) -> BaseTrigger:
    """A trigger (UTC) from a 5-field crontab line or ``@hourly``/``@daily``/``@weekly``/....

    APScheduler 3 numbers weekdays from Monday = 0, so the day-of-week field is turned into day
    names first; and where it ANDs day-of-month with day-of-week, cron ORs them when both are
    restricted (neither starts with ``*``), so that case becomes an ``OrTrigger``.
    """
    line = _MACROS.get(expression.strip().lower(), expression)
    fields = line.split()
    if len(fields) != 5:
        raise ValueError(f"{expression!r} has {len(fields)} fields; crontab lines have 5")
    minute, hour, day, month, dow = fields
    days = "*" if dow == "*" else ",".join(_DOW_NAMES[d] for d in crontab_weekdays(dow))
    common: dict[str, Any] = {"minute": minute, "hour": hour, "month": month, "timezone": UTC}
    spread = jitter or None
    if day.startswith("*") or dow.startswith("*"):
        return CronTrigger(day=day, day_of_week=days, jitter=spread, **common)
    return OrTrigger([CronTrigger(day=day, **common), CronTrigger(day_of_week=days, **common)],
                     jitter=spread)
