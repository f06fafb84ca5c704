"""Checks a run makes before it changes anything, and that ``check`` makes too.

A run must fail on a broken configuration before it creates a list in Mailtrap or reads a row:
the connector's own ``check()`` (connection, table or query, cursor, lookback), then what the
mapping needs of the source (``check_mapped_columns``). Connectors that can say which columns
their records hold offer ``columns()``; for others the job checks the first record it reads.
"""

from __future__ import annotations

from collections.abc import Callable

from sync_service.connector import Connector
from sync_service.errors import ConfigError
from sync_service.settings import PipelineSettings


def check_mapped_columns(pipeline: PipelineSettings, connector: Connector) -> None:
    """Every column the mapping names must be one the source returns (ConfigError naming them)."""
    columns: Callable[[], tuple[str, ...]] | None = getattr(connector, "columns", None)
    if columns is None:
        return
    available = columns()
    mapping = pipeline.mapping
    wanted = [("mapping.email", mapping.email),
              *((f"mapping.fields.{tag}", column) for tag, column in mapping.columns.items()),
              *(("lists_by_column", column) for column in (
                  pipeline.lists_by_column.source_columns if pipeline.lists_by_column else ()))]
    missing = [f"{column} ({setting})" for setting, column in wanted if column not in available]
    if missing:
        raise ConfigError(
            f"pipeline {pipeline.name}: the mapping names source columns the source does not "
            f"return: {', '.join(missing)}; it returns: {', '.join(available)}"
        )
