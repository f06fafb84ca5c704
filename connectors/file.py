"""The file connector (``connector = "file"``): a CSV or JSON Lines export, or the newest file in
a folder of drops. See ``FileSourceSettings`` for the keys.

Contract:

- **A file is a full snapshot** (``snapshot = True``): every record the source holds is in it.
  Keys that the previous snapshot had and this one lacks are deletions. In folder mode the
  previous snapshot is the folder's second-newest file; reading a snapshot from its start
  compares the two (both key sets are held in memory: a few dozen bytes a key) and leaves the
  result in ``deleted_keys``, logged as ``file.deletions_seen``. With a single ``path`` (a file
  replaced by each export) the keys of the last two exports read are kept in ``keys_file``
  (default: ``.<name>.keys`` beside it; if it cannot be written, deletions go unseen and a
  warning says why), so that reading one export again reports the same deletions. The job
  applies them after the read, through the pipeline's ``on_delete`` and the mass-delete brake
  (``sync_service.deletions``).
- **Order.** ``cursor`` is ``"<snapshot>|<line>"``: the snapshot's modification time (ns) and
  name, then the record's physical line number (the last line of a multi-line CSV record), both
  zero-padded so that text order is file order. ``key`` is the key column's text. ``read(p)``
  with ``p`` inside the same snapshot resumes after that line; a position of an older snapshot
  (or None) reads the whole newest file.
- **Values.** CSV cells are text, an empty cell is None; JSON Lines members keep their JSON type.
- **Malformed lines are skipped, not fatal**: a CSV row with more or fewer cells than the
  header, undecodable bytes, a line that is not a JSON object, a missing or empty key, a key
  already seen on an earlier line. Each is logged as ``file.malformed_line`` with its line number
  and reason, and counted in ``file.read_finished``; ``malformed`` holds the (line, reason) pairs
  of the last read. (A quote left open is CSV for "this field goes on over the next lines": the
  parser takes the following lines into that field until a quote closes it, and the record is
  reported where it gives up.)
- **Memory** is bounded by one record plus the set of keys (for duplicates and deletions).
- **Errors.** A missing file or folder, an empty folder, a header without the key column, an
  unknown extension: ``ConfigError`` naming the path. An unreadable file: ``SourceError``.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import orjson
import structlog

from sync_service.errors import ConfigError, SourceError
from sync_service.models import Position, SourceRecord

from .file_settings import SUFFIX_FORMATS, FileFormat, FileSourceSettings

__all__ = ["FileConnector", "FileSourceSettings"]

log = structlog.get_logger(__name__)
LOGGED_LINES = 100  # malformed lines logged one by one; the rest only counted
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of undecodable bytes
_LINE_DIGITS = 12
_ALL = 1 << 62  # quiet_until for scans that report nothing (fetch, the previous snapshot)


@dataclass(frozen=True, slots=True)
class _Line:
    """One parsed line: a record's values, or the reason it is malformed."""

    number: int
    values: dict[str, Any] | None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    path: Path
    ident: str  # "<mtime ns>-<name>", zero-padded: orders like the files' age
    format: FileFormat


