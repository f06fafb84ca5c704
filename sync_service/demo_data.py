"""The demo's sample data and the shape of a demo source, shared by ``sync_service.demo`` (the
SQL source and the walk-through) and ``sync_service.demo_sources`` (the other sources)."""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

_FIRST = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tim")
_LAST = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson",
         "Perlman", "Berners-Lee")
_PLANS = ("free", "starter", "business", "enterprise")
EDITED = 25


@dataclass
class DemoSource:
    """One demo source: its ``[pipelines.source]`` and mapping TOML, and how to edit it.

    ``edit(count)`` changes ``count`` records as a CRM user would (the second run sends
    exactly those). Servers a setup starts go on the ``ExitStack`` it is given.
    """

    source_toml: str
    fields_toml: str
    edit: Callable[[int], None]
    where: str  # shown in the demo's first line
    email_column: str = "email"  # the source column holding the address (Salesforce: Email)


# A setup prepares the source in ``folder`` with ``rows`` records. Add a source here (crm-b:
# "salesforce" and "pipedrive"); `mailtrap-sync demo --source NAME` looks it up by name.
DemoSetup = Callable[[Path, int, ExitStack], DemoSource]


def sample_people(rows: int, *, seed: int = 7) -> list[dict[str, Any]]:
    """``rows`` sample customers (ids from 1), a few of them with unusable emails."""
    rng = random.Random(seed)  # noqa: S311 - sample data, not security
    start = datetime(2026, 1, 1)  # naive UTC, as the SQL column holds it
    people = []
    for i in range(1, rows + 1):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        email = f"{first}.{last}.{i}@example.com".lower()
        if i % 400 == 0:
            email = f"{first} at {last}"  # an unusable address: recorded, not sent
        people.append({
            "id": i, "email": email, "first_name": first, "last_name": last,
            "plan": rng.choice(_PLANS), "seats": rng.randint(1, 250),
            "signed_up": (start - timedelta(days=rng.randint(0, 900))).date(),
            "updated_at": start + timedelta(minutes=i),
        })
    return people


def edited_ids(count: int) -> list[int]:
    """The ids the demo edits between its first and second run."""
    return list(range(3, 3 + count * 7, 7))
