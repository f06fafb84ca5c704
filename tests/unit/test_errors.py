"""The error hierarchy: every error sits in exactly one reaction group, old import paths work."""

from __future__ import annotations

import inspect

import pytest

from sync_service import delivery, errors, mapping
from sync_service.mailtrap import client

GROUPS = (errors.ConfigError, errors.RetriableError, errors.FatalError, errors.RecordError,
          errors.Stopped)


def _project_errors() -> list[type[errors.SyncError]]:
    return [cls for _, cls in inspect.getmembers(errors, inspect.isclass)
            if issubclass(cls, errors.SyncError) and cls.__module__ == errors.__name__
            and cls not in (errors.SyncError, errors.MailtrapError, *GROUPS)]


@pytest.mark.parametrize("cls", _project_errors(), ids=lambda cls: cls.__name__)
def test_every_error_belongs_to_exactly_one_reaction_group(cls: type[errors.SyncError]) -> None:
    """Each error subclasses one of the five reaction groups, never two."""
    groups = [group.__name__ for group in GROUPS if issubclass(cls, group)]
    assert len(groups) == 1, f"{cls.__name__} is in {groups or 'no group'}"


def test_mailtrap_error_is_an_origin_never_raised_itself() -> None:
    """MailtrapError only says where an error came from; the package never raises it bare."""
    from pathlib import Path

    package = Path(errors.__file__).parent
    bare = [str(p) for p in package.rglob("*.py") if "raise MailtrapError(" in p.read_text()]
    assert bare == []


def test_the_errors_of_the_issue_have_their_groups() -> None:
    """Stops are Stopped, a failed import fails the run, 404 is fatal, a 422 rejects records."""
    assert issubclass(errors.Interrupted, errors.Stopped)
    assert issubclass(errors.MailtrapCancelled, errors.Stopped)
    assert issubclass(errors.ImportFailed, errors.FatalError)
    assert issubclass(errors.MappingRejected, errors.RecordError)
    assert issubclass(errors.MailtrapNotFound, errors.FatalError)
    assert issubclass(errors.MailtrapValidationError, errors.RecordError)
    assert issubclass(errors.PipelineBusy, errors.RetriableError)


def test_moved_errors_are_still_importable_from_their_old_modules() -> None:
    """delivery, mapping and mailtrap.client re-export the errors that used to live there."""
    assert delivery.Interrupted is errors.Interrupted
    assert delivery.ImportFailed is errors.ImportFailed
    assert mapping.MappingRejected is errors.MappingRejected
    assert client.MailtrapCancelled is errors.MailtrapCancelled


def test_a_validation_error_keeps_its_message_as_the_reason_and_its_contacts() -> None:
    """MailtrapValidationError carries status, contact errors and (as a RecordError) a reason."""
    exc = errors.MailtrapValidationError("bad", contact_errors={"a@x.io": ["invalid"]})
    assert (exc.status, exc.reason, exc.field) == (422, "bad", None)
    assert exc.contact_errors == {"a@x.io": ["invalid"]}
    assert str(exc) == "bad"
