"""`mailtrap-sync demo` stays inside its own folder, whatever the environment points at."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from sync_service.cli import cli
from sync_service.state import StateStore


def test_demo_ignores_a_configured_state_store_and_account(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With MAILTRAP_SYNC_STATE_URL and MAILTRAP_ACCOUNT_ID set (as in the image), the demo
    succeeds, writes only its own state store, and leaves the environment as it found it."""
    elsewhere = tmp_path / "production-state.db"
    monkeypatch.setenv("MAILTRAP_SYNC_STATE_URL", f"sqlite:///{elsewhere}")
    monkeypatch.setenv("MAILTRAP_ACCOUNT_ID", "424242")
    monkeypatch.setenv("MAILTRAP_API_TOKEN", "a-real-token-7c1e")
    monkeypatch.delenv("MAILTRAP_API_URL", raising=False)
    folder = tmp_path / "demo"

    result = CliRunner().invoke(cli, ["demo", "--dir", str(folder), "--contacts", "60"],
                                catch_exceptions=False)

    assert result.exit_code == 0, result.output
    assert "third run, nothing changed" in result.output
    assert not elsewhere.exists()
    store = StateStore.from_url(f"sqlite:///{folder / 'state.db'}")
    try:
        assert store.count_contacts("customers") == 60  # every sample row is usable below row 400
    finally:
        store.close()
    assert os.environ["MAILTRAP_SYNC_STATE_URL"] == f"sqlite:///{elsewhere}"
    assert os.environ["MAILTRAP_ACCOUNT_ID"] == "424242"
    assert os.environ["MAILTRAP_API_TOKEN"] == "a-real-token-7c1e"
    assert "MAILTRAP_API_URL" not in os.environ
