"""Import batches: write-ahead recording, posting, atomic confirmation, failure, recovery."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from sync_service.errors import StateError
from sync_service.models import (
    BatchStatus,
    ChangeKind,
    ImportResult,
    Position,
    Rejection,
    RejectKind,
    StoredContact,
)
from sync_service.state import StateStore
from sync_service.state.tables import batch_contacts
from tests.unit.state.builders import confirm, entry, finished


def _rows_in_flight(store: StateStore) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(batch_contacts)).scalar())


def test_record_batch_writes_a_pending_batch_with_its_entries(
    store: StateStore, run_id: int
) -> None:
    """record_batch stores a PENDING batch and every entry, hash or not, before any post."""
    entries = [entry("1"), entry("2", digest=None, kind=ChangeKind.UNLIST)]
    batch_id = store.record_batch("p", run_id, entries)
    batch = store.get_batch(batch_id)
    assert (batch.status, batch.size, batch.attempts, batch.import_id) == (
        BatchStatus.PENDING, 2, 0, None)
    assert batch.created_at.tzinfo is not None
    got = {(e.source_key, e.email, e.kind, e.hash) for e in store.batch_entries(batch_id)}
    assert got == {("1", "1@example.com", ChangeKind.CREATE, "h1"),
                   ("2", "2@example.com", ChangeKind.UNLIST, None)}
    assert store.open_batches("p") == [batch]


def test_mark_batch_posted_records_the_import_and_counts_attempts(
    store: StateStore, run_id: int
) -> None:
    """mark_batch_posted sets POSTED, the import id and posted_at, and adds one attempt."""
    batch_id = store.record_batch("p", run_id, [entry("1")])
    store.mark_batch_posted(batch_id, 77)
    store.mark_batch_posted(batch_id, 78)
    batch = store.get_batch(batch_id)
    assert (batch.status, batch.import_id, batch.attempts) == (BatchStatus.POSTED, 78, 2)
    assert batch.posted_at is not None


def test_confirm_commits_hashes_watermark_and_closes_the_batch(
    store: StateStore, run_id: int
) -> None:
    """confirm_batch stores email+hash per key, moves the watermark, and closes the batch."""
    batch_id = store.record_batch("p", run_id, [entry("1"), entry("2", digest="h2")])
    store.mark_batch_posted(batch_id, 9)
    store.confirm_batch(batch_id, finished(9, created=2), Position(100, "2"))
    assert store.get_contacts("p", ["1", "2"]) == {
        "1": StoredContact("1", "1@example.com", "h1"),
        "2": StoredContact("2", "2@example.com", "h2"),
    }
    assert store.get_watermark("p") == Position(100, "2")
    batch = store.get_batch(batch_id)
    assert (batch.status, batch.created_count, batch.updated_count, batch.over_limit_count) == (
        BatchStatus.FINISHED, 2, 0, 0)
    assert batch.finished_at is not None
    assert store.open_batches("p") == []
    assert store.batch_entries(batch_id) == []
    assert _rows_in_flight(store) == 0


def test_confirm_updates_existing_contacts(store: StateStore, run_id: int) -> None:
    """A second confirmation of a key replaces its email and hash (the upsert path)."""
    confirm(store, run_id, [entry("1"), entry("2")], 1)
    confirm(store, run_id, [entry("1", "new@example.com", digest="h9")], 2)
    assert store.get_contacts("p", ["1", "2"]) == {
        "1": StoredContact("1", "new@example.com", "h9"),
        "2": StoredContact("2", "2@example.com", "h1"),
    }
    assert store.count_contacts("p") == 2


@pytest.fixture
def fail_on_watermark_write(store: StateStore) -> Iterator[None]:
    """Make the database refuse any statement that writes the watermarks table."""

    def refuse(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "watermarks" in statement and not statement.lstrip().upper().startswith("SELECT"):
            raise sa.exc.OperationalError(statement, None, Exception("disk I/O error"))

    sa.event.listen(store.engine, "before_cursor_execute", refuse)
    yield
    sa.event.remove(store.engine, "before_cursor_execute", refuse)


def test_confirm_is_all_or_nothing_when_the_watermark_write_fails(
    store: StateStore, run_id: int, request: pytest.FixtureRequest
) -> None:
    """A failure at the last step of confirm_batch leaves hashes, batch and watermark unchanged."""
    confirm(store, run_id, [entry("1")], 1)
    store.set_watermark("p", Position(1, "1"))
    store.record_rejections("p", run_id, [Rejection("2", "2@x.org", RejectKind.MAILTRAP, "bad")])
    batch_id = store.record_batch("p", run_id, [entry("1", digest="h2"), entry("2")])
    store.mark_batch_posted(batch_id, 2)
    request.getfixturevalue("fail_on_watermark_write")
    with pytest.raises(StateError, match="confirm_batch failed"):
        store.confirm_batch(batch_id, finished(2), Position(2, "2"))
    assert store.get_contacts("p", ["1", "2"]) == {"1": StoredContact("1", "1@example.com", "h1")}
    assert store.get_watermark("p") == Position(1, "1")
    assert store.get_batch(batch_id).status is BatchStatus.POSTED
    assert len(store.batch_entries(batch_id)) == 2
    assert store.count_rejections("p") == 1


def test_fail_batch_commits_no_hash_and_marks_its_keys_unknown(
        store: StateStore, run_id: int) -> None:
    """fail_batch closes the batch with its error and commits none of its hashes; since the
    import may have reached Mailtrap in part, its keys' state becomes ``unknown``, so their
    rows are sent again; other keys keep theirs. Abandoned (the id lost), a key with no state
    gets one at the batch's address; failed, it does not."""
    confirm(store, run_id, [entry("1"), entry("3")], 1)
    batch_id = store.record_batch("p", run_id, [entry("1", digest="h2"), entry("2")])
    store.mark_batch_posted(batch_id, 2)
    store.fail_batch(batch_id, "import 2 ended failed")
    assert store.get_contacts("p", ["1", "2", "3"]) == {
        "1": StoredContact("1", "1@example.com", "unknown"),
        "3": StoredContact("3", "3@example.com", "h1")}
    lost = store.record_batch("p", run_id, [entry("3", digest="h2"), entry("4")])
    store.fail_batch(lost, "never got an import id", status=BatchStatus.ABANDONED)
    assert store.get_contacts("p", ["3", "4"]) == {
        "3": StoredContact("3", "3@example.com", "unknown"),
        "4": StoredContact("4", "4@example.com", "unknown")}
    batch = store.get_batch(batch_id)
    assert (batch.status, batch.error) == (BatchStatus.FAILED, "import 2 ended failed")
    assert store.batch_entries(batch_id) == []


