"""The house's layout: the production Mailtrap client carries no test code."""

from __future__ import annotations

import re
from pathlib import Path

import sync_service.mailtrap


def test_the_production_mailtrap_package_never_mentions_the_double() -> None:
    """No module of sync_service/mailtrap/ names the double; it lives in sync_service.testing."""
    package = Path(sync_service.mailtrap.__file__).parent
    word = re.compile(r"\bdouble\b|sync_service\.testing", re.IGNORECASE)  # "doubles" is fine
    mentions = [p.name for p in sorted(package.rglob("*.py"))
                if word.search(p.read_text(encoding="utf-8"))]
    assert mentions == []
