"""Custom events survive SIGKILLs: `mailtrap-sync sync` as a subprocess against the Mailtrap
double served on 127.0.0.1 with fault injection (500s, connections cut before or after the
request was carried out), killed three times at random moments. No event is lost, and no event
arrives twice unless an answer was lost (a cut response, or the kill itself)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from sync_service.testing.mailtrap.double import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_TOKEN,
    MailtrapDouble,
    RateLimits,
    serve,
)
from tests.support.harness import FIELDS, Source

REPO = Path(__file__).resolve().parents[2]
EVENTS = 1_000
KILLS = 3

CONFIG = """
lease_ttl = "1s"

[state]
url = "{state}"

[mailtrap]
api_url = "{api_url}"
account_id = {account}
timeout = 5
poll_interval = 0.05
poll_max_interval = 0.1
max_retries = 3

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

[pipelines.events]
email = "email"
name = "event"
params = ["ref"]

[pipelines.events.source]
connector = "sql"
url = "{source}"
table = "crm_events"
key = "id"
cursor = "id"
"""


@dataclass
class World:
    double: MailtrapDouble
    config: Path
    logs: Path
    started: int = 0

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        self.started += 1
        env = {"MAILTRAP_API_TOKEN": DEFAULT_TOKEN, "PATH": "/usr/bin:/bin",
               "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        with (self.logs / f"run-{self.started}.log").open("wb") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "sync_service", "--config", str(self.config),
                 "--log-format", "json", *(args or ("sync",))],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)

    def received(self) -> Counter[int]:
        return Counter(int(e.params["ref"]) for e in self.double.events())


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    double = MailtrapDouble(seed=13)
    double.rate_limits = RateLimits(account_requests=None, token_requests=None)
    for tag, data_type in FIELDS.items():
        double.add_field(tag, data_type)
    source = Source(f"sqlite:///{tmp_path}/crm.db")
    source.insert(range(1, 201))
    with source.engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE crm_events (id INTEGER PRIMARY KEY, "
                             "email VARCHAR(255), event VARCHAR(50), ref INTEGER)"))
        conn.execute(sa.text("INSERT INTO crm_events VALUES (:id, :email, :event, :ref)"),
                     [{"id": i, "email": f"user{i % 200 + 1}@example.com", "event": "Login",
                       "ref": i} for i in range(1, EVENTS + 1)])
    logs = tmp_path / "logs"
    logs.mkdir()
    with serve(double) as url:
        config = tmp_path / "mailtrap-sync.toml"
        config.write_text(CONFIG.format(state=f"sqlite:///{tmp_path}/state.db", api_url=url,
                                        account=DEFAULT_ACCOUNT_ID, source=source.url))
        yield World(double, config, logs)
    source.close()


def _kill_at_random(world: World, rng: random.Random) -> bool:
    """Start a run and SIGKILL it once a random number of further events arrived (or after a
    random delay, for the first); False if the run ended first."""
    target = len(world.double.events()) + rng.randint(1, 300)
    delay = rng.uniform(0.05, 1.5)
    process = world.start()
    started = time.monotonic()
    while process.poll() is None and time.monotonic() - started < 60:
        if (world.started == 1 and time.monotonic() - started >= delay) or (
                world.started > 1 and len(world.double.events()) >= target):
            process.kill()
            process.wait(timeout=10)
            return True
        time.sleep(0.005)
    process.wait(timeout=10)
    return False


def test_events_survive_kills_and_faults(world: World) -> None:
    """1,000 events, 3 SIGKILLs, 500s and cut responses: none lost, duplicates ≤ answers lost."""
    rng = random.Random(7)
    world.double.faults.error_rate = 0.01
    world.double.faults.drop_rate = 0.025
    kills = 0
    for _ in range(10):
        if kills == KILLS:
            break
        kills += _kill_at_random(world, rng)
    assert kills == KILLS
    for _ in range(15):
        code = world.start().wait(timeout=300)
        if code == 0 and len(world.received()) == EVENTS:
            break
        time.sleep(1.1)  # a lease left by a killed run expires (lease_ttl 1s)
    received = world.received()
    assert sorted(received) == list(range(1, EVENTS + 1))  # none lost
    faults = Counter(r.fault for r in world.double.requests() if r.path.endswith("/events"))
    cut = faults["drop_after"]  # carried out, answer lost
    unanswered = cut + faults["drop_before"]  # the client cannot tell these two apart
    duplicates = sum(n - 1 for n in received.values())
    assert duplicates <= cut + kills
    out = subprocess.run(
        [sys.executable, "-m", "sync_service", "--config", str(world.config), "status",
         "--json"], cwd=REPO, capture_output=True, check=True, timeout=60,
        env={"MAILTRAP_API_TOKEN": DEFAULT_TOKEN, "PATH": "/usr/bin:/bin",
             "PYTHONPATH": str(REPO)})
    counts = json.loads(out.stdout)[0]["audience"]
    assert counts["events_sent"] == EVENTS
    assert counts["events_backlog"] == 0
    assert duplicates <= counts["events_possibly_duplicated"] <= unanswered + kills