class FileConnector:
    """Reads a CSV or JSON Lines snapshot; see the module docstring."""

    settings_model: ClassVar[type[FileSourceSettings]] = FileSourceSettings
    snapshot: ClassVar[bool] = True

    def __init__(self, settings: FileSourceSettings) -> None:
        self.settings = settings
        self.path = Path(settings.path).expanduser()
        self.deleted_keys: set[str] = set()
        self.malformed: list[tuple[int, str]] = []
        self._reading = self.path

    # the protocol -------------------------------------------------------------------------
    def check(self) -> None:
        """The file (or the folder's newest file) exists, and a CSV header names the key."""
        snap = self.newest()
        if snap.format == "csv":
            with self._open(snap) as handle:
                self._header(snap, csv.reader(handle, **self._dialect(snap)))
        log.info("file.check_ok", path=str(snap.path), format=snap.format)

    def read(self, since: Position | None) -> Iterator[SourceRecord]:
        """Stream the newest snapshot's records in file order (resuming inside it)."""
        snap = self.newest()
        after = _resume_line(since, snap)
        self.malformed = []
        keys: set[str] = set()
        count = 0
        for line in self._lines(snap, quiet_until=after):
            key = self._key(line, keys, quiet=line.number <= after)
            if key is None:
                continue
            keys.add(key)
            if line.number > after and line.values is not None:
                count += 1
                yield SourceRecord(key=key, cursor=_cursor(snap, line.number),
                                   values=line.values)
        log.info("file.read_finished", path=str(snap.path), records=count,
                 malformed=len(self.malformed),
                 malformed_lines=[n for n, _ in self.malformed[:LOGGED_LINES]])
        if after == 0:
            self._compare_with_previous(snap, keys)

    def fetch(self, keys: Sequence[str]) -> Iterator[SourceRecord]:
        """The newest snapshot's records for these keys (a scan of the file)."""
        wanted = set(map(str, keys))
        snap = self.newest()
        seen: set[str] = set()
        for line in self._lines(snap, quiet_until=_ALL):
            key = self._key(line, seen, quiet=True)
            if key is None:
                continue
            seen.add(key)
            if key in wanted and line.values is not None:
                yield SourceRecord(key=key, cursor=_cursor(snap, line.number),
                                   values=line.values)

    def close(self) -> None:
        """Nothing stays open between calls."""

    # snapshots ------------------------------------------------------------------------------
    def newest(self) -> Snapshot:
        """The file to read: ``path`` itself, or the newest matching file of the folder."""
        snaps = self.snapshots()
        return snaps[-1]

    def snapshots(self) -> list[Snapshot]:
        """Every candidate file, oldest first (one for a file ``path``)."""
        if self.path.is_file():
            return [self._snapshot(self.path)]
        if not self.path.exists():
            raise ConfigError(f"source.path: {self.path} does not exist")
        if not self.path.is_dir():
            raise ConfigError(f"source.path: {self.path} is neither a file nor a folder")
        try:
            found = [self._snapshot(p) for p in self.path.glob(self.settings.pattern)
                     if p.is_file() and not p.name.startswith(".")]
        except OSError as exc:
            raise SourceError(f"cannot list folder {self.path}: {exc}") from exc
        if not found:
            raise ConfigError(f"source.path: folder {self.path} has no file matching "
                              f"{self.settings.pattern!r}")
        return sorted(found, key=lambda s: s.ident)

    def _snapshot(self, path: Path) -> Snapshot:
        fmt = self.settings.format or SUFFIX_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise ConfigError(
                f"source.format: cannot tell the format of {path} from its extension; set "
                "format = \"csv\" or \"jsonl\""
            )
        try:
            mtime = path.stat().st_mtime_ns
        except OSError as exc:
            raise SourceError(f"cannot read {path}: {exc}") from exc
        return Snapshot(path, f"{mtime:020d}-{path.name}", fmt)

    def _compare_with_previous(self, snap: Snapshot, keys: set[str]) -> None:
        """Count the keys the previous snapshot had and ``snap`` lacks (``deleted_keys``)."""
        self.deleted_keys = set()
        if self.path.is_file():
            before, where = self._remembered_keys(snap, keys), str(self._keys_file())
        else:
            previous = [s for s in self.snapshots() if s.ident < snap.ident]
            before, where = (self._file_keys(previous[-1]), str(previous[-1].path)) \
                if previous else (None, "")
        if before is None:
            return
        self.deleted_keys = before - keys
        if self.deleted_keys:
            # The job applies them (on_delete, the mass-delete brake) once the read is done.
            log.warning("file.deletions_seen", path=str(snap.path), previous=where,
                        count=len(self.deleted_keys), sample=sorted(self.deleted_keys)[:10])

    def _file_keys(self, snap: Snapshot) -> set[str]:
        found: set[str] = set()
        for line in self._lines(snap, quiet_until=_ALL):
            key = self._key(line, found, quiet=True)
            if key is not None:
                found.add(key)
        return found

    def _keys_file(self) -> Path:
        if self.settings.keys_file:
            return Path(self.settings.keys_file).expanduser()
        return self.path.with_name(f".{self.path.name}.keys")

    def _remembered_keys(self, snap: Snapshot, keys: set[str]) -> set[str] | None:
        """Single-file mode: the keys of the export read before ``snap``, or None if unknown.

        ``keys_file`` keeps the keys of the last two exports read; reading ``snap`` again
        (a dry run, a backfill) compares it with the same previous export as before.
        """
        remembered = self._load_keys()
        current = remembered.get("current")
        if current is None or current.get("ident") != snap.ident:
            remembered = {"previous": current, "current": {"ident": snap.ident,
                                                           "keys": sorted(keys)}}
            self._store_keys(remembered)
        previous = remembered.get("previous")
        return set(previous["keys"]) if previous else None

    def _load_keys(self) -> dict[str, Any]:
        path = self._keys_file()
        try:
            loaded = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, orjson.JSONDecodeError) as exc:
            log.warning("file.keys_unreadable", path=str(path), error=str(exc))
            return {}
        return loaded if isinstance(loaded, dict) else {}

    def _store_keys(self, remembered: dict[str, Any]) -> None:
        target = self._keys_file()
        temporary = target.with_name(target.name + ".tmp")
        try:
            temporary.write_bytes(orjson.dumps(remembered))
            temporary.replace(target)
        except OSError as exc:
            log.warning("file.keys_unwritable", path=str(target), error=str(exc))

    # parsing --------------------------------------------------------------------------------
    def _lines(self, snap: Snapshot, *, quiet_until: int) -> Iterator[_Line]:
        """The snapshot's lines; problems on lines after ``quiet_until`` are reported."""
        self._reading = snap.path
        lines = self._csv(snap) if snap.format == "csv" else self._jsonl(snap)
        for line in lines:
            if line.problem is not None and line.number > quiet_until:
                self._report(line.number, line.problem)
            yield line

    def _csv(self, snap: Snapshot) -> Iterator[_Line]:
        with self._open(snap) as handle:
            reader = csv.reader(handle, **self._dialect(snap))
            header = self._header(snap, reader)
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    yield _Line(reader.line_num, None, f"CSV error: {exc}")
                    continue
                if not row:
                    continue  # a blank line is no record
                number = reader.line_num
                if any(_UNDECODABLE.search(cell) for cell in row):
                    yield _Line(number, None, f"bytes that are not {self.settings.encoding}")
                elif len(row) != len(header):
                    yield _Line(number, None, f"{len(row)} fields where the header has "
                                              f"{len(header)}")
                else:
                    yield _Line(number, {name: cell if cell != "" else None
                                         for name, cell in zip(header, row, strict=True)})

    def _jsonl(self, snap: Snapshot) -> Iterator[_Line]:
        encoding = self.settings.encoding
        utf8 = encoding.replace("_", "-").lower() in ("utf-8", "utf8", "utf-8-sig")
        try:
            handle = snap.path.open("rb")
        except OSError as exc:
            raise SourceError(f"cannot read {snap.path}: {exc}") from exc
        with handle:
            for number, raw in enumerate(handle, start=1):
                data = raw.strip()
                if number == 1 and data.startswith(b"\xef\xbb\xbf"):
                    data = data[3:]
                if not data:
                    continue
                try:
                    parsed = orjson.loads(data if utf8 else data.decode(encoding))
                except (orjson.JSONDecodeError, UnicodeDecodeError) as exc:
                    yield _Line(number, None, f"not JSON: {exc}")
                    continue
                if not isinstance(parsed, dict):
                    yield _Line(number, None, f"a JSON {type(parsed).__name__}, not an object")
                    continue
                yield _Line(number, parsed)

    def _key(self, line: _Line, seen: set[str], *, quiet: bool = False) -> str | None:
        """The line's key, or None (reporting why) when it has no usable one."""
        if line.values is None:
            return None
        raw = line.values.get(self.settings.key)
        key = None if raw is None or isinstance(raw, dict | list) else str(raw).strip()
        problem = None
        if not key:
            problem = f"no value for the key {self.settings.key!r}"
        elif key in seen:
            problem = f"key {key!r} already read on an earlier line"
        if problem is None:
            return key
        if not quiet:
            self._report(line.number, problem)
        return None

    def _report(self, number: int, problem: str) -> None:
        self.malformed.append((number, problem))
        if len(self.malformed) <= LOGGED_LINES:
            log.warning("file.malformed_line", path=str(self._reading), line=number,
                        reason=problem)

    def _open(self, snap: Snapshot) -> Any:
        try:
            return snap.path.open(encoding=self.settings.encoding, errors="surrogateescape",
                                  newline="")
        except OSError as exc:
            raise SourceError(f"cannot read {snap.path}: {exc}") from exc

    def _dialect(self, snap: Snapshot) -> dict[str, Any]:
        delimiter = self.settings.delimiter or (
            "\t" if snap.path.suffix.lower() == ".tsv" else ",")
        return {"delimiter": delimiter, "quotechar": self.settings.quotechar, "strict": True}

    def _header(self, snap: Snapshot, reader: Any) -> list[str]:
        try:
            header = [cell.strip() for cell in next(reader)]
        except StopIteration:
            header = []
        except csv.Error as exc:
            raise SourceError(f"{snap.path}: unreadable CSV header: {exc}") from exc
        if self.settings.key not in header:
            raise ConfigError(
                f"source.key: the header of {snap.path} has no column {self.settings.key!r} "
                f"(it has: {', '.join(header) or 'nothing: the file is empty'})"
            )
        return header


def _cursor(snap: Snapshot, line: int) -> str:
    return f"{snap.ident}|{line:0{_LINE_DIGITS}d}"


def _resume_line(since: Position | None, snap: Snapshot) -> int:
    """The line to resume after when ``since`` lies in ``snap``; else 0 (read it all)."""
    if since is None or not isinstance(since.cursor, str):
        return 0
    ident, _, line = since.cursor.rpartition("|")
    return int(line) if ident == snap.ident and line.isdigit() else 0
