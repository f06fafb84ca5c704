"""List membership that follows the data (``[pipelines.lists_by_column]``); pure, no I/O.

A row's value in ``column`` picks at most one of the ``values`` lists, and each ``flags``
column that holds true puts the contact on its list. Together with the pipeline's static
``lists`` these are the lists the pipeline *manages*: an import entry includes the contact in
the managed lists it belongs to and excludes it from the other managed lists, in the same entry,
so a contact whose plan changes moves in one import. Lists the pipeline does not manage are never
named, so a contact stays on them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sync_service.errors import MappingRejected
from sync_service.mapping import _as_boolean
from sync_service.models import RejectKind


@dataclass(frozen=True)
class Memberships:
    """The dynamic list rules of one pipeline, with list names resolved to ids."""

    column: str | None = None
    by_value: Mapping[str, int] = field(default_factory=dict)  # column value -> list id
    flags: Mapping[str, int] = field(default_factory=dict)  # boolean column -> list id

    @property
    def ids(self) -> tuple[int, ...]:
        """Every list these rules manage."""
        return tuple(sorted({*self.by_value.values(), *self.flags.values()}))

    def __call__(self, values: Mapping[str, Any]) -> tuple[int, ...]:
        """The dynamic lists of one row; MappingRejected when a flag is not a boolean."""
        found: set[int] = set()
        if self.column is not None:
            raw = values.get(self.column)
            if raw is not None and (picked := self.by_value.get(_text(raw))) is not None:
                found.add(picked)
        for column, list_id in self.flags.items():
            raw = values.get(column)
            if raw is None:
                continue
            try:
                if _as_boolean(raw):
                    found.add(list_id)
            except ValueError as exc:
                raise MappingRejected(RejectKind.INVALID_VALUE,
                                      f"lists_by_column.flags: column {column} {exc}") from exc
        return tuple(sorted(found))


def _text(value: Any) -> str:
    """A column value as the key of ``values``: text as it is (trimmed), others by str()."""
    if isinstance(value, bool):
        return str(value).lower()
    return value.strip() if isinstance(value, str) else str(value)
