"""What a finished import accounts for, and when that is too few to confirm it (pure)."""

from __future__ import annotations

from sync_service.delivery_plan import accounted, unaccounted
from sync_service.models import ImportResult


def _finished(created: int | None, updated: int | None, over: int | None = 0) -> ImportResult:
    return ImportResult(id=7, status="finished", created_contacts_count=created,
                        updated_contacts_count=updated, contacts_over_limit_count=over)


def test_created_updated_and_over_the_limit_all_count() -> None:
    """Created + updated + over the limit is what an import accounts for."""
    assert accounted(_finished(60, 30, 10)) == 100
    assert unaccounted(_finished(60, 30, 10), 100) is None


def test_fewer_than_sent_is_a_reason_not_to_confirm() -> None:
    """An import accounting for 95 of 100 contacts gets a reason naming the 5 missing."""
    reason = unaccounted(_finished(60, 35), 100)
    assert reason is not None
    assert "= 95 of 100 contacts sent: 5 are unaccounted for" in reason


def test_counts_not_given_are_not_checked() -> None:
    """Without created/updated counts nothing can be checked: no reason, nothing accounted."""
    assert accounted(_finished(None, 3)) is None
    assert unaccounted(_finished(None, None), 100) is None


def test_more_than_sent_is_accepted() -> None:
    """Mailtrap counting a contact twice still accounts for every one sent."""
    assert unaccounted(_finished(101, 0), 100) is None
