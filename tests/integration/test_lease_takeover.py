"""A dead holder's lease is taken over at once; a live holder's is not (issue 7).

`mailtrap-sync sync` runs as a subprocess (helpers of ``test_kill_restart``) with a long
``lease_ttl`` (60 s), so that a quick start after a SIGKILL can only come from noticing that the
holder died, not from the lease expiring.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sync_service.testing.mailtrap.double import ImportPolicy, MailtrapDouble, RateLimits
from tests.integration.test_kill_restart import World, _world

START_WITHIN_S = 5.0


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def slow_world(request: pytest.FixtureRequest, tmp_path: Path,
               double: MailtrapDouble) -> Iterator[World]:
    """Imports that take 0.2 s, no rate limits, lease_ttl 60 s; state in SQLite or PostgreSQL."""
    double.import_policy = ImportPolicy(polls_to_finish=None, seconds_to_finish=0.2)
    double.rate_limits = RateLimits(account_requests=None, token_requests=None)
    state = None if request.param == "sqlite" else request.getfixturevalue("pg_url")
    for world in _world(tmp_path, double, pacing="100000/60s", state_url=state):
        config = world.config.read_text().replace('lease_ttl = "1s"', 'lease_ttl = "60s"')
        world.config.write_text(config)
        yield world


def _started(log: Path) -> bool:
    """Whether the run's log says it took the lease and started."""
    if not log.exists():
        return False
    for line in log.read_text(errors="replace").splitlines():
        try:
            if json.loads(line).get("event") == "run.started":
                return True
        except ValueError:
            continue
    return False


def _hold_first_run(world: World) -> None:
    """Start a sync and wait until it is polling its first import (lease held)."""
    world.source.insert(range(1, 301))
    world.tripwire.arm("poll", 1, "after")
    process = world.start()
    assert world.tripwire.hit.wait(60), "the first run never polled"
    assert process.poll() is None


def test_sync_after_kill_9_starts_at_once(slow_world: World) -> None:
    """After SIGKILL of a running sync, the next sync takes the lease within seconds."""
    _hold_first_run(slow_world)
    first = slow_world.processes[-1]
    first.kill()
    first.wait(timeout=10)
    slow_world.tripwire.disarm()
    began = time.monotonic()
    second = slow_world.start()
    log = slow_world.logs / f"run-{slow_world.started}.log"
    while not _started(log) and second.poll() is None and time.monotonic() - began < 30:
        time.sleep(0.05)
    took = time.monotonic() - began
    assert second.wait(timeout=120) == 0, log.read_text(errors="replace")[-2000:]
    assert _started(log)
    assert took < START_WITHIN_S, f"the second sync started after {took:.1f} s"
    assert len(slow_world.double.contacts()) == 300


def test_sync_while_a_live_holder_renews_exits_busy(slow_world: World) -> None:
    """While the first sync is alive and holds the lease, a second one exits 3 (busy)."""
    _hold_first_run(slow_world)
    first = slow_world.processes[-1]
    try:
        second = slow_world.start()
        assert second.wait(timeout=60) == 3
    finally:
        slow_world.tripwire.disarm()
    assert first.wait(timeout=120) == 0
    assert len(slow_world.double.contacts()) == 300
