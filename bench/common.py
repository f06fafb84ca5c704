"""Shared pieces of the benchmark scripts: synthetic CRM rows, a SQLite source, timers, tables.

Not a benchmark itself. The scripts next to it import it as ``common`` (Python puts the script's
folder first on ``sys.path``).

The synthetic people are meant to look like a real CRM export, because the cost of the mapping
depends on it (email domains are validated once per domain, unusual addresses take a slow path):

- ~80 % on a handful of big mailbox providers (gmail.com, outlook.com, ...);
- ~10 % on company domains shared by ~50 people each;
- ~6 % on a domain nobody else has;
- ~1 % internationalised (non-ASCII local part or domain), ~1 % messy but valid (spaces, capitals),
  ~1 % invalid (no @, double dot, a space, no TLD, missing), ~0.1 % duplicates of an earlier email.
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import platform
import pstats
import random
import resource
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

FIELD_TYPES = {"first_name": "text", "last_name": "text", "plan": "text", "seats": "integer",
               "signed_up": "date"}
FIELDS = {tag: tag for tag in FIELD_TYPES}  # merge tag = source column
T0 = datetime(2025, 1, 1)  # naive UTC, as most CRMs store it

_FIRST = ("ada", "grace", "alan", "edsger", "barbara", "donald", "frances", "ken", "radia", "tim",
          "margaret", "john", "linus", "guido", "anita", "leslie", "niklaus", "sophie", "dennis")
_LAST = ("lovelace", "hopper", "turing", "dijkstra", "liskov", "knuth", "allen", "thompson",
         "perlman", "lee", "hamilton", "backus", "torvalds", "rossum", "borg", "lamport", "wirth")
_PROVIDERS = ("gmail.com", "outlook.com", "yahoo.com", "hotmail.com", "icloud.com", "gmx.de",
              "proton.me", "aol.com")
_PROVIDER_WEIGHTS = (40, 15, 12, 10, 8, 6, 5, 4)
_PLANS = ("free", "starter", "business", "enterprise")
_INVALID = ("{l}.{i}gmail.com", "{f}..{l}.{i}@gmail.com", "{f} {l}.{i}@outlook.com",
            "{f}.{i}@gmail", "{f}.{i}@", "@{l}{i}.com", "", None)

_metadata = sa.MetaData()
customers = sa.Table(
    "customers", _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("email", sa.String(255)),
    sa.Column("first_name", sa.String(80)),
    sa.Column("last_name", sa.String(80)),
    sa.Column("plan", sa.String(40)),
    sa.Column("seats", sa.Integer),
    sa.Column("signed_up", sa.Date),
    sa.Column("updated_at", sa.DateTime, index=True),
)


# synthetic data ----------------------------------------------------------------------------------
def _email(  # noqa: PLR0911 - one return per kind of address reads best
    rng: random.Random, i: int, first: str, last: str, companies: int
) -> str | None:
    draw = rng.random()
    local = rng.choice((f"{first}.{last}.{i}", f"{first}{i}", f"{first[0]}.{last}+news{i}"))
    if draw < 0.80:
        return f"{local}@{rng.choices(_PROVIDERS, _PROVIDER_WEIGHTS)[0]}"
    if draw < 0.90:
        return f"{local}@{rng.choice(_LAST)}-{rng.randrange(companies)}.com"
    if draw < 0.96:
        return f"{local}@{last}-family-{i}.net"  # a domain of its own
    if draw < 0.97:
        return rng.choice((f"jürgen.{last}.{i}@gmx.de", f"{first}.{i}@bücher-{i % 97}.de",
                           f"{first}.{i}@café-{last}.fr"))
    if draw < 0.98:
        return f"  {first.title()}.{last.upper()}.{i}@{rng.choice(_PROVIDERS).upper()} "
    if draw < 0.99:
        pattern = rng.choice(_INVALID)
        return None if pattern is None else pattern.format(f=first, l=last, i=i)
    return f"{local}@{rng.choice(_PROVIDERS)}"


def people(n: int, *, seed: int = 7) -> Iterator[dict[str, Any]]:
    """``n`` CRM rows, ids 1..n, ``updated_at`` increasing one second per row."""
    rng = random.Random(seed)  # repeatable data, not security
    companies = max(1, n // 500)  # ~10 % of rows over n/500 domains: ~50 people per company
    earlier: list[str] = []
    for i in range(1, n + 1):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        email = _email(rng, i, first, last, companies)
        if earlier and rng.random() < 0.001:
            email = rng.choice(earlier)  # a second key with someone else's address
        elif email and len(earlier) < 1_000:
            earlier.append(email)
        yield {
            "id": i, "email": email, "first_name": first.title(), "last_name": last.title(),
            "plan": rng.choice(_PLANS), "seats": None if i % 17 == 0 else rng.randint(1, 500),
            "signed_up": None if i % 23 == 0 else (T0 - timedelta(days=rng.randint(0, 900))).date(),
            "updated_at": T0 + timedelta(seconds=i),
        }


def create_source(path: Path, n: int, *, seed: int = 7) -> float:
    """A SQLite ``customers`` table of ``n`` people (written by SQLAlchemy); returns seconds."""
    started = time.perf_counter()
    path.unlink(missing_ok=True)
    engine = sa.create_engine(f"sqlite:///{path}")
    _metadata.create_all(engine)
    rows = people(n, seed=seed)
    with engine.begin() as conn:
        while chunk := [row for _, row in zip(range(20_000), rows, strict=False)]:
            conn.execute(customers.insert(), chunk)
    engine.dispose()
    return time.perf_counter() - started


def copy_prefix(source: Path, target: Path, n: int) -> None:
    """``target`` gets the first ``n`` rows of ``source`` (same schema): faster than making them."""
    target.unlink(missing_ok=True)
    engine = sa.create_engine(f"sqlite:///{target}")
    _metadata.create_all(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"ATTACH DATABASE '{source}' AS src")
        conn.exec_driver_sql(f"INSERT INTO customers SELECT * FROM src.customers WHERE id <= {n}")
    engine.dispose()


# timing ------------------------------------------------------------------------------------------
class Timings:
    """Named accumulators of wall time and call counts (only the thread that created it counts)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._thread = threading.get_ident()

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.calls[name] = self.calls.get(name, 0) + 1

    def get(self, name: str) -> float:
        return self.seconds.get(name, 0.0)

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            if threading.get_ident() == self._thread:
                self.add(name, time.perf_counter() - started)

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` with its wall time added to ``name`` on every call."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.measure(name):
                return function(*args, **kwargs)

        return timed

    def wrap_iterator(self, name: str, items: Iterator[Any]) -> Iterator[Any]:
        """``items``, with the time spent producing each one added to ``name``."""
        iterator = iter(items)
        while True:
            started = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                self.add(name, time.perf_counter() - started)
                return
            self.add(name, time.perf_counter() - started)
            yield item


def median_of(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


# memory ------------------------------------------------------------------------------------------
def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """This process's resident set size now (Linux /proc), in MiB."""
    return _status_mb("VmRSS") or 0.0


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (``VmHWM``), in MiB.

    Not ``ru_maxrss``: on Linux a child started by ``subprocess`` inherits its parent's high-water
    mark through the exec (``ru_maxrss`` of a fresh interpreter whose parent once held 400 MiB
    reads 400 MiB), which would make a child look as large as the process that started it. The
    high-water mark of the process's own memory map does not carry over.
    """
    found = _status_mb("VmHWM")
    return found if found is not None else ru_maxrss_mb()


def ru_maxrss_mb() -> float:
    """``getrusage(RUSAGE_SELF).ru_maxrss`` (KiB on Linux) in MiB; see ``peak_rss_mb``."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# output ------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            model = next((line.split(":", 1)[1].strip() for line in info
                          if line.startswith("model name")), "")
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "platform": platform.platform(terse=True),
            "loadavg_1m_at_start": round(os.getloadavg()[0], 2)}


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain fixed-width table: first column left-aligned, the others right-aligned."""
    cells = [[_cell(v) for v in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for index, row in enumerate(cells):
        parts = [row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:], widths[1:],
                                                                         strict=True))]
        lines.append("  ".join(parts).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def emit_json(result: dict[str, Any]) -> None:
    print(json.dumps(result, indent=2, sort_keys=True, default=str))


def profile(function: Callable[[], Any], *, top: int = 25,
            sorts: Sequence[str] = ("tottime",)) -> Any:
    """Run ``function`` under cProfile and print the ``top`` functions by own time (or by each
    of ``sorts``: "tottime", "cumulative")."""
    profiler = cProfile.Profile()
    value = profiler.runcall(function)
    out = io.StringIO()
    for sort in sorts:
        pstats.Stats(profiler, stream=out).sort_stats(sort).print_stats(top)
    print(out.getvalue())
    return value


# the pipeline ------------------------------------------------------------------------------------
def settings(*, source: Path, state_url: str, api_url: str, batch_size: int,
             source_url: str | None = None) -> Any:
    """AppSettings for one pipeline ``bench`` reading ``customers`` from the SQLite ``source``
    (or from the database at ``source_url``).

    Import status polls start at 10 ms (the double finishes an import on its first poll anyway).
    """
    from sync_service.settings import AppSettings

    return AppSettings(
        state={"url": state_url},
        mailtrap={"api_url": api_url, "account_id": 1001, "poll_interval": 0.01,
                  "poll_max_interval": 0.05},
        pipelines=[{
            "name": "bench", "lists": ["Customers"], "batch_size": batch_size,
            "source": {"connector": "sql", "url": source_url or f"sqlite:///{source}",
                       "table": "customers", "key": "id", "cursor": "updated_at"},
            "mapping": {"email": "email", "fields": FIELDS},
        }],
    )


def fast_double() -> Any:
    """A Mailtrap double that is not the bottleneck: imports finish on their first status poll,
    no rate limits (the client is not paced either), with the pipeline's custom fields."""
    from sync_service.testing.mailtrap.double import ImportPolicy, MailtrapDouble, RateLimits

    double = MailtrapDouble(import_policy=ImportPolicy(polls_to_finish=1),
                            rate_limits=RateLimits(account_requests=None, token_requests=None))
    for tag, data_type in FIELD_TYPES.items():
        double.add_field(tag, data_type)
    return double


class GcClock:
    """Wall time spent in the cyclic garbage collector, per generation, while installed."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.collections = [0, 0, 0]
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            generation = info["generation"]
            self.seconds[generation] += time.perf_counter() - self._started
            self.collections[generation] += 1

    @contextmanager
    def installed(self) -> Iterator[GcClock]:
        import gc

        gc.callbacks.append(self._callback)
        try:
            yield self
        finally:
            gc.callbacks.remove(self._callback)
