"""Configuration: one TOML file read through pydantic-settings, with secrets from the environment.

Where the file is: ``--config PATH``, else ``$MAILTRAP_SYNC_CONFIG``, else ``./mailtrap-sync.toml``.
What overrides the file: ``MAILTRAP_ACCOUNT_ID``, ``MAILTRAP_API_URL``, ``MAILTRAP_SYNC_STATE_URL``
and ``MAILTRAP_SYNC_WEB_LISTEN``. The API token comes only from ``MAILTRAP_API_TOKEN``; a token
written in the file is refused. ``${VAR}`` inside the state URL and the source table is replaced by
the environment variable's value (an unset variable is an error naming it).

Every problem surfaces as one ``ConfigError`` that names the file, the pipeline and the key.

Parsing is strict: numbers, booleans and durations must be written as what they are (TOML's
``true`` is not the number 1, ``"1_5"`` is not 15). Secrets are registered for redaction as they
are read: the token, URL passwords and secret query parameters, and ``${VAR}`` values whose
variable name says they are secret (``*PASSWORD*``, ``*TOKEN*``, ``*SECRET*``, ``*KEY*``...).
The token must be a valid HTTP header value; one that is not is refused without being shown.
"""

from __future__ import annotations

import os
import re
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from sync_service.config_values import connector_settings
from sync_service.config_values import describe_errors as _describe
from sync_service.config_values import expand_env as expand_env  # noqa: PLC0414 - old home
from sync_service.connector import ConnectorSettings
from sync_service.errors import ConfigError
from sync_service.logging import register_secret, register_url
from sync_service.settings_audience import ConsentSettings, EventsSettings, Interval
from sync_service.units import Duration, Rate
from sync_service.units import parse_duration as parse_duration  # noqa: PLC0414 - old home
from sync_service.units import parse_rate as parse_rate  # noqa: PLC0414 - old home

DEFAULT_CONFIG = "mailtrap-sync.toml"
MAX_BATCH = 50_000
_ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "MAILTRAP_API_TOKEN": ("mailtrap", "api_token"),
    "MAILTRAP_ACCOUNT_ID": ("mailtrap", "account_id"),
    "MAILTRAP_API_URL": ("mailtrap", "api_url"),
    "MAILTRAP_SYNC_STATE_URL": ("state", "url"),
    "MAILTRAP_SYNC_WEB_LISTEN": ("web", "listen"),
}
# Visible ASCII: what an HTTP header value (RFC 9110 field-vchar) may carry in a Bearer token.
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+", re.ASCII)
_PIPELINE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_config_file: ContextVar[Path | None] = ContextVar("config_file", default=None)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)




class StateSettings(_Section):
    url: str = Field("sqlite:///mailtrap-sync.db", description="SQLAlchemy URL of the state store")
    retention: str = Field("90d", description="finished runs, their batches and the rejections "
                                              "of keys gone from the source older than this are "
                                              "pruned (db prune; the daemon every 6 h)")

    @field_validator("retention")
    @classmethod
    def _retention(cls, value: str) -> str:
        if parse_duration(value) < 3600:
            raise ValueError(f"retention {value!r} is shorter than 1h")
        return value

    @field_validator("url")
    @classmethod
    def _expand(cls, value: str) -> str:
        expanded = expand_env(value, "state.url")
        register_url(expanded)
        return expanded


class PacingSettings(_Section):
    account: Rate = Field(Rate(200, 60.0),
                          description="contacts API requests per window, per account (200/60s)")
    token: Rate = Field(Rate(150, 10.0), description="requests per window, per API token (150/10s)")


