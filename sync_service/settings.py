"""Configuration: one TOML file read through pydantic-settings, with secrets from the environment.

Where the file is: ``--config PATH``, else ``$MAILTRAP_SYNC_CONFIG``, else ``./mailtrap-sync.toml``.
What overrides the file: ``MAILTRAP_ACCOUNT_ID``, ``MAILTRAP_API_URL``, ``MAILTRAP_SYNC_STATE_URL``
and ``MAILTRAP_SYNC_WEB_LISTEN``. The API token comes only from ``MAILTRAP_API_TOKEN``; a token
written in the file is refused. ``${VAR}`` inside the state URL and the source table is replaced by
the environment variable's value (an unset variable is an error naming it).

Every problem surfaces as one ``ConfigError`` that names the file, the pipeline and the key.
"""

from __future__ import annotations

import os
import re
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
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

from sync_service.connector import ConnectorSettings, load_connector
from sync_service.errors import ConfigError
from sync_service.settings_audience import ConsentSettings, EventsSettings, Interval

DEFAULT_CONFIG = "mailtrap-sync.toml"
MAX_BATCH = 50_000
_ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "MAILTRAP_API_TOKEN": ("mailtrap", "api_token"),
    "MAILTRAP_ACCOUNT_ID": ("mailtrap", "account_id"),
    "MAILTRAP_API_URL": ("mailtrap", "api_url"),
    "MAILTRAP_SYNC_STATE_URL": ("state", "url"),
    "MAILTRAP_SYNC_WEB_LISTEN": ("web", "listen"),
}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PIPELINE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_config_file: ContextVar[Path | None] = ContextVar("config_file", default=None)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def expand_env(value: str, where: str) -> str:
    """Replace ``${VAR}`` with the environment's value; an unset variable names ``where``."""

    def _sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set (referenced in {where})")
        return os.environ[name]

    return _VAR.sub(_sub, value)


def parse_rate(text: str) -> tuple[int, float]:
    """``"200/60s"`` → (200 requests, 60.0 seconds)."""
    match = _RATE.match(text)
    if not match:
        raise ValueError(f"rate {text!r} is not of the form N/Ts (e.g. 200/60s)")
    count, span, unit = int(match.group(1)), float(match.group(2)), match.group(3) or "s"
    seconds = span * {"s": 1, "m": 60, "h": 3600}[unit]
    if count < 1 or seconds <= 0:
        raise ValueError(f"rate {text!r} must allow at least 1 request in a positive time")
    return count, seconds


