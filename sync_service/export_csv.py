"""A tolerant reader of Mailtrap contact export files.

Mailtrap's spec documents how to request an export, not the file's format, so this reader
assumes little (README "Drift reconcile" lists the assumptions):

- the file is gzip-compressed or plain (told apart by gzip's magic bytes, not the URL), UTF-8
  with or without a byte-order mark, with one header row;
- the delimiter is whichever of ``,`` ``;`` tab or ``|`` the header row uses most;
- header names are matched case-insensitively, ignoring spaces, dashes and a ``fields.`` /
  ``field_`` / ``fields_`` prefix: the address is ``email`` (or ``email_address``,
  ``contact_email``, ``e_mail``); the subscription is ``status`` / ``subscription_status``
  (``unsubscribed`` means out) or a boolean ``unsubscribed`` column; lists are ``list_ids`` /
  ``lists`` / ``list_id`` / ``list``; any other column is a custom field, by merge tag or by
  field name;
- a lists cell holds ids or list names separated by commas, semicolons, pipes or spaces (names
  are resolved through the names given to the reader; an unknown name is ignored);
- an empty cell is an absent value.

Rows stream one at a time: memory does not grow with the file.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO

from sync_service.errors import ExportFormatError

GZIP_MAGIC = b"\x1f\x8b"
DELIMITERS = (",", ";", "\t", "|")
_EMAIL = ("email", "email_address", "contact_email", "e_mail")
_STATUS = ("status", "subscription_status", "subscription")
_UNSUBSCRIBED = ("unsubscribed", "is_unsubscribed")
_LISTS = ("list_ids", "lists", "list_id", "list", "list_names")
_IGNORED = ("id", "uuid", "contact_id", "created_at", "updated_at")
_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_SPLIT = re.compile(r"[,;|\s]+")


@dataclass(frozen=True, slots=True)
class ExportedContact:
    email: str
    unsubscribed: bool
    list_ids: frozenset[int]
    fields: Mapping[str, str] = field(default_factory=dict)  # merge tag → raw cell text


def _key(name: str) -> str:
    text = name.strip().lstrip("\ufeff").lower().replace("-", "_").replace(" ", "_")
    for prefix in ("fields.", "field.", "fields_", "field_"):
        if text.startswith(prefix) and len(text) > len(prefix):
            return text[len(prefix):]
    return text


def open_text(raw: IO[bytes]) -> IO[str]:
    """The file as text, gunzipped if it starts with gzip's magic bytes."""
    head = raw.read(2)
    raw.seek(0)
    stream: IO[bytes] = gzip.GzipFile(fileobj=raw) if head == GZIP_MAGIC else raw  # type: ignore[assignment]
    return io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")


def read_export(raw: IO[bytes], *, merge_tags: Mapping[str, str],
                list_names: Mapping[str, int]) -> Iterator[ExportedContact]:
    """Stream the contacts of an export file.

    ``merge_tags``: field name or merge tag (any case) → merge tag; ``list_names``: list name →
    id. Columns naming neither are ignored.
    """
    text = open_text(raw)
    try:
        header_line = text.readline()
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise ExportFormatError(f"the export file is unreadable: {exc}") from exc
    if not header_line.strip():
        return
    delimiter = max(DELIMITERS, key=header_line.count)
    header = next(csv.reader([header_line], delimiter=delimiter))
    columns = _columns(header, merge_tags)
    reader = csv.reader(text, delimiter=delimiter)
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            yield _contact(row, columns, list_names)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        raise ExportFormatError(f"the export file is unreadable near line {reader.line_num}: "
                                f"{exc}") from exc


@dataclass(frozen=True, slots=True)
class _Columns:
    email: int
    status: int | None
    unsubscribed: int | None
    lists: int | None
    fields: dict[int, str]


def _columns(header: list[str], merge_tags: Mapping[str, str]) -> _Columns:
    keys = [_key(name) for name in header]
    tags = {_key(name): tag for name, tag in merge_tags.items()}

    def first(names: tuple[str, ...]) -> int | None:
        return next((keys.index(n) for n in names if n in keys), None)

    email = first(_EMAIL)
    if email is None:
        raise ExportFormatError("the export file has no email column (columns: "
                                + ", ".join(header) + ")")
    taken = {email, first(_STATUS), first(_UNSUBSCRIBED), first(_LISTS)}
    fields = {i: tags[k] for i, k in enumerate(keys)
              if i not in taken and k not in _IGNORED and k in tags}
    return _Columns(email, first(_STATUS), first(_UNSUBSCRIBED), first(_LISTS), fields)


def _cell(row: list[str], index: int | None) -> str:
    return row[index].strip() if index is not None and index < len(row) else ""


def _contact(row: list[str], columns: _Columns, list_names: Mapping[str, int]) -> ExportedContact:
    status = _cell(row, columns.status).lower()
    unsubscribed = status == "unsubscribed" or _cell(row, columns.unsubscribed).lower() in _TRUE
    lists: set[int] = set()
    folded = {name.casefold(): ident for name, ident in list_names.items()}
    cell = _cell(row, columns.lists)
    for token in ([cell] if cell.casefold() in folded else _SPLIT.split(cell)):
        if token.isdigit():
            lists.add(int(token))
        elif token and (found := folded.get(token.casefold())) is not None:
            lists.add(found)
    fields = {tag: row[i] for i, tag in columns.fields.items() if i < len(row) and row[i] != ""}
    return ExportedContact(_cell(row, columns.email).lower(), unsubscribed, frozenset(lists),
                           fields)