class MailtrapSettings(_Section):
    api_url: str = "https://mailtrap.io"
    account_id: StrictInt | None = Field(None, gt=0)
    api_token: SecretStr | None = None
    timeout: float = Field(30.0, gt=0, strict=True, allow_inf_nan=False,
                           description="seconds per HTTP request")
    poll_interval: float = Field(2.0, gt=0, strict=True, allow_inf_nan=False,
                                 description="first wait between import status polls")
    poll_max_interval: float = Field(30.0, gt=0, strict=True, allow_inf_nan=False,
                                     description="longest wait between polls")
    import_timeout: float = Field(7200.0, gt=0, strict=True, allow_inf_nan=False,
                                  description="give up waiting for one import")
    max_retries: int = Field(8, ge=0, strict=True,
                             description="retries of one request on 429/5xx/timeouts")
    unreachable_timeout: float = Field(
        60.0, gt=0, strict=True, allow_inf_nan=False,
        description="seconds a request keeps retrying while Mailtrap cannot be reached at all "
        "(connection refused, DNS, connect timeout) before the run fails naming the URL",
    )
    imports_in_flight: int = Field(
        2, ge=1, le=20, strict=True,
        description="batches posted and not yet confirmed at once: the run reads on while "
        "Mailtrap runs the older imports, and waits for the oldest once this many are out "
        "(1: each import is confirmed before the next batch is read)",
    )
    pacing: PacingSettings = PacingSettings()

    @field_validator("api_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        register_url(value)
        return value.rstrip("/")

    @field_validator("api_token")
    @classmethod
    def _header_safe(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        token = value.get_secret_value().strip()
        register_secret(token)
        if token and not _HEADER_SAFE.fullmatch(token):
            raise ValueError(f"MAILTRAP_API_TOKEN is not a valid HTTP header value: it contains "
                             f"{_unsafe(token)} (the value is not shown)")
        return SecretStr(token)


def _unsafe(token: str) -> str:
    """What makes a token unusable in a header, without showing any of it."""
    found = []
    if any(c in "\r\n" for c in token):
        found.append("a line break")
    if any(c.isspace() and c not in "\r\n" for c in token):
        found.append("white space")
    if any((ord(c) < 0x20 and not c.isspace()) or ord(c) == 0x7F for c in token):
        found.append("control characters")
    if not token.isascii():
        found.append("non-ASCII characters")
    return " and ".join(found) or "characters a header cannot carry"


FIELD_NAME_LIMIT = 50  # Mailtrap's documented limit for a field's name and merge tag
_MERGE_TAG = re.compile(rf"[A-Za-z0-9_]{{1,{FIELD_NAME_LIMIT}}}")


class FieldSpec(_Section):
    """A typed field: ``[pipelines.mapping.fields.<merge_tag>]``, created in Mailtrap if missing."""

    column: str = Field(min_length=1, description="source column")
    type: Literal["text", "integer", "float", "boolean", "date"] | None = Field(
        None, description="Mailtrap data type; a missing field is created with it (text when "
        "omitted), an existing field of another type is an error")
    name: str | None = Field(None, min_length=1, max_length=FIELD_NAME_LIMIT,
                             description="display name of a created field (default: merge tag)")


class MappingSettings(_Section):
    email: str = Field("email", description="source column holding the email address")
    fields: dict[str, str | FieldSpec] = Field(
        default_factory=dict,
        description="Mailtrap merge_tag = source column, or a table {column, type, name}",
    )

    @field_validator("fields")
    @classmethod
    def _merge_tags(cls, value: dict[str, str | FieldSpec]) -> dict[str, str | FieldSpec]:
        for tag in value:
            if not _MERGE_TAG.fullmatch(tag):
                raise ValueError(f"merge tag {tag!r} must be 1-{FIELD_NAME_LIMIT} letters, "
                                 "digits or underscores")
        return value

    @property
    def columns(self) -> dict[str, str]:
        """merge tag → source column, whichever form each field is written in."""
        return {tag: spec if isinstance(spec, str) else spec.column
                for tag, spec in self.fields.items()}

    @property
    def declared(self) -> dict[str, FieldSpec]:
        """The fields written as tables: merge tag → what to create when missing."""
        return {tag: spec for tag, spec in self.fields.items() if isinstance(spec, FieldSpec)}


class ListsByColumn(_Section):
    """List membership that follows the data: a column's value picks a list, and/or a boolean
    column per list."""

    column: str | None = Field(None, min_length=1, description="source column whose value "
                               "picks the list")
    values: dict[str, Annotated[str, Field(min_length=1)]] = Field(
        default_factory=dict, description="column value = list name (created if missing)")
    flags: dict[str, Annotated[str, Field(min_length=1)]] = Field(
        default_factory=dict, description="boolean source column = list name (a contact whose "
        "column is true is on the list)")

    @model_validator(mode="after")
    def _complete(self) -> ListsByColumn:
        if (self.column is None) != (not self.values):
            raise ValueError("`column` and `values` go together")
        if self.column is None and not self.flags:
            raise ValueError("set `column` and `values`, or `flags`")
        return self

    @property
    def names(self) -> list[str]:
        """Every list these rules manage, in a stable order."""
        return list(dict.fromkeys([*self.values.values(), *self.flags.values()]))

    @property
    def source_columns(self) -> list[str]:
        return ([self.column] if self.column else []) + list(self.flags)


class PipelineSettings(_Section):
    name: str
    lists: list[Annotated[str, Field(min_length=1)] | Annotated[StrictInt, Field(gt=0)]] = Field(
        default_factory=list, description="list names (created if missing) or ids"
    )
    batch_size: int = Field(MAX_BATCH, ge=1, le=MAX_BATCH, strict=True)
    source: ConnectorSettings
    mapping: MappingSettings = MappingSettings()
    lists_by_column: ListsByColumn | None = None
    on_delete: Literal["remove_from_lists", "delete", "ignore"] = Field(
        "remove_from_lists", description="what a key gone from the source does to its contact")
    delete_scan_every: int = Field(24, ge=1, strict=True,
                                   description="runs between key scans for hard deletes")
    max_delete_share: float = Field(0.2, gt=0, le=1, strict=True, allow_inf_nan=False,
                                    description="the mass-delete brake: largest share of the "
                                    "tracked contacts one run may remove")
    max_delete_count: int | None = Field(None, ge=0, strict=True,
                                         description="the brake's largest count, when set")
    schedule: str | None = Field(None, description="cron expression for `run`")
    every: Duration | None = Field(None, description="interval for `run`, e.g. 10m")
    consent: ConsentSettings | None = None  # consent branch: opt-outs (settings_audience)
    events: EventsSettings | None = None  # consent branch: custom events (settings_audience)
    reconcile_every: Interval | None = Field(None, description="daemon: reconcile, e.g. 1d")
    skip_rereads: bool = Field(
        True, strict=True, description="a sync accepts a row read again at the cursor value its "
        "confirmed contact was made from without mapping it; turn off when the cursor can keep "
        "its value across edits (a date, or whole seconds with rows edited twice a second)")

    @field_validator("every")
    @classmethod
    def _every(cls, value: float | None) -> float | None:
        if value is not None and value < 1:
            raise ValueError("must be at least 1s")
        return value

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            from sync_service.crontab import crontab_trigger  # noqa: PLC0415 - only if used

            try:
                crontab_trigger(value)
            except ValueError as exc:
                raise ValueError(f"not a cron expression ({exc})") from exc
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _PIPELINE_NAME.match(value):
            raise ValueError("must be 1-64 letters, digits, '_', '.' or '-', starting alnum")
        return value

    @field_validator("source", mode="before")
    @classmethod
    def _source(cls, value: Any) -> ConnectorSettings:
        return connector_settings(value, "source")

    @model_validator(mode="after")
    def _one_schedule(self) -> PipelineSettings:
        if self.schedule and self.every:
            raise ValueError("set `schedule` or `every`, not both")
        return self


class WebSettings(_Section):
    listen: str = Field("127.0.0.1:9108", description="address of /healthz, /readyz, /metrics")
    enabled: bool = Field(True, strict=True)


class DaemonSettings(_Section):
    """How `mailtrap-sync run` schedules pipelines."""

    every: Duration = Field(900.0, description="interval of pipelines with no schedule of their "
                                               "own (15m)")
    jitter: Duration | None = Field(None, description="random delay per run (default: 10% of the "
                                                      "interval, at most 30s)")
    misfire_grace: Duration = Field(300.0, description="a run late by more than this is skipped "
                                                       "(5m)")
    grace_period: Duration = Field(30.0, description="time to finish the current step on SIGTERM")
    failure_threshold: int = Field(3, ge=1, strict=True,
                                   description="failures in a row before backing off")
    failure_backoff: Duration = Field(300.0, description="first pause after the threshold; "
                                                         "doubles (5m)")
    failure_backoff_max: Duration = Field(3600.0, description="longest pause (1h)")


class _StrictToml(TomlConfigSettingsSource):
    """The TOML source, refusing secrets written into the file."""

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        if isinstance(data.get("mailtrap"), dict) and "api_token" in data["mailtrap"]:
            raise ConfigError(
                f"{_config_file.get()}: mailtrap.api_token: secrets are not read from the file; "
                "set MAILTRAP_API_TOKEN in the environment"
            )
        return data


class _EnvOverrides(PydanticBaseSettingsSource):
    """The few documented environment variables, mapped onto the nested settings."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for env, (section, key) in _ENV_OVERRIDES.items():
            value = os.environ.get(env)
            if value not in (None, ""):
                found.setdefault(section, {})[key] = _env_value(key, value)
        return found


def _env_value(key: str, value: str | None) -> Any:
    """Environment variables are text; the account id is a number written in ASCII digits."""
    if key == "account_id" and value is not None and re.fullmatch(r"[0-9]{1,18}", value.strip()):
        return int(value)
    return value


class AppSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    lease_ttl: Duration = Field(
        60.0, description="how long a pipeline's lease outlives a process killed while holding it"
    )
    state: StateSettings = StateSettings()
    mailtrap: MailtrapSettings = MailtrapSettings()
    web: WebSettings = WebSettings()
    daemon: DaemonSettings = DaemonSettings()
    pipelines: list[PipelineSettings] = Field(default_factory=list)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = _config_file.get()
        sources: list[PydanticBaseSettingsSource] = [init_settings, _EnvOverrides(settings_cls)]
        if path is not None:
            sources.append(_StrictToml(settings_cls, toml_file=path))
        return tuple(sources)

    @field_validator("lease_ttl")
    @classmethod
    def _lease_ttl(cls, value: float) -> float:
        if value < 1:
            raise ValueError("must be at least 1s")
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> AppSettings:
        seen: set[str] = set()
        for pipeline in self.pipelines:
            if pipeline.name in seen:
                raise ValueError(f"pipeline name {pipeline.name!r} is used twice")
            seen.add(pipeline.name)
        return self

    def pipeline(self, name: str) -> PipelineSettings:
        for pipeline in self.pipelines:
            if pipeline.name == name:
                return pipeline
        known = ", ".join(p.name for p in self.pipelines) or "none configured"
        raise ConfigError(f"no pipeline named {name!r} (configured: {known})")


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("MAILTRAP_SYNC_CONFIG") or DEFAULT_CONFIG)


def load_settings(path: str | os.PathLike[str] | None = None) -> AppSettings:
    """Read and validate the configuration; raise one ConfigError naming file, pipeline and key."""
    file = config_path(path)
    if not file.is_file():
        raise ConfigError(f"{file}: configuration file not found (use --config or "
                          "MAILTRAP_SYNC_CONFIG)")
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from exc
    token = _config_file.set(file)
    try:
        return AppSettings()
    except ValidationError as exc:
        raise ConfigError(f"{file}: {_describe(exc, raw=raw)}") from exc
    finally:
        _config_file.reset(token)


