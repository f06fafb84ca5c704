"""The re-read skip's pure parts: what the fingerprint and the token depend on, and which rows
``candidates`` picks."""

from __future__ import annotations

from datetime import datetime

from sync_service.diff import Mapped, Pending
from sync_service.models import SourceRecord
from sync_service.reread import Seen, candidates, fingerprint, to_note, token
from sync_service.settings import PipelineSettings

T = datetime(2026, 3, 1, 12, 0, 0)


def _pipeline(**changes: object) -> PipelineSettings:
    base: dict[str, object] = {
        "name": "p", "lists": ["Customers"],
        "source": {"connector": "sql", "url": "sqlite:///crm.db", "table": "customers",
                   "key": "id", "cursor": "updated_at"},
        "mapping": {"email": "email", "fields": {"first_name": "first_name"}}}
    return PipelineSettings.model_validate({**base, **changes})


FIELDS = {"first_name": "text"}
LISTS = {"Customers": 3}


def test_the_fingerprint_follows_what_decides_a_contact() -> None:
    """Mapping, lists, list ids, field types and the source's query change the fingerprint;
    operational settings (fetch size, lookback, batch size) do not."""
    base = fingerprint(_pipeline(), FIELDS, LISTS)
    assert fingerprint(_pipeline(), FIELDS, LISTS) == base
    changed = [
        fingerprint(_pipeline(mapping={"email": "email", "fields": {"first_name": "last_name"}}),
                    FIELDS, LISTS),
        fingerprint(_pipeline(lists=["Customers", "VIP"]), FIELDS, LISTS),
        fingerprint(_pipeline(), {"first_name": "date"}, LISTS),
        fingerprint(_pipeline(), FIELDS, {"Customers": 4}),
        fingerprint(_pipeline(source={"connector": "sql", "url": "sqlite:///crm.db",
                                      "table": "people", "key": "id", "cursor": "updated_at"}),
                    FIELDS, LISTS),
        fingerprint(_pipeline(lists_by_column={"column": "plan", "values": {"pro": "Pro"}}),
                    FIELDS, LISTS),
    ]
    assert base not in changed
    assert len(set(changed)) == len(changed)
    same = [
        fingerprint(_pipeline(batch_size=10), FIELDS, LISTS),
        fingerprint(_pipeline(source={"connector": "sql", "url": "sqlite:///crm.db",
                                      "table": "customers", "key": "id",
                                      "cursor": "updated_at", "fetch_size": 7,
                                      "lookback": "1h"}), FIELDS, LISTS),
    ]
    assert set(same) == {base}


def test_the_token_binds_cursor_hash_and_fingerprint() -> None:
    """A token differs when the cursor value, its type, the hash or the fingerprint differs."""
    made = token("f", T, "h")
    assert token("f", T, "h") == made
    others = {token("g", T, "h"), token("f", T.replace(microsecond=1), "h"),
              token("f", T, "i"), token("f", str(T), "h"), token("f", 1, "h"),
              token("f", "1", "h")}
    assert made not in others
    assert len(others) == 6


def _record(key: int, cursor: object = T, *, deleted: bool = False) -> SourceRecord:
    return SourceRecord(key=key, cursor=cursor, values={}, deleted=deleted)


def test_candidates_leave_out_what_may_have_changed() -> None:
    """A row is picked only when its token matches the confirmed hash, and never when it is
    deleted, has no cursor, appears twice in the chunk, is queued, holds a queued address or
    was confirmed by this run's import."""
    seen = {str(k): Seen(token("f", T, f"h{k}"), f"h{k}", f"e{k}", k) for k in range(1, 9)}
    seen["2"] = Seen(token("f", T, "old"), "h2", "e2", 2)  # made from another hash
    pending = Pending()
    pending.keys["4"] = None
    pending.emails["e5"] = "9"
    records = [_record(1), _record(2), _record(3, deleted=True), _record(4), _record(5),
               _record(6), _record(7, None), _record(8), _record(8), _record(10)]
    picked = candidates("f", records, seen, pending=pending,
                        sent_in_run=lambda import_id: import_id == 6)
    assert picked == {0}


def test_to_note_writes_only_tokens_that_changed() -> None:
    """Mapped rows get a token unless it is already stored; deleted, unmapped and cursorless
    rows get none."""
    seen = {"1": Seen(token("f", T, "h1"), "h1", "e1", None)}
    mapped = [Mapped(_record(1), digest="h1"), Mapped(_record(2), digest="h2"),
              Mapped(_record(3)), Mapped(_record(4, deleted=True), digest="h4"),
              Mapped(_record(5, None), digest="h5")]
    assert to_note("f", mapped, seen) == {"2": token("f", T, "h2")}
