"""The file connector end to end: CSV and JSON Lines drops synced into the Mailtrap double."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from sync_service.connectors.file import FileConnector, FileSourceSettings
from sync_service.errors import ConfigError
from sync_service.models import RunOutcome
from sync_service.testing.mailtrap.double import MailtrapDouble
from tests.support.source_pipeline import SourcePipeline

MALFORMED = {1_001: "too,many,fields,here,x", 50_002: "no-key-row@example.com",
             99_999: '99998,"user99998@example.com"x,First,pro'}  # text after a closing quote


def _drop(folder: Path, number: int, lines: list[str]) -> Path:
    path = folder / f"customers-{number:03d}.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.utime(path, ns=(number * 10**9, number * 10**9))
    return path


def _csv(count: int, *, skip: set[int] = frozenset(), bad: dict[int, str] | None = None,
         renamed: dict[int, str] | None = None) -> list[str]:
    """A header and ``count`` data lines; line n+1 holds record n (bad lines as given)."""
    lines = ["id,email,first_name,plan"]
    for n in range(1, count + 1):
        if bad and n + 1 in bad:
            lines.append(bad[n + 1])
        elif n not in skip:
            name = (renamed or {}).get(n, f"First{n}")
            lines.append(f"{n},user{n}@example.com,{name},{'pro' if n % 3 else 'free'}")
    return lines


@pytest.fixture
def pipeline(tmp_path: Path, double: MailtrapDouble) -> Iterator[SourcePipeline]:
    """A pipeline reading the newest CSV of a drops folder into the double."""
    drops = tmp_path / "drops"
    drops.mkdir()
    made = SourcePipeline(double, {"connector": "file", "path": str(drops), "key": "id",
                                   "pattern": "*.csv"},
                          f"sqlite:///{tmp_path}/state.db",
                          fields={"first_name": "first_name", "plan": "plan"})
    yield made
    made.close()


def _drops(pipeline: SourcePipeline) -> Path:
    return Path(pipeline.source["path"])


def test_large_csv_with_malformed_lines_syncs_the_rest(pipeline: SourcePipeline) -> None:
    """100,000 records with 3 malformed lines: the rest are synced, the 3 reported by line."""
    _drop(_drops(pipeline), 1, _csv(100_000, bad=MALFORMED))
    with capture_logs() as logs:
        result = pipeline.run()
    assert result.outcome is RunOutcome.SUCCEEDED, result.error
    view = pipeline.mailtrap_view()
    assert len(view) == 100_000 - 3
    assert view["user7@example.com"] == {"first_name": "First7", "plan": "pro"}
    reported = sorted(e["line"] for e in logs if e["event"] == "file.malformed_line")
    assert reported == sorted(MALFORMED)
    finished = next(e for e in logs if e["event"] == "file.read_finished")
    assert finished["malformed"] == 3
    assert finished["malformed_lines"] == sorted(MALFORMED)


def test_second_run_sends_nothing_and_dropped_lines_are_seen_as_deletions(
        pipeline: SourcePipeline) -> None:
    """A new drop without 10 records: the 10 leave the pipeline's list (one exclusion-only entry
    each, on_delete = remove_from_lists); a change goes."""
    _drop(_drops(pipeline), 1, _csv(200))
    assert pipeline.run().outcome is RunOutcome.SUCCEEDED
    sent = pipeline.sent()
    assert pipeline.run().outcome is RunOutcome.SUCCEEDED
    assert pipeline.sent() == sent  # nothing changed, nothing sent
    gone = set(range(50, 60))
    _drop(_drops(pipeline), 2, _csv(200, skip=gone, renamed={7: "Seventh"}))
    with capture_logs() as logs:
        result = pipeline.run()
    assert result.outcome is RunOutcome.SUCCEEDED, result.error
    seen = next(e for e in logs if e["event"] == "file.deletions_seen")
    assert seen["count"] == 10
    assert result.counts["unlisted"] == 10
    assert pipeline.sent() == sent + 1 + 10  # the renamed record, then the 10 unlisted
    assert not {f"user{n}@example.com" for n in gone} & set(pipeline.mailtrap_view())
    assert pipeline.mailtrap_view()["user7@example.com"]["first_name"] == "Seventh"


def test_jsonl_with_a_custom_encoding_and_bad_lines(tmp_path: Path) -> None:
    """JSON Lines in Latin-1: values keep their JSON types; bad lines are skipped by number."""
    path = tmp_path / "people.jsonl"
    path.write_bytes("\n".join([
        '{"id": 1, "email": "zoë@example.com", "seats": 3}',
        "not json at all",
        '[1, 2]',
        '{"email": "nokey@example.com"}',
        '{"id": 1, "email": "again@example.com"}',
        '{"id": "2", "email": "b@example.com", "tags": ["a"]}',
    ]).encode("latin-1"))
    connector = FileConnector(FileSourceSettings(connector="file", path=str(path), key="id",
                                                 encoding="latin-1"))
    connector.check()
    records = list(connector.read(None))
    assert [(r.key, r.values.get("email")) for r in records] == [
        ("1", "zoë@example.com"), ("2", "b@example.com")]
    assert records[0].values["seats"] == 3
    assert [n for n, _ in connector.malformed] == [2, 3, 4, 5]


def test_delimiter_option_and_missing_key_column(tmp_path: Path) -> None:
    """A semicolon CSV reads with delimiter=';'; a header without the key is a ConfigError."""
    path = tmp_path / "export.txt"
    path.write_text("id;email\n1;a@example.com\n", encoding="utf-8")
    good = FileConnector(FileSourceSettings(connector="file", path=str(path), key="id",
                                            delimiter=";"))
    assert [r.values["email"] for r in good.read(None)] == ["a@example.com"]
    wrong = FileConnector(FileSourceSettings(connector="file", path=str(path), key="id"))
    with pytest.raises(ConfigError, match=r"no column 'id'.*id;email"):
        wrong.check()


def test_missing_path_and_empty_folder_are_config_errors(tmp_path: Path) -> None:
    """A path that does not exist, or a folder without a matching file, is named in the error."""
    missing = FileConnector(FileSourceSettings(connector="file", path=str(tmp_path / "nope"),
                                               key="id"))
    with pytest.raises(ConfigError, match="does not exist"):
        missing.check()
    empty = FileConnector(FileSourceSettings(connector="file", path=str(tmp_path), key="id",
                                             pattern="*.csv"))
    with pytest.raises(ConfigError, match=r"no file matching '\*\.csv'"):
        empty.check()


def test_plan_reports_what_a_sync_would_send(pipeline: SourcePipeline) -> None:
    """`plan` on a file source counts the creates and sends nothing."""
    _drop(_drops(pipeline), 1, _csv(30))
    report = pipeline.job().plan()
    assert report.counts["created"] == 30
    assert pipeline.double.imports() == []


def test_a_single_file_replaced_by_a_smaller_export_counts_its_deletions(tmp_path: Path) -> None:
    """With one file path, the keys of past exports are kept beside it: 10 gone, 10 seen."""
    path = tmp_path / "customers.csv"
    path.write_text("\n".join(_csv(50)) + "\n", encoding="utf-8")
    os.utime(path, ns=(10**9, 10**9))
    settings = FileSourceSettings(connector="file", path=str(path), key="id")
    first = FileConnector(settings)
    assert len(list(first.read(None))) == 50
    assert first.deleted_keys == set()
    path.write_text("\n".join(_csv(50, skip=set(range(20, 30)))) + "\n", encoding="utf-8")
    os.utime(path, ns=(2 * 10**9, 2 * 10**9))
    second = FileConnector(settings)
    with capture_logs() as logs:
        assert len(list(second.read(None))) == 40
    assert second.deleted_keys == {str(n) for n in range(20, 30)}
    seen = next(e for e in logs if e["event"] == "file.deletions_seen")
    assert seen["count"] == 10
    again = FileConnector(settings)  # the same export read again (a plan, a backfill)
    assert len(list(again.read(None))) == 40
    assert again.deleted_keys == second.deleted_keys
