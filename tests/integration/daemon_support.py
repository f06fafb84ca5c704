"""Helpers for the daemon tests: a SQLite CRM, a config file, daemon subprocesses, scrapes.

Every wait is a bounded poll (``wait_for``); every process is killed at the end of its test
even when an assertion failed (``DaemonProcess.kill``); everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from sync_service.testing.mailtrap.double import DEFAULT_TOKEN

T = TypeVar("T")
PIPELINE = "customers"
ROWS = 5
_metadata = sa.MetaData()
_customers = sa.Table(
    "customers", _metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", sa.String(255)),
    sa.Column("first_name", sa.String(80)),
    sa.Column("updated_at", sa.DateTime),  # naive UTC; written through SQLAlchemy (see demo.py)
)


def email(row_id: int) -> str:
    return f"customer{row_id}@example.com"


class Source:
    """The CRM the daemon reads: a SQLite `customers` table that the test edits as it runs."""

    def __init__(self, path: Path, rows: int = ROWS) -> None:
        self.url = f"sqlite:///{path}"
        self._engine = sa.create_engine(self.url)
        self._clock = datetime(2026, 1, 1)  # naive UTC, as the column holds
        _metadata.create_all(self._engine)
        with self._engine.begin() as conn:
            conn.execute(_customers.insert(), [
                {"id": i, "email": email(i), "first_name": "Ada", "updated_at": self._next()}
                for i in range(1, rows + 1)])

    def _next(self) -> datetime:
        self._clock += timedelta(seconds=1)
        return self._clock

    def change(self, row_id: int, first_name: str) -> str:
        """Give row ``row_id`` a new first name and a later cursor; returns its email."""
        with self._engine.begin() as conn:
            conn.execute(_customers.update().where(_customers.c.id == row_id)
                         .values(first_name=first_name, updated_at=self._next()))
        return email(row_id)

    def close(self) -> None:
        self._engine.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_config(path: Path, *, state_url: str, source_url: str, every: str = "2s",
                 listen: str | None = None, grace: str = "20s", poll_interval: float = 0.5,
                 daemon: str = "") -> Path:
    """A config with one pipeline (`customers`) on an interval, no jitter, given listener.

    ``daemon`` adds lines to the ``[daemon]`` table.
    """
    web = f'listen = "{listen}"' if listen else "enabled = false"
    path.write_text(f"""\
[state]
url = "{state_url}"

[mailtrap]
account_id = 1001
poll_interval = {poll_interval}

[web]
{web}

[daemon]
jitter = "0s"
grace_period = "{grace}"
{daemon}

[[pipelines]]
name = "{PIPELINE}"
every = "{every}"
lists = ["Customers"]

[pipelines.source]
connector = "sql"
url = "{source_url}"
table = "customers"
key = "id"
cursor = "updated_at"

[pipelines.mapping.fields]
first_name = "first_name"
""")
    return path


def cli_env(base_url: str, **extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: the double's URL and token, no stray overrides."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MAILTRAP_SYNC_", "MAILTRAP_ACCOUNT", "MAILTRAP_API"))}
    env.update(MAILTRAP_API_URL=base_url, MAILTRAP_API_TOKEN=DEFAULT_TOKEN, **extra)
    return env


def cli(config: Path, env: Mapping[str, str], *args: str, timeout: float = 60.0
        ) -> subprocess.CompletedProcess[str]:
    """Run one CLI command to its end (bounded)."""
    return subprocess.run([sys.executable, "-m", "sync_service", "--config", str(config), *args],
                          env=dict(env), capture_output=True, text=True, timeout=timeout,
                          check=False)


def wait_for(predicate: Callable[[], T | None], *, timeout: float, what: str,
             alive: Callable[[], None] | None = None, interval: float = 0.1) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if alive is not None:
            alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class DaemonProcess:
    """A `mailtrap-sync run` subprocess, its stderr kept in a file."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], log_path: Path, *,
                 port: int | None = None, cwd: Path | None = None) -> None:
        self.log_path, self.port = log_path, port
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(list(argv), env=dict(env), stdout=subprocess.DEVNULL,
                                     stderr=self._log, cwd=cwd)

    @classmethod
    def start(cls, config: Path, env: Mapping[str, str], log_path: Path, *,
              port: int | None = None) -> DaemonProcess:
        argv = [sys.executable, "-m", "sync_service", "--config", str(config), "run"]
        return cls(argv, env, log_path, port=port)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"the daemon exited with {self.proc.returncode}:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=10.0)

    def answers(self, path: str) -> bool:
        try:
            return self.get(path).status_code == 200
        except httpx.TransportError:
            return False

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        """Every sample of /metrics as (name, labels, value)."""
        response = self.get("/metrics")
        assert response.status_code == 200
        return [(s.name, dict(s.labels), s.value)
                for family in text_string_to_metric_families(response.text)
                for s in family.samples]

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels``."""
        return sum(value for sample, got, value in self.samples()
                   if sample == name and labels.items() <= got.items())

    def terminate(self, timeout: float) -> int:
        """SIGTERM, then the exit code; fails (and kills) if it takes longer than ``timeout``."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            message = f"no exit within {timeout:g}s of SIGTERM:\n{self.tail()}"
            raise AssertionError(message) from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()

    def events(self) -> list[dict[str, Any]]:
        """The log as parsed JSON lines; fails on any line that is not a JSON object."""
        parsed = []
        for line in self.log_path.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                raise AssertionError(f"a log line is not JSON: {line!r}") from None
            assert isinstance(event, dict), line
            assert "event" in event, line
            parsed.append(event)
        return parsed
