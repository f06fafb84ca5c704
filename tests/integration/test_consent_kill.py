"""Opt-outs survive a SIGKILL between Mailtrap's answer to a PATCH and its record:
`mailtrap-sync sync` as a subprocess against the Mailtrap double served on 127.0.0.1, killed
while the answer to its nth unsubscribe is held back. The next run sends that PATCH once more
(it is idempotent) and no other twice; none is lost."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sync_service.testing.mailtrap.double import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_TOKEN,
    MailtrapDouble,
    RateLimits,
    serve,
)
from tests.support.harness import FIELDS, Source

REPO = Path(__file__).resolve().parents[2]
CONFIG = """
lease_ttl = "1s"

[state]
url = "{state}"

[mailtrap]
api_url = "{api_url}"
account_id = {account}
timeout = 5
poll_interval = 0.05

[mailtrap.pacing]
account = "100000/60s"
token = "100000/10s"

[[pipelines]]
name = "customers"
lists = ["Customers"]

[pipelines.source]
connector = "sql"
url = "{source}"
table = "customers"
key = "id"
cursor = "updated_at"
lookback = 0

[pipelines.mapping.fields]
first_name = "first_name"

[pipelines.consent]
unsubscribed = "opted_out"
"""


class HoldNthPatch:
    """Serves every request; the answer to the nth PATCH is held (never sent) once served."""

    def __init__(self, app: ASGIApp, nth: int) -> None:
        self.app, self.nth, self.seen = app, nth, 0
        self.served = threading.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "PATCH":
            await self.app(scope, receive, send)
            return
        self.seen += 1
        if self.seen != self.nth:
            await self.app(scope, receive, send)
            return

        async def keep(_message: Message) -> None:
            return None

        await self.app(scope, receive, keep)
        self.served.set()
        await asyncio.sleep(10)  # the process is killed meanwhile


@dataclass
class _Served:
    app: ASGIApp


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[MailtrapDouble, HoldNthPatch, Path]]:
    double = MailtrapDouble()
    double.rate_limits = RateLimits(account_requests=None, token_requests=None)
    for tag, data_type in FIELDS.items():
        double.add_field(tag, data_type)
    source = Source(f"sqlite:///{tmp_path}/crm.db")
    source.insert(range(1, 101))
    with source.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE customers ADD COLUMN opted_out BOOLEAN"))
        conn.execute(sa.text("UPDATE customers SET opted_out = 1"))
    hold = HoldNthPatch(double.app, nth=37)
    with serve(_Served(hold)) as url:  # type: ignore[arg-type]
        config = tmp_path / "mailtrap-sync.toml"
        config.write_text(CONFIG.format(state=f"sqlite:///{tmp_path}/state.db", api_url=url,
                                        account=DEFAULT_ACCOUNT_ID, source=source.url))
        yield double, hold, config
    source.close()


def _sync(config: Path) -> subprocess.Popen[bytes]:
    env = {"MAILTRAP_API_TOKEN": DEFAULT_TOKEN, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "sync_service", "--config", str(config),
                             "--log-format", "json", "sync"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_kill_between_patch_and_record(setup: tuple[MailtrapDouble, HoldNthPatch, Path]) -> None:
    """100 opt-outs, SIGKILL after Mailtrap carried out the 37th PATCH: 101 PATCHes in all."""
    double, hold, config = setup
    process = _sync(config)
    assert hold.served.wait(60)
    process.kill()
    process.wait(timeout=10)
    for _ in range(20):
        code = _sync(config).wait(timeout=120)
        if code != 3:  # 3: the killed run's lease (1 s) has not expired yet
            break
        time.sleep(0.5)
    assert code == 0
    sent = Counter(r.body["contact"]["email"] for r in double.requests() if r.method == "PATCH")
    assert set(sent) == {f"user{i}@example.com" for i in range(1, 101)}
    assert sorted(sent.values()) == [1] * 99 + [2]
    assert all(c.status == "unsubscribed" for c in double.contacts().values())
    assert not any(r.body["contact"].get("unsubscribed") is False
                   for r in double.requests() if r.method == "PATCH")
