"""The daemon schedules each pipeline's reconcile every `reconcile_every`, due after the last."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from sync_service.scheduler import Daemon
from sync_service.settings import load_settings
from sync_service.testing.mailtrap.double import DEFAULT_TOKEN, MailtrapDouble
from tests.integration.daemon_support import PIPELINE, write_config
from tests.support.double_fixtures import BASE_URL, validating_transport


@pytest.fixture
def transport(double: MailtrapDouble) -> Iterator[httpx.BaseTransport]:
    transport = validating_transport(double)
    yield transport
    transport.close()


def test_reconcile_job_due_now_then_a_day_after_the_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transport: httpx.BaseTransport,
) -> None:
    """Never reconciled: due at start; after one: due `reconcile_every` after it; the job's id
    names the pipeline."""
    monkeypatch.setenv("MAILTRAP_API_TOKEN", DEFAULT_TOKEN)
    monkeypatch.setenv("MAILTRAP_API_URL", BASE_URL)
    config = write_config(tmp_path / "cfg.toml", state_url=f"sqlite:///{tmp_path}/state.db",
                          source_url=f"sqlite:///{tmp_path}/crm.db", every="1h")
    config.write_text(config.read_text().replace('every = "1h"',
                                                 'every = "1h"\nreconcile_every = "1d"'))
    daemon = Daemon(load_settings(config), stop=threading.Event(), transport=transport)
    with daemon.services() as (store, client):
        job = daemon.build_scheduler(store, client).get_job(f"{PIPELINE}:reconcile")
        assert job.next_run_time <= datetime.now(UTC) + timedelta(seconds=1)
        assert job.trigger.interval == timedelta(days=1)
        store.set_reconciled(PIPELINE)
        later = daemon.build_scheduler(store, client).get_job(f"{PIPELINE}:reconcile")
        last = store.reconciled_at(PIPELINE)
        assert last is not None
        assert abs((later.next_run_time - last - timedelta(days=1)).total_seconds()) < 1
