"""What the CLI prints for logs and pipes: full-width TSV, escaped control characters, --json."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result

from sync_service.cli import cli
from sync_service.testing.mailtrap.double import MailtrapDouble
from tests.integration.test_cli import CONFIG, TOKEN
from tests.support.harness import FIELDS, Source

LONG = "a-very-long-local-part-" * 5  # 115 characters: more than a terminal's 80 columns


@pytest.fixture
def config(tmp_path: Path, double: MailtrapDouble, mailtrap_server: str,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A synced-once set-up: 20 rows, two of them unusable (one long, one with an escape)."""
    double.grant(TOKEN, 1001)
    for tag, data_type in FIELDS.items():
        double.add_field(tag, data_type)
    monkeypatch.setenv("MAILTRAP_API_URL", mailtrap_server)
    monkeypatch.setenv("MAILTRAP_API_TOKEN", TOKEN)
    for name in ("MAILTRAP_ACCOUNT_ID", "MAILTRAP_SYNC_STATE_URL", "MAILTRAP_SYNC_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    source = Source(f"sqlite:///{tmp_path}/crm.db")
    source.insert(range(1, 19))
    source.insert([19], email=f"{LONG} at example.com")
    source.insert([20], email="\x1b[2J\x1b[31mevil\u202e@example.com")
    path = tmp_path / "mailtrap-sync.toml"
    path.write_text(CONFIG.format(state=f"sqlite:///{tmp_path}/state.db",
                                  source=f"sqlite:///{tmp_path}/crm.db"))
    yield path
    source.close()


def _cli(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_rejects_off_a_terminal_prints_full_tsv_rows_with_control_characters_escaped(
        config: Path) -> None:
    """`rejects | cat`: one tab-separated line per rejection, whole address and reason, no
    wrapping, and no raw escape sequence from the source reaches the output."""
    assert _cli("--config", str(config), "sync").exit_code == 0
    result = _cli("--config", str(config), "rejects", "customers")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split("\t") == ["source key", "email", "kind", "reason", "attempts",
                                    "last seen"]
    rows = {cells[0]: cells for cells in (line.split("\t") for line in lines[1:])}
    assert set(rows) == {"19", "20"}
    assert rows["19"][1] == f"{LONG} at example.com"
    assert rows["19"][2] == "invalid_email"
    assert len(rows["19"][3]) > 20
    assert "\x1b" not in result.stdout
    assert "\u202e" not in result.stdout
    assert rows["20"][1] == "\\x1b[2J\\x1b[31mevil\\u202e@example.com"


def test_rejects_json_keeps_values_exact(config: Path) -> None:
    """`rejects --json` is valid JSON with the documented keys and the value as stored."""
    assert _cli("--config", str(config), "sync").exit_code == 0
    result = _cli("--config", str(config), "rejects", "customers", "--json")
    rows = orjson.loads(result.stdout)
    assert {r["source_key"] for r in rows} == {"19", "20"}
    assert set(rows[0]) == {"source_key", "email", "kind", "reason", "attempts", "first_seen",
                            "last_seen"}
    assert any(r["email"] == "\x1b[2J\x1b[31mevil\u202e@example.com" for r in rows)


def test_run_line_separates_changes_found_from_what_mailtrap_did(
        config: Path, double: MailtrapDouble) -> None:
    """The run line says 'changes found' (the job's kinds) apart from Mailtrap's created/updated
    counts of the finished imports; a re-run shows nothing created by Mailtrap."""
    double.add_contact("user1@example.com")  # Mailtrap already knows one address
    first = _cli("--config", str(config), "sync")
    assert first.exit_code == 0, first.output
    line = first.stdout.strip()
    assert "changes found: read=20 created=18" in line
    assert "invalid=2" in line
    assert "Mailtrap: imports finished=1 failed=0 contacts created=17 updated=1" in line


def test_every_command_has_json_output(config: Path) -> None:
    """sync, status, plan, rejects, retry, check and db upgrade print one valid JSON document."""
    sync = orjson.loads(_cli("--config", str(config), "sync", "--json").stdout)
    assert sync[0]["outcome"] == "succeeded"
    assert sync[0]["changes"]["created"] == 18
    assert sync[0]["mailtrap"] == {"imports": 1, "created": 18, "updated": 0}
    for args in (["status"], ["plan", "customers"], ["rejects", "customers"],
                 ["retry", "customers"], ["check"], ["db", "upgrade"]):
        result = _cli("--config", str(config), *args, "--json")
        assert result.exit_code == 0, (args, result.output)
        json.loads(result.stdout)  # one document, nothing else on stdout
    checks = orjson.loads(_cli("--config", str(config), "check", "--json").stdout)
    assert checks["ok"] is True
    assert {c["check"] for c in checks["checks"]} >= {"configuration", "state store",
                                                     "token and account"}


def test_a_failed_run_is_logged_at_error(config: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """run.finished of a failed run has level error in the JSON log."""
    monkeypatch.setenv("MAILTRAP_API_TOKEN", "refused-token-3b9d")
    result = _cli("--config", str(config), "--log-format", "json", "sync")
    assert result.exit_code == 1
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    finished = [e for e in events if e["event"] == "run.finished"]
    assert [e["level"] for e in finished] == ["error"]
    assert finished[0]["outcome"] == "failed"
