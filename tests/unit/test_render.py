"""Terminal output escapes control characters that come from source data."""

from __future__ import annotations

import pytest

from sync_service.cli.render import printable


@pytest.mark.parametrize(("raw", "shown"), [
    ("plain café ✓ 名前", "plain café ✓ 名前"),
    ("\x1b[2J\x1b[31mred", "\\x1b[2J\\x1b[31mred"),
    ("tab\there\nnewline\rcr", "tab\\there\\nnewline\\rcr"),
    ("bell\x07 del\x7f c1\x9b", "bell\\x07 del\\x7f c1\\x9b"),
    ("evil\u202egpj.exe \u2066iso\u2069", "evil\\u202egpj.exe \\u2066iso\\u2069"),
    ("zero\u200bwidth line\u2028sep", "zero\\u200bwidth line\\u2028sep"),
])
def test_printable_escapes_controls_and_keeps_printable_text(raw: str, shown: str) -> None:
    """C0/C1 controls, DEL, bidi and other format characters and line separators are escaped;
    printable text of any script stays as it is."""
    assert printable(raw) == shown


def test_printable_can_keep_the_lines_of_a_multi_line_message() -> None:
    """With lines=True newlines stay (a configuration error's list); other controls go."""
    assert printable("bad:\n  key \x1b[31m", lines=True) == "bad:\n  key \\x1b[31m"
