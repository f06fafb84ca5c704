"""The file connector passes the connector contract suite (CSV and JSON Lines folders of drops)."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest

from sync_service.connectors.file import FileConnector, FileSourceSettings
from sync_service.testing.contract import ConnectorContract, ContractSource, Row


class FileDrops(ContractSource):
    """A folder of drops: every change writes the whole snapshot as a new, newer file."""

    several_emails = False  # one cell holds one address
    snapshot = True

    def __init__(self, folder: Path, fmt: str) -> None:
        self.folder, self.fmt = folder, fmt
        self.rows: dict[str, Row] = {}
        self.drops = 0
        self._write()

    def _write(self) -> None:
        self.drops += 1
        path = self.folder / f"export-{self.drops:04d}.{self.fmt}"
        ordered = sorted(self.rows.values(), key=lambda r: (r.tick, int(r.key)))
        with path.open("w", newline="", encoding="utf-8") as handle:
            if self.fmt == "csv":
                writer = csv.writer(handle)
                writer.writerow(["id", "email", "name"])
                writer.writerows([r.key, r.emails[0] if r.emails else "", r.name]
                                 for r in ordered)
            else:
                for r in ordered:
                    email = r.emails[0] if r.emails else None
                    handle.write(orjson.dumps({"id": r.key, "email": email,
                                               "name": r.name}).decode() + "\n")
        # Each drop is newer than the last, whatever the file system's clock resolution.
        os.utime(path, ns=(self.drops * 1_000_000_000, self.drops * 1_000_000_000))

    def put(self, rows: Sequence[Row]) -> None:
        self.rows.update({row.key: row for row in rows})
        self._write()

    def delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.rows.pop(key, None)
        self._write()

    def connect(self, *, page_size: int) -> FileConnector:
        return FileConnector(FileSourceSettings(connector="file", path=str(self.folder),
                                                key="id"))

    bad_credentials_hint = "source.path: .* does not exist"

    def connect_with_bad_credentials(self) -> FileConnector:
        """Files have no credentials: a path that is not there."""
        return FileConnector(FileSourceSettings(connector="file", key="id",
                                                path=str(self.folder / "no-such-export")))


class TestFileConnectorContract(ConnectorContract):
    """The file connector, on CSV and JSON Lines drops, against the contract suite."""

    @pytest.fixture(params=["csv", "jsonl"])
    def source(self, request: pytest.FixtureRequest, tmp_path: Path) -> ContractSource:
        return FileDrops(tmp_path, request.param)
