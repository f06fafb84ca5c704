"""`mailtrap-sync demo --source ...` runs its three syncs from each source it offers."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from sync_service.__main__ import cli


@pytest.mark.parametrize("source", ["sql", "file", "hubspot", "salesforce", "pipedrive"])
def test_demo_from_each_source(source: str, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo exits 0: everything created, then exactly the 25 edited records sent."""
    for name in ("MAILTRAP_API_URL", "MAILTRAP_API_TOKEN", "HUBSPOT_TOKEN", "SF_CLIENT_ID",
                 "SF_CLIENT_SECRET", "PIPEDRIVE_TOKEN"):
        # setenv first, so that monkeypatch restores the variable's absence afterwards: the
        # demo sets these in os.environ, and a dead server's URL must not reach later tests.
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    result = CliRunner().invoke(cli, ["demo", "--dir", str(tmp_path / source), "--contacts",
                                      "200", "--source", source], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "first run: succeeded; read 200, created 200" in text
    assert "updated 25" in text
    assert "third run, nothing changed: succeeded" in text
    assert "sent 0 in 0 imports" in text


def test_demo_names_the_sources_it_offers(tmp_path: Path) -> None:
    """An unknown --source is a configuration error (exit 2) listing the available ones."""
    result = CliRunner().invoke(cli, ["demo", "--dir", str(tmp_path), "--source", "nope"])
    assert result.exit_code == 2
    assert "file, hubspot" in result.output