def test_abandoned_batches_leave_the_open_list(store: StateStore, run_id: int) -> None:
    """Recovery: PENDING and POSTED batches are open; abandoning one closes it as ABANDONED."""
    pending = store.record_batch("p", run_id, [entry("1")])
    posted = store.record_batch("p", run_id, [entry("2")])
    store.mark_batch_posted(posted, 5)
    store.record_batch("other", run_id, [entry("3")])
    assert [b.id for b in store.open_batches("p")] == [pending, posted]
    store.fail_batch(pending, "never got an import id", status=BatchStatus.ABANDONED)
    assert [b.id for b in store.open_batches("p")] == [posted]
    assert store.get_batch(pending).status is BatchStatus.ABANDONED
    assert store.last_batch("p") == store.get_batch(posted)
    assert store.last_batch("nothing") is None


def test_remove_from_batch_drops_entries_before_a_repost(store: StateStore, run_id: int) -> None:
    """remove_from_batch deletes the named emails and shrinks the size; confirm skips them."""
    batch_id = store.record_batch("p", run_id, [entry("1"), entry("2"), entry("3")])
    assert store.remove_from_batch(batch_id, ["2@example.com", "nobody@example.com"]) == 1
    assert store.get_batch(batch_id).size == 2
    store.mark_batch_posted(batch_id, 4)
    store.confirm_batch(batch_id, finished(4))
    assert set(store.get_contacts("p", ["1", "2", "3"])) == {"1", "3"}


def test_confirm_clears_rejections_of_confirmed_keys_only(store: StateStore, run_id: int) -> None:
    """Keys confirmed with a hash lose their rejection; others (removed ones) keep theirs."""
    store.record_rejections("p", run_id, [
        Rejection("1", "1@example.com", RejectKind.INVALID_VALUE, "age is not a number"),
        Rejection("2", "2@example.com", RejectKind.MAILTRAP, "blocked domain"),
    ])
    batch_id = store.record_batch("p", run_id, [entry("1"), entry("2")])
    store.remove_from_batch(batch_id, ["2@example.com"])
    store.mark_batch_posted(batch_id, 3)
    store.confirm_batch(batch_id, finished(3))
    assert [r.source_key for r in store.list_rejections("p")] == ["2"]


def test_email_change_moves_the_key_and_keeps_it(store: StateStore, run_id: int) -> None:
    """An email change (unlist old + hashed new entry) leaves the key at its new email."""
    confirm(store, run_id, [entry("1", "old@example.com")], 1)
    confirm(store, run_id, [
        entry("1", "old@example.com", digest=None, kind=ChangeKind.UNLIST),
        entry("1", "new@example.com", digest="h2", kind=ChangeKind.EMAIL_CHANGE),
    ], 2)
    assert store.get_contacts("p", ["1"]) == {"1": StoredContact("1", "new@example.com", "h2")}
    assert store.get_owners("p", ["old@example.com", "new@example.com"]) == {
        "new@example.com": "1"}


def test_unlisting_a_keys_confirmed_email_alone_forgets_the_key(
    store: StateStore, run_id: int
) -> None:
    """An exclusion-only entry at the key's email with no new hash drops the key's state."""
    confirm(store, run_id, [entry("1", "old@example.com"), entry("2")], 1)
    confirm(store, run_id, [
        entry("1", "old@example.com", digest=None, kind=ChangeKind.UNLIST),
        entry("2", "elsewhere@example.com", digest=None, kind=ChangeKind.UNLIST),
    ], 2)
    assert store.get_contacts("p", ["1", "2"]) == {"2": StoredContact("2", "2@example.com", "h1")}


