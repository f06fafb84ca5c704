"""Random CRM edits for the property tests, made to a ``People`` table between runs or between
two pages of one run (``sync_with_edits``).

Each edit is ``(kind, key, pick)``; one that would make the source insane (two live rows with
one address) is not made. Kinds: ``field`` (a new first name), ``plan`` (a list move), ``move``
(a free address), ``swap`` (two keys trade addresses), ``delete`` (soft), ``erase`` (the row is
gone: a hard delete), ``create`` (a new row, or a deleted one back) and ``touch`` (every row
gets one new ``updated_at``, contents unchanged: a bulk update).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sqlalchemy as sa

from sync_service.job import RunResult
from sync_service.models import RunOutcome
from tests.support.people import People, PeopleHarness, _Editor

Edit = tuple[str, int, int]
PLANS = ["pro", "free", "trial", None]


def apply_edit(src: People, edit: Edit, emails: Sequence[str]) -> None:
    """Make one edit if it keeps the source sane (live addresses unique)."""
    kind, key, pick = edit
    rows = {r["id"]: r for r in src.rows()}
    taken = {r["email"] for r in rows.values() if not r["deleted"]}
    free = [e for e in [*emails[pick:], *emails[:pick]] if e not in taken]
    row = rows.get(key)
    live = row is not None and not row["deleted"]
    if kind == "touch":
        with src.engine.begin() as conn:
            conn.execute(sa.update(src.table).values(updated_at=src.tick()))
    elif kind == "field" and live:
        src.update(key, first_name=f"N{pick}")
    elif kind == "plan" and live:
        src.update(key, plan=PLANS[pick % len(PLANS)])
    elif kind == "move" and live and free:
        src.update(key, email=free[0])
    elif kind == "swap" and live and row is not None:
        _swap(src, key, row["email"], rows, pick)
    elif kind == "delete" and live:
        src.delete(key)
    elif kind == "erase" and row is not None:
        with src.engine.begin() as conn:
            conn.execute(sa.delete(src.table).where(src.table.c.id == key))
    elif kind == "create" and not live and free:
        if row is None:
            src.insert(key, free[0], f"C{pick}")
        else:
            src.update(key, deleted=False, email=free[0], first_name=f"R{pick}")


def _swap(src: People, key: int, mine: str, rows: dict[int, dict[str, object]],
          pick: int) -> None:
    other = next((k for k in sorted(rows) if k != key and not rows[k]["deleted"]
                  and k % 3 == pick % 3), None)
    if other is not None:
        theirs = str(rows[other]["email"])
        src.update(key, email="swap-tmp@example.com")
        src.update(other, email=mine)
        src.update(key, email=theirs)


def sync_with_edits(h: PeopleHarness, edits: Sequence[tuple[int, Edit]],
                    emails: Sequence[str]) -> RunResult:
    """One sync, with each edit made before it (0) or once its n-th page was read (edits for
    pages the run did not have are made after it)."""
    src = h.source
    assert isinstance(src, People)
    during: dict[int, list[Callable[[], None]]] = {}
    for when, edit in edits:
        if when == 0:
            apply_edit(src, edit, emails)
        else:
            during.setdefault(when, []).append(lambda e=edit: apply_edit(src, e, emails))
    editor = _Editor(during)
    result = h.job(observer=editor).run()
    assert result.outcome is RunOutcome.SUCCEEDED, result.error
    for left in editor.edits.values():
        for edit_now in left:
            edit_now()
    return result
