"""The delivery planner: what the courier does after each answer of Mailtrap, decided purely."""

from __future__ import annotations

from sync_service.delivery_plan import (
    MAX_IMPORT_FAILURES,
    GiveUp,
    Plan,
    failed_import_plan,
    refusal_budget,
    refusal_plan,
    result_plan,
    unattributed_plan,
)
from sync_service.models import ChangeKind, ImportEntry, ImportResult, RejectKind


def _entry(key: str, email: str, kind: ChangeKind = ChangeKind.CREATE) -> ImportEntry:
    hash_ = None if kind is ChangeKind.UNLIST else f"h-{key}-{email}"
    return ImportEntry(key, email, kind, hash=hash_)


PART = (_entry("1", "a@x.io"), _entry("2", "b@x.io"), _entry("3", "c@x.io"),
        _entry("4", "d@x.io"))


def test_422_naming_a_contact_rejects_its_key_and_posts_the_rest_again() -> None:
    """A 422 naming one contact records its key with Mailtrap's reason and retries the rest."""
    plan = refusal_plan(PART, {"b@x.io": ["is blocked"]}, {"errors": []}, "422")
    assert plan.retry == (PART[0], PART[2], PART[3])
    assert plan.removed == ("b@x.io",)
    assert [(r.source_key, r.email, r.kind, r.reason, r.hash) for r in plan.rejections] == [
        ("2", "b@x.io", RejectKind.MAILTRAP, "is blocked", "h-2-b@x.io")]
    assert plan.reasons == ("is blocked",)
    assert plan.give_up is None
    assert not plan.unattributed
    assert plan.batch_failure is None


def test_422_naming_an_email_change_takes_out_every_entry_of_its_key() -> None:
    """A 422 naming the new address of an email change rejects the key's unlist entry too."""
    part = (_entry("1", "a@x.io"), _entry("2", "old@x.io", ChangeKind.UNLIST),
            _entry("2", "new@x.io", ChangeKind.EMAIL_CHANGE))
    plan = refusal_plan(part, {"new@x.io": ["bad domain"]}, None, "422")
    assert plan.retry == (part[0],)
    assert plan.removed == ("old@x.io", "new@x.io")
    (rejection,) = plan.rejections
    assert rejection.email == "new@x.io"
    assert rejection.hash == "h-2-new@x.io"
    assert rejection.reason == "bad domain"


def test_422_naming_the_unlisted_address_says_the_new_one_was_not_sent_either() -> None:
    """A 422 naming only a key's unlist entry records both what failed and what was held back."""
    part = (_entry("2", "old@x.io", ChangeKind.UNLIST),
            _entry("2", "new@x.io", ChangeKind.EMAIL_CHANGE))
    plan = refusal_plan(part, {"old@x.io": ["locked"]}, None, "422")
    assert plan.retry == ()
    (rejection,) = plan.rejections
    assert rejection.reason == ("taking old@x.io out of the lists: locked; "
                                "so new@x.io was not sent either")


def test_422_names_are_matched_as_mailtrap_spells_them_after_normalising() -> None:
    """A 422 naming an address in another case still rejects the entry sent for it."""
    plan = refusal_plan(PART, {"C@X.IO": ["nope"], "zz@x.io": ["other"]}, None, "422")
    assert [r.source_key for r in plan.rejections] == ["3"]
    assert plan.retry == (PART[0], PART[1], PART[3])


def test_422_naming_nobody_of_the_part_is_unattributed() -> None:
    """A 422 whose names are none of the part's (or unparseable) leaves the part for isolation."""
    plan = refusal_plan(PART, {"not an email": ["bad"], "z@x.io": ["bad"]}, {"e": 1}, "refused")
    assert plan.unattributed
    assert plan.retry == PART
    assert plan.message == "refused"
    assert plan.rejections == ()
    assert plan.give_up is None


def test_422_naming_contacts_only_for_the_quota_stops_the_run() -> None:
    """A 422 whose every named reason is the contact limit gives up on the whole part."""
    plan = refusal_plan(PART, {"a@x.io": ["Contacts limit reached"],
                               "b@x.io": ["limit of contacts exceeded"]}, None, "422")
    assert plan.give_up is GiveUp.IMPORT_FAILED
    assert plan.over_limit == 4
    assert plan.batch_failure == plan.message == (
        "Mailtrap's contact quota is full (422: Contacts limit reached); nothing of this batch "
        "is confirmed, and it is sent again when there is room")
    assert plan.rejections == ()
    assert plan.retry == ()


def test_422_mixing_quota_and_other_reasons_rejects_the_named_contacts() -> None:
    """A 422 with one quota reason among others rejects its named contacts, not the whole part."""
    plan = refusal_plan(PART, {"a@x.io": ["Contacts limit reached"], "b@x.io": ["blocked"]},
                        None, "422")
    assert plan.give_up is None
    assert sorted(r.source_key for r in plan.rejections) == ["1", "2"]


