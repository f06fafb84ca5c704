"""Settings of a pipeline's audience features: consent (opt-outs), custom events, reconcile.

These models hang off ``PipelineSettings`` (``consent``, ``events``, ``reconcile_every``); they
live here so that the core settings module stays small. The events source is any connector,
configured like the pipeline's own ``[pipelines.source]`` table.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sync_service.config_values import describe_errors as _describe
from sync_service.config_values import expand_env
from sync_service.connector import ConnectorSettings, load_connector
from sync_service.errors import ConfigError
from sync_service.units import parse_duration

DEFAULT_EVENTS_SHARE = 0.5


def _interval(value: str) -> str:
    if parse_duration(value) < 1:
        raise ValueError("must be at least 1s")
    return value


Interval = Annotated[str, AfterValidator(_interval)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConsentSettings(_Section):
    """``[pipelines.consent]``: which source column says a contact opted out."""

    unsubscribed: str = Field(description="source column; truthy = opted out, NULL = unknown")
    on_opt_out: Literal["unsubscribe", "skip"] = Field(
        "unsubscribe", description="unsubscribe: create and unsubscribe; skip: never create")


class EventsSettings(_Section):
    """``[pipelines.events]``: CRM activity rows sent as Mailtrap custom events, once each."""

    email: str = Field("email", description="column with the contact's address")
    name: str | None = Field(None, description="column holding the event name")
    name_value: str | None = Field(None, max_length=255, description="one fixed event name")
    params: list[str] = Field(default_factory=list, description="columns sent as params")
    budget_share: float = Field(
        DEFAULT_EVENTS_SHARE, gt=0, le=1,
        description="share of one window of the account's contacts budget that the events of "
                    "one run may use (the rest is left to imports)")
    max_per_run: int | None = Field(None, ge=1, description="cap on events sent per run "
                                                             "(default: from budget_share)")
    source: ConnectorSettings

    @field_validator("source", mode="before")
    @classmethod
    def _source(cls, value: Any) -> ConnectorSettings:
        return connector_settings(value, "events.source")

    @model_validator(mode="after")
    def _one_name(self) -> EventsSettings:
        if (self.name is None) == (self.name_value is None):
            raise ValueError("set `name` (a column) or `name_value` (a fixed name), not both "
                             "and not neither")
        return self

    def per_run(self, account_rate: tuple[int, float]) -> int:
        """How many events one run may send: ``max_per_run``, else the budget share."""
        if self.max_per_run is not None:
            return self.max_per_run
        return max(1, int(account_rate[0] * self.budget_share))


def connector_settings(value: Any, where: str) -> ConnectorSettings:
    """A connector table validated by its connector's own settings model."""
    if isinstance(value, ConnectorSettings):
        return value
    if not isinstance(value, dict) or "connector" not in value:
        raise ValueError("needs a table with a `connector` key (e.g. connector = \"sql\")")
    raw = {k: expand_env(v, f"{where}.{k}") if isinstance(v, str) else v
           for k, v in value.items()}
    try:
        factory = load_connector(str(raw["connector"]))
    except ConfigError as exc:
        raise ValueError(str(exc)) from exc
    try:
        return factory.settings_model.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(_describe(exc, prefix=where)) from exc
