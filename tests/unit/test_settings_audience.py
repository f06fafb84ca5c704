"""Settings of opt-outs, events and reconcile: defaults, the events budget, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from sync_service.errors import ConfigError
from sync_service.metrics import Metrics
from sync_service.settings import load_settings

BASE = """
[[pipelines]]
name = "crm"
reconcile_every = "{every}"

[pipelines.source]
connector = "sql"
url = "sqlite:///crm.db"
table = "contacts"
key = "id"
cursor = "id"

[pipelines.consent]
unsubscribed = "opted_out"

[pipelines.events]
{events}

[pipelines.events.source]
connector = "sql"
url = "sqlite:///crm.db"
table = "crm_events"
key = "id"
cursor = "id"
"""


def _load(tmp_path: Path, *, events: str = 'name = "event"', every: str = "1d"
          ) -> object:
    path = tmp_path / "cfg.toml"
    path.write_text(BASE.format(events=events, every=every))
    return load_settings(path)


def test_defaults_and_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """on_opt_out defaults to unsubscribe; events take half of one 200/60 s window per run."""
    monkeypatch.delenv("MAILTRAP_SYNC_CONFIG", raising=False)
    settings = _load(tmp_path)
    pipeline = settings.pipelines[0]  # type: ignore[attr-defined]
    assert pipeline.consent.on_opt_out == "unsubscribe"
    assert pipeline.events.per_run((200, 60.0)) == 100
    assert pipeline.events.source.table == "crm_events"
    assert pipeline.reconcile_every == "1d"


@pytest.mark.parametrize(("events", "every", "message"), [
    ('name = "event"\nname_value = "X"', "1d", r"events: .*`name`.*`name_value`"),
    ("", "1d", r"events: .*not both and not neither"),
    ('name = "event"\nbudget_share = 1.5', "1d", r"events.budget_share"),
    ('name = "event"', "0s", r"reconcile_every: .*at least 1s"),
])
def test_bad_settings_name_the_key(tmp_path: Path, events: str, every: str,
                                   message: str) -> None:
    """Wrong events or reconcile settings are one ConfigError naming pipeline and key."""
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, events=events, every=every)


def test_events_backlog_metric() -> None:
    """The events backlog is exported per pipeline."""
    metrics = Metrics()
    metrics.set_events_backlog("crm", 19_900)
    assert 'mailtrap_sync_events_backlog{pipeline="crm"} 19900.0' in metrics.render().decode()
