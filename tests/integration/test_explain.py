"""`mailtrap-sync explain`: what the state store and the source say about one contact."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result

from sync_service.cli import cli
from sync_service.models import ChangeKind, ImportEntry, RunKind
from sync_service.state import StateStore
from sync_service.testing.mailtrap.double import MailtrapDouble
from tests.integration.test_cli import CONFIG, TOKEN
from tests.support.harness import FIELDS, T0, Source


@pytest.fixture
def synced(tmp_path: Path, double: MailtrapDouble, mailtrap_server: str,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Source]]:
    """Ten rows synced once: row 9 has no usable address, row 10 repeats row 1's address."""
    double.grant(TOKEN, 1001)
    for tag, data_type in FIELDS.items():
        double.add_field(tag, data_type)
    monkeypatch.setenv("MAILTRAP_API_URL", mailtrap_server)
    monkeypatch.setenv("MAILTRAP_API_TOKEN", TOKEN)
    for name in ("MAILTRAP_ACCOUNT_ID", "MAILTRAP_SYNC_STATE_URL", "MAILTRAP_SYNC_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    source = Source(f"sqlite:///{tmp_path}/crm.db")
    source.insert(range(1, 9))
    source.insert([9], email="nobody at example")
    source.insert([10], email="User1@Example.com")
    config = tmp_path / "mailtrap-sync.toml"
    config.write_text(CONFIG.format(state=f"sqlite:///{tmp_path}/state.db",
                                    source=f"sqlite:///{tmp_path}/crm.db"))
    assert _cli("--config", str(config), "sync").exit_code == 0
    yield config, source
    source.close()


def _cli(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _explain(config: Path, needle: str, *extra: str) -> dict[str, Any]:
    result = _cli("--config", str(config), "explain", "customers", needle, "--json", *extra)
    assert result.exit_code == 0, result.output
    answer: dict[str, Any] = orjson.loads(result.stdout)
    return answer


def test_a_synced_contact_shows_its_confirmation_and_whether_the_source_moved(
        synced: tuple[Path, Source], double: MailtrapDouble) -> None:
    """A synced address: its key, confirmed address and hash, the import that carried it, no
    rejection; the source row is unchanged, and after an edit it differs (an update)."""
    config, source = synced
    answer = _explain(config, "USER3@example.com")
    assert answer["known"] is True
    (item,) = answer["keys"]
    assert item["key"] == "3"
    confirmed = item["confirmed"]
    assert confirmed["email"] == "user3@example.com"
    assert len(confirmed["hash"]) >= 16
    assert confirmed["import_id"] in {i.id for i in double.imports()}
    assert confirmed["batch"]["status"] == "finished"
    assert item["rejection"] is None
    assert item["waiting_on_owner"] is None
    assert item["pending"] == []
    assert item["source"] == {"status": "unchanged", "detail": "matches the confirmed hash"}

    source.update([3], at=T0 + timedelta(hours=1), first_name="Edited")
    moved = _explain(config, "3")["keys"][0]["source"]
    assert moved["status"] == "differs"
    assert moved["change"] == "update"

    text = _cli("--config", str(config), "explain", "customers", "user3@example.com")
    assert "source key 3" in text.stdout
    assert "confirmed     user3@example.com" in text.stdout
    assert "the next sync sends user3@example.com (update)" in text.stdout


def test_a_rejected_contact_shows_its_reason_and_the_source_still_refused(
        synced: tuple[Path, Source]) -> None:
    """A row rejected for its address: the rejection's kind and reason; the re-read row would
    be rejected again."""
    config, _ = synced
    item = _explain(config, "9")["keys"][0]
    assert item["confirmed"] is None
    assert item["rejection"]["kind"] == "invalid_email"
    assert item["rejection"]["email"] == "nobody at example"
    assert item["rejection"]["reason"]
    assert item["source"]["status"] == "rejected"
    assert item["source"]["kind"] == "invalid_email"


def test_a_duplicate_waits_on_the_owner_of_its_address(synced: tuple[Path, Source]) -> None:
    """Asking by the address shows both keys: the owner, and the duplicate waiting on it."""
    config, _ = synced
    answer = _explain(config, "user1@example.com")
    assert answer["address_owner"] == {"user1@example.com": "1"}
    by_key = {item["key"]: item for item in answer["keys"]}
    assert set(by_key) == {"1", "10"}
    assert by_key["1"]["waiting_on_owner"] is None
    assert by_key["10"]["rejection"]["kind"] == "duplicate"
    assert by_key["10"]["waiting_on_owner"] == {"email": "user1@example.com", "owner_key": "1"}
    text = _cli("--config", str(config), "explain", "customers", "10", "--no-source").stdout
    assert "waiting on    source key 1" in text


def test_an_unknown_address_says_the_store_knows_nothing(synced: tuple[Path, Source]) -> None:
    """An address the store never saw: known is false, no keys; the text says what to do."""
    config, _ = synced
    answer = _explain(config, "stranger@example.com")
    assert answer == {"pipeline": "customers", "query": "stranger@example.com", "known": False,
                      "keys": [], "address_owner": {}}
    text = _cli("--config", str(config), "explain", "customers", "stranger@example.com").stdout
    assert "knows nothing of 'stranger@example.com'" in text


def test_a_batch_in_flight_is_shown_with_its_address(synced: tuple[Path, Source]) -> None:
    """A recorded, unsettled batch carrying the key (e.g. left by a killed run) is listed."""
    config, _ = synced
    store = StateStore.from_url(f"sqlite:///{config.parent}/state.db")
    try:
        run_id = store.start_run("customers", RunKind.SYNC)
        store.record_batch("customers", run_id, [ImportEntry(
            source_key="5", email="user5@example.com", kind=ChangeKind.UPDATE, hash="f" * 64)])
    finally:
        store.close()
    item = _explain(config, "5", "--no-source")["keys"][0]
    assert [(p["email"], p["status"], p["kind"]) for p in item["pending"]] == [
        ("user5@example.com", "pending", "update")]
    assert item["source"] is None
    assert {a["state"] for a in item["addresses"]} == {"confirmed", "in flight"}

