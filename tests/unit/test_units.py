"""Typed units: durations and rates are parsed once, by the settings model, with clear errors."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import BaseModel, ValidationError

from sync_service.units import Duration, Rate, duration_parts, parse_duration, parse_rate


class _Model(BaseModel):
    wait: Duration = 1.0
    rate: Rate = Rate(1, 1.0)


@pytest.mark.parametrize(("given", "seconds"), [
    ("90s", 90.0), ("5m", 300.0), ("1h", 3600.0), ("1d", 86400.0), ("250ms", 0.25),
    (" 2 M ", 120.0), ("1.5h", 5400.0), ("30", 30.0), (45, 45.0), (0.5, 0.5),
    (timedelta(minutes=2), 120.0),
])
def test_a_duration_field_holds_seconds(given: object, seconds: float) -> None:
    """Text with a unit, plain numbers and timedeltas all load as float seconds."""
    assert _Model.model_validate({"wait": given}).wait == seconds
    assert parse_duration(given) == seconds  # type: ignore[arg-type]


@pytest.mark.parametrize(("given", "message"), [
    ("soon", "is not like 30s, 5m, 1h or 1d"), ("-5s", "is not like 30s"),
    (-1, "is negative"), (True, "is not like 30s"),
])
def test_a_bad_duration_names_the_value_and_the_accepted_forms(given: object,
                                                                message: str) -> None:
    """A value that is no duration is refused with the value and examples in the message."""
    with pytest.raises(ValidationError, match=message):
        _Model.model_validate({"wait": given})


def test_duration_parts_keep_whole_amounts_whole_and_the_unit_apart() -> None:
    """`300` is (300, None) and `1.5h` is (1.5, 'h'): a connector decides what a bare number is."""
    assert duration_parts("300") == (300, None)
    assert isinstance(duration_parts("300")[0], int)  # type: ignore[index]
    assert duration_parts("1.5H") == (1.5, "h")
    assert duration_parts("later") is None


def test_a_rate_field_parses_once_and_serialises_back_to_text() -> None:
    """`200/1m` loads as Rate(200, 60.0), unpacks as a pair, and dumps as `200/60s`."""
    model = _Model.model_validate({"rate": "200/1m"})
    assert model.rate == Rate(200, 60.0)
    requests, seconds = model.rate
    assert (requests, seconds) == (200, 60.0)
    assert model.model_dump()["rate"] == "200/60s"
    assert parse_rate(model.rate) is model.rate


@pytest.mark.parametrize("given", ["fast", "0/10s", "5/0s", "10"])
def test_a_bad_rate_is_refused(given: str) -> None:
    """A rate that is not N/T, or allows nothing, is refused naming the expected form."""
    with pytest.raises(ValidationError, match=r"N/Ts|at least 1 request"):
        _Model.model_validate({"rate": given})