def test_deleted_record_tombstone_is_stored_like_any_hash(store: StateStore, run_id: int) -> None:
    """A hashed UNLIST entry (the diff's tombstone for a deleted record) is stored as is."""
    confirm(store, run_id, [entry("1")], 1)
    confirm(store, run_id, [entry("1", digest="deleted", kind=ChangeKind.UNLIST)], 2)
    assert store.get_contacts("p", ["1"]) == {"1": StoredContact("1", "1@example.com", "deleted")}


@pytest.mark.parametrize("closing", [BatchStatus.FINISHED, BatchStatus.FAILED])
def test_closed_batches_cannot_be_confirmed_failed_or_changed(
    store: StateStore, run_id: int, closing: BatchStatus
) -> None:
    """A batch that is FINISHED or FAILED refuses confirm, fail, post and remove."""
    batch_id = store.record_batch("p", run_id, [entry("1")])
    store.mark_batch_posted(batch_id, 1)
    if closing is BatchStatus.FINISHED:
        store.confirm_batch(batch_id, finished(1))
    else:
        store.fail_batch(batch_id, "failed")
    with pytest.raises(StateError, match=f"already {closing.value}"):
        store.confirm_batch(batch_id, finished(1))
    with pytest.raises(StateError, match=f"already {closing.value}"):
        store.fail_batch(batch_id, "again")
    with pytest.raises(StateError, match=f"already {closing.value}"):
        store.mark_batch_posted(batch_id, 2)
    with pytest.raises(StateError, match=f"already {closing.value}"):
        store.remove_from_batch(batch_id, ["1@example.com"])


def test_confirm_refuses_another_import_or_an_unfinished_one(
    store: StateStore, run_id: int
) -> None:
    """The result must be the batch's own import, and finished; nothing is committed otherwise."""
    batch_id = store.record_batch("p", run_id, [entry("1")])
    store.mark_batch_posted(batch_id, 10)
    with pytest.raises(StateError, match="posted as import 10, not 11"):
        store.confirm_batch(batch_id, finished(11))
    with pytest.raises(ValueError, match="finished import"):
        store.confirm_batch(batch_id, ImportResult(id=10, status="failed"))
    assert store.count_contacts("p") == 0
    assert store.get_batch(batch_id).status is BatchStatus.POSTED


def test_unknown_batch_is_a_state_error(store: StateStore) -> None:
    """Operations on a batch id that does not exist raise StateError naming it."""
    with pytest.raises(StateError, match="no import batch with id 999"):
        store.mark_batch_posted(999, 1)
    with pytest.raises(StateError, match="no import batch with id 999"):
        store.get_batch(999)


def test_record_batch_refuses_duplicates(store: StateStore, run_id: int) -> None:
    """Two entries with one email, or two hashed entries for one key, are refused up front."""
    with pytest.raises(ValueError, match="appears twice"):
        store.record_batch("p", run_id, [entry("1", "a@x.org"), entry("2", "a@x.org")])
    with pytest.raises(ValueError, match="two hashed entries"):
        store.record_batch("p", run_id, [entry("1", "a@x.org"), entry("1", "b@x.org")])
    assert store.last_batch("p") is None


def test_fail_batch_takes_only_closing_statuses(store: StateStore, run_id: int) -> None:
    """fail_batch with FINISHED (or an open status) is a programming error."""
    batch_id = store.record_batch("p", run_id, [entry("1")])
    with pytest.raises(ValueError, match="FAILED or ABANDONED"):
        store.fail_batch(batch_id, "x", status=BatchStatus.FINISHED)


def test_record_batch_needs_an_existing_run(store: StateStore) -> None:
    """A batch for a run id that does not exist is refused by the foreign key."""
    with pytest.raises(StateError, match="record_batch failed"):
        store.record_batch("p", 12345, [entry("1")])


def test_fifty_thousand_entries_record_and_confirm(store: StateStore, run_id: int) -> None:
    """A full-size batch (50,000 entries) records and confirms completely and correctly."""
    confirm(store, run_id, [entry(str(i), digest="old") for i in range(0, 50_000, 2)], 1)
    entries = [entry(str(i), digest=f"h{i}") for i in range(50_000)]
    batch_id = store.record_batch("p", run_id, entries)
    assert store.get_batch(batch_id).size == 50_000
    assert len(store.batch_entries(batch_id)) == 50_000
    store.mark_batch_posted(batch_id, 2)
    store.confirm_batch(batch_id, finished(2, created=25_000, updated=25_000), Position(9, "x"))
    assert store.count_contacts("p") == 50_000
    keys = [str(i) for i in range(0, 50_000, 97)]
    assert {k: c.hash for k, c in store.get_contacts("p", keys).items()} == {
        k: f"h{k}" for k in keys}
    assert store.get_watermark("p") == Position(9, "x")
    assert _rows_in_flight(store) == 0
