"""Small helpers for reading configuration values, shared by the settings modules: ``${VAR}``
expansion (secret-looking variables registered for redaction), one-line descriptions of pydantic
validation errors, and the validation of a connector table (a pipeline's ``source``, an events
``source``) by its connector's own settings model."""

from __future__ import annotations

import os
import re
from typing import Any

from pydantic import ValidationError

from sync_service.connector import ConnectorSettings, load_connector
from sync_service.errors import ConfigError
from sync_service.logging import SECRET_VARIABLE, register_secret, register_url

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

def expand_env(value: str, where: str) -> str:
    """Replace ``${VAR}`` with the environment's value; an unset variable names ``where``."""

    def _sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set (referenced in {where})")
        if SECRET_VARIABLE.search(name):
            register_secret(os.environ[name])
        return os.environ[name]

    return _VAR.sub(_sub, value)


def describe_errors(exc: ValidationError, *, raw: dict[str, Any] | None = None,
                    prefix: str = "") -> str:
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


def connector_settings(value: Any, where: str) -> ConnectorSettings:
    """A connector table validated by its connector's own settings model; ``${VAR}`` expanded,
    URLs and secret-looking values registered for redaction, errors prefixed with ``where``."""
    if isinstance(value, ConnectorSettings):
        return value
    if not isinstance(value, dict) or "connector" not in value:
        raise ValueError("needs a table with a `connector` key (e.g. connector = \"sql\")")
    raw = {k: expand_env(v, f"{where}.{k}") if isinstance(v, str) else v
           for k, v in value.items()}
    for key, item in raw.items():
        if isinstance(item, str) and "url" in key.lower():
            register_url(item)
        elif isinstance(item, str) and SECRET_VARIABLE.search(key):
            register_secret(item)
    try:
        factory = load_connector(str(raw["connector"]))
    except ConfigError as exc:
        raise ValueError(str(exc)) from exc
    try:
        return factory.settings_model.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(describe_errors(exc, prefix=where)) from exc
