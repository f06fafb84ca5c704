"""Small helpers for reading configuration values, shared by the settings modules: ``${VAR}``
expansion (secret-looking variables registered for redaction) and one-line descriptions of
pydantic validation errors."""

from __future__ import annotations

import os
import re
from typing import Any

from pydantic import ValidationError

from sync_service.logging import SECRET_VARIABLE, register_secret

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