def test_422_naming_nobody_with_a_quota_body_stops_the_run() -> None:
    """A 422 naming no contact whose body speaks of the contact limit gives up on the part."""
    plan = refusal_plan(PART[:2], {}, {"errors": "account contacts limit exceeded"}, "422")
    assert plan.give_up is GiveUp.IMPORT_FAILED
    assert plan.over_limit == 2
    assert plan.message.startswith("Mailtrap's contact quota is full (422: {'errors'")


def test_unattributed_refusal_splits_the_part_in_halves_by_key() -> None:
    """A part refused as a whole is posted again in two halves, a key's entries kept together."""
    part = (_entry("1", "a@x.io"), _entry("2", "old@x.io", ChangeKind.UNLIST),
            _entry("2", "new@x.io", ChangeKind.EMAIL_CHANGE), _entry("3", "c@x.io"))
    plan = unattributed_plan(part, "bad", refusals=1, budget=6)
    assert plan.parts == ((part[0],), (part[1], part[2], part[3]))
    assert plan.batch_failure == "refused without naming a contact: bad"
    assert plan.rejections == ()
    assert plan.give_up is None


def test_unattributed_refusal_of_a_lone_key_rejects_it_with_the_message() -> None:
    """A single key refused as a whole is recorded as rejected with Mailtrap's message."""
    part = (_entry("7", "old@x.io", ChangeKind.UNLIST),
            _entry("7", "new@x.io", ChangeKind.EMAIL_CHANGE))
    plan = unattributed_plan(part, "bad", refusals=3, budget=6)
    assert plan.parts == ()
    assert plan.give_up is None
    (rejection,) = plan.rejections
    assert (rejection.source_key, rejection.email, rejection.hash) == ("7", "new@x.io",
                                                                       "h-7-new@x.io")
    assert rejection.reason == "taking old@x.io out of the lists: bad; bad"


def test_unattributed_refusals_past_the_budget_stop_the_run() -> None:
    """One refusal more than the budget gives up, still recording the batch as refused."""
    assert unattributed_plan(PART, "bad", refusals=6, budget=6).give_up is None
    plan = unattributed_plan(PART, "bad", refusals=7, budget=6)
    assert plan.give_up is GiveUp.REFUSED
    assert plan.parts == ()
    assert plan.rejections == ()
    assert plan.message == "Mailtrap keeps refusing imports without naming a contact: bad"
    assert plan.batch_failure == "refused without naming a contact: bad"


def test_refusal_budget_grows_with_the_log_of_the_batch() -> None:
    """The budget of unattributed refusals is enough to bisect down to one key, twice, plus 2."""
    assert [refusal_budget(n) for n in (1, 2, 3, 4, 500)] == [4, 6, 6, 8, 20]


def test_finished_import_within_the_quota_is_confirmed() -> None:
    """An import that finished with nothing over the limit is to be committed."""
    assert result_plan(ImportResult(5, "finished", 2, 1, 0)) == Plan(confirm=True)
    assert result_plan(ImportResult(5, "finished")) == Plan(confirm=True)


def test_import_over_the_quota_stops_the_run() -> None:
    """An import that left contacts over the limit commits nothing and gives up."""
    plan = result_plan(ImportResult(5, "finished", 1, 0, 3))
    assert not plan.confirm
    assert plan.give_up is GiveUp.IMPORT_FAILED
    assert plan.over_limit == 3
    assert plan.message == plan.batch_failure == (
        "Mailtrap's contact quota is full: 3 contacts were not stored (import 5); nothing of "
        "this batch is confirmed")


def test_failed_import_is_recorded_without_giving_up() -> None:
    """An import that ended failed is recorded on the batch; the retry plan comes next."""
    plan = result_plan(ImportResult(9, "failed"))
    assert plan == Plan(batch_failure="import 9 ended failed")


def test_first_failed_import_posts_the_part_again_whole() -> None:
    """After the first failure the same part is posted again as it was."""
    assert failed_import_plan(PART, 9, 1) == Plan(parts=(PART,))


def test_later_failed_imports_post_the_part_in_halves() -> None:
    """From the second failure on, the part is posted again in two halves."""
    assert failed_import_plan(PART, 9, 2) == Plan(parts=(PART[:2], PART[2:]))
    assert failed_import_plan(PART[:3], 9, 3) == Plan(parts=(PART[:1], PART[1:3]))


def test_a_failed_single_entry_is_posted_again_whole() -> None:
    """A part of one entry cannot be halved, so it is posted again as it was."""
    assert failed_import_plan(PART[:1], 9, 2) == Plan(parts=(PART[:1],))


def test_failed_imports_stop_the_run_at_the_maximum() -> None:
    """The MAX_IMPORT_FAILURES-th failure gives up, naming the import and its size."""
    plan = failed_import_plan(PART, 9, MAX_IMPORT_FAILURES)
    assert plan.give_up is GiveUp.IMPORT_FAILED
    assert plan.parts == ()
    assert plan.message == (f"import 9 failed {MAX_IMPORT_FAILURES} times; its 4 contacts "
                            "will be sent again on the next run")
