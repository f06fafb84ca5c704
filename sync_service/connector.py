"""The connector extension point: a small protocol, a settings model per connector, and the
registry that finds connectors through the ``sync_service.connectors`` entry-point group.

A connector knows only its source. It yields ``SourceRecord``s in (cursor, key) order, strictly
after ``since`` (minus its own lookback window, if it has one), and knows nothing of Mailtrap,
hashes or the state store. A third-party package adds a connector by declaring::

    [project.entry-points."sync_service.connectors"]
    mycrm = "my_package.module:MyConnector"
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from importlib.metadata import entry_points
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from sync_service.errors import ConfigError, SourceError
from sync_service.models import Position, SourceRecord

ENTRY_POINT_GROUP = "sync_service.connectors"


class ConnectorSettings(BaseModel):
    """Base of every connector's settings (the pipeline's ``[pipelines.source]`` table)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connector: str


@runtime_checkable
class Connector(Protocol):
    """What the job needs from a source."""

    settings_model: ClassVar[type[ConnectorSettings]]

    def check(self) -> None:
        """Raise ``SourceError`` or ``ConfigError`` unless the source reads as configured."""

    def read(self, since: Position | None) -> Iterator[SourceRecord]:
        """Stream records after ``since`` (all of them when None) in (cursor, key) order.

        Memory stays bounded whatever the source's size. A connector with a lookback window
        starts that far before ``since``; re-read records are harmless (the diff skips them).
        """
        ...

    def fetch(self, keys: Sequence[str]) -> Iterator[SourceRecord]:
        """Re-read the current rows for these source keys (used to retry rejected contacts)."""
        ...

    def close(self) -> None:
        """Release connections."""


@runtime_checkable
class KeyListing(Protocol):
    """Optional: a connector that can list its keys more cheaply than a full read."""

    def keys(self) -> Iterator[str]:
        """Every key the source holds now, as text (``SourceRecord.key_str``), in any order.

        Used by the hard-delete key scan; a connector without it is read in full instead.
        """
        ...


class ConnectorFactory(Protocol):
    settings_model: ClassVar[type[ConnectorSettings]]

    def __call__(self, settings: Any) -> Connector: ...


def available_connectors() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_connector(name: str) -> ConnectorFactory:
    """Find the connector class registered under ``name``."""
    found = available_connectors()
    if name not in found:
        known = ", ".join(sorted(found)) or "none installed"
        raise ConfigError(f"unknown connector {name!r} (available: {known})")
    try:
        factory: ConnectorFactory = found[name].load()
    except Exception as exc:  # a broken plugin must not crash config loading with a traceback
        raise ConfigError(f"connector {name!r} failed to load: {exc!r}") from exc
    return factory


def in_order(records: Iterable[SourceRecord], connector: object) -> Iterator[SourceRecord]:
    """Pass ``records`` through, failing the read if one is not strictly after the previous.

    ``connector`` is the connector (named by its class) or its name.

    The job's watermark assumes (cursor, key) order: a record behind the previous one could be
    skipped on resumption, so it stops the run with a ``SourceError`` naming the connector. A
    ``None`` cursor sorts first (the SQL connector's NULL-cursor phase).
    """
    name = connector if isinstance(connector, str) else type(connector).__name__
    previous: SourceRecord | None = None
    for record in records:
        if previous is not None and not _after(record, previous):
            raise SourceError(
                f"connector {name} broke (cursor, key) order: record {record.key!r} at "
                f"cursor {record.cursor!r} came after record {previous.key!r} at cursor "
                f"{previous.cursor!r}; the run stops so that no record is skipped"
            )
        previous = record
        yield record


def _after(record: SourceRecord, previous: SourceRecord) -> bool:
    """Whether ``record`` is strictly after ``previous`` in (cursor, key) order."""
    try:
        if (record.cursor is None) != (previous.cursor is None):
            return previous.cursor is None
        if record.cursor is not None and record.cursor != previous.cursor:
            return bool(record.cursor > previous.cursor)
        return bool(record.key > previous.key)
    except TypeError as exc:
        raise SourceError(
            f"record {record.key!r} (cursor {record.cursor!r}) cannot be ordered after record "
            f"{previous.key!r} (cursor {previous.cursor!r}): {exc}"
        ) from exc