def parse_duration(value: str | float) -> float:
    """``"90s"``, ``"5m"``, ``"1h"``, ``"1d"``, ``"250ms"`` or plain seconds → seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"duration {value!r} is not like 30s, 5m, 1h or 1d")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]
    if seconds < 0:
        raise ValueError(f"duration {value!r} is negative")
    return seconds


class StateSettings(_Section):
    url: str = Field("sqlite:///mailtrap-sync.db", description="SQLAlchemy URL of the state store")

    @field_validator("url")
    @classmethod
    def _expand(cls, value: str) -> str:
        return expand_env(value, "state.url")


class PacingSettings(_Section):
    account: str = Field("200/60s", description="contacts API requests per window, per account")
    token: str = Field("150/10s", description="requests per window, per API token")

    @field_validator("account", "token")
    @classmethod
    def _valid_rate(cls, value: str) -> str:
        parse_rate(value)
        return value


class MailtrapSettings(_Section):
    api_url: str = "https://mailtrap.io"
    account_id: int | None = Field(None, gt=0)
    api_token: SecretStr | None = None
    timeout: float = Field(30.0, gt=0, description="seconds per HTTP request")
    poll_interval: float = Field(2.0, gt=0, description="first wait between import status polls")
    poll_max_interval: float = Field(30.0, gt=0, description="longest wait between polls")
    import_timeout: float = Field(7200.0, gt=0, description="give up waiting for one import")
    max_retries: int = Field(8, ge=0, description="retries of one request on 429/5xx/timeouts")
    pacing: PacingSettings = PacingSettings()

    @field_validator("api_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")


class MappingSettings(_Section):
    email: str = Field("email", description="source column holding the email address")
    fields: dict[str, str] = Field(
        default_factory=dict, description="Mailtrap merge_tag = source column"
    )

    @field_validator("fields")
    @classmethod
    def _merge_tags(cls, value: dict[str, str]) -> dict[str, str]:
        for tag in value:
            if not re.fullmatch(r"[A-Za-z0-9_]{1,50}", tag):
                raise ValueError(f"merge tag {tag!r} must be 1-50 letters, digits or underscores")
        return value


class PipelineSettings(_Section):
    name: str
    lists: list[Annotated[str, Field(min_length=1)] | Annotated[int, Field(gt=0)]] = Field(
        default_factory=list, description="list names (created if missing) or ids"
    )
    batch_size: int = Field(MAX_BATCH, ge=1, le=MAX_BATCH)
    source: ConnectorSettings
    mapping: MappingSettings = MappingSettings()
    schedule: str | None = Field(None, description="cron expression for `run`")
    every: str | None = Field(None, description="interval for `run`, e.g. 10m")
    consent: ConsentSettings | None = None  # consent branch: opt-outs (settings_audience)
    events: EventsSettings | None = None  # consent branch: custom events (settings_audience)
    reconcile_every: Interval | None = Field(None, description="daemon: reconcile, e.g. 1d")

    @field_validator("every")
    @classmethod
    def _every(cls, value: str | None) -> str | None:
        if value is not None and parse_duration(value) < 1:
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
        if isinstance(value, ConnectorSettings):
            return value
        if not isinstance(value, dict) or "connector" not in value:
            raise ValueError("needs a table with a `connector` key (e.g. connector = \"sql\")")
        raw = {k: expand_env(v, f"source.{k}") if isinstance(v, str) else v
               for k, v in value.items()}
        try:
            factory = load_connector(str(raw["connector"]))
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        try:
            return factory.settings_model.model_validate(raw)
        except ValidationError as exc:
            raise ValueError(_describe(exc, prefix="source")) from exc

    @model_validator(mode="after")
    def _one_schedule(self) -> PipelineSettings:
        if self.schedule and self.every:
            raise ValueError("set `schedule` or `every`, not both")
        return self


class WebSettings(_Section):
    listen: str = Field("127.0.0.1:9108", description="address of /healthz, /readyz, /metrics")
    enabled: bool = True


class DaemonSettings(_Section):
    """How `mailtrap-sync run` schedules pipelines."""

    every: str = Field("15m", description="interval of pipelines with no schedule of their own")
    jitter: str | None = Field(None, description="random delay per run (default: 10% of the "
                                                 "interval, at most 30s)")
    misfire_grace: str = Field("5m", description="a run late by more than this is skipped")
    grace_period: str = Field("30s", description="time to finish the current step on SIGTERM")
    failure_threshold: int = Field(3, ge=1, description="failures in a row before backing off")
    failure_backoff: str = Field("5m", description="first pause after the threshold; doubles")
    failure_backoff_max: str = Field("1h")

    @field_validator("every", "jitter", "misfire_grace", "grace_period", "failure_backoff",
                     "failure_backoff_max")
    @classmethod
    def _durations(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value


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
                found.setdefault(section, {})[key] = value
        return found


class AppSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    lease_ttl: str | float = Field(
        "60s", description="how long a pipeline's lease outlives a process killed while holding it"
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
    def _lease_ttl(cls, value: str | float) -> str | float:
        if parse_duration(value) < 1:
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


def _describe(exc: ValidationError, *, raw: dict[str, Any] | None = None, prefix: str = "") -> str:
    """One line per problem: ``pipelines[0] (customers): source.table: Field required``."""
    lines = []
    for error in exc.errors():
        loc = [str(p) for p in error["loc"]]
        where = ".".join(([prefix] if prefix else []) + loc)
        if raw is not None and len(loc) >= 2 and loc[0] == "pipelines" and loc[1].isdigit():
            index = int(loc[1])
            pipelines = raw.get("pipelines") or []
            name = pipelines[index].get("name", "?") if index < len(pipelines) else "?"
            rest = ".".join(loc[2:])
            where = f"pipelines[{index}] ({name})" + (f": {rest}" if rest else "")
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"{where}: {message}" if where else message)
    return "; ".join(lines)
