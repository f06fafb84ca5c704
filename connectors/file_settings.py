"""Settings of the file connector: ``[pipelines.source]`` with ``connector = "file"``."""

from __future__ import annotations

import codecs
from typing import Literal

from pydantic import Field, field_validator

from sync_service.connector import ConnectorSettings

FileFormat = Literal["csv", "jsonl"]
SUFFIX_FORMATS: dict[str, FileFormat] = {
    ".csv": "csv", ".tsv": "csv", ".txt": "csv",
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
}


class FileSourceSettings(ConnectorSettings):
    """Where the file connector finds its snapshot, and how to parse it."""

    connector: Literal["file"] = "file"
    path: str = Field(
        description="a CSV or JSON Lines file, or a folder of drops: its newest file (by "
        "modification time, then name) matching `pattern` is read; relative to the working "
        "directory"
    )
    key: str = Field(description="column (CSV header) or member (JSON Lines) identifying a record")
    format: FileFormat | None = Field(
        None, description="csv or jsonl; default: from the file's extension (.csv, .tsv, .txt; "
        ".jsonl, .ndjson, .json)"
    )
    pattern: str = Field("*", description="in folder mode, the file names considered (a glob)")
    encoding: str = Field("utf-8-sig", description="text encoding (default UTF-8, BOM or not)")
    delimiter: str | None = Field(
        None, description="CSV field separator, one character (default ',' and TAB for .tsv)"
    )
    quotechar: str = Field('"', description="CSV quote character, one character")
    keys_file: str | None = Field(
        None, description="single-file mode: where the keys of the last two exports are kept, "
        "to count deletions (default: .<file name>.keys beside the file)"
    )

    @field_validator("path", "key", "pattern")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError as exc:
            raise ValueError(f"unknown encoding {value!r}") from exc
        return value

    @field_validator("delimiter", "quotechar")
    @classmethod
    def _one_character(cls, value: str | None) -> str | None:
        if value is not None and len(value) != 1:
            raise ValueError(f"must be exactly one character, not {value!r}")
        return value
