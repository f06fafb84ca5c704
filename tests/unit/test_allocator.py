"""The CLI fixes glibc's mmap threshold before a run allocates (sync_service/allocator.py)."""

from __future__ import annotations

import ctypes
import sys

import pytest

from sync_service import allocator
from sync_service.cli import commands


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux's")
def test_threshold_is_set_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    """On this machine's glibc mallopt accepts the setting (it returns 1 on success)."""
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    try:
        ctypes.CDLL(None).mallopt  # noqa: B018 - is the C library glibc (or one with mallopt)?
    except AttributeError:
        pytest.skip("this C library has no mallopt")
    assert allocator.release_large_blocks() is True


def test_an_operator_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    """With glibc's own MALLOC_MMAP_THRESHOLD_ in the environment nothing is changed."""
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert allocator.release_large_blocks() is False


def test_the_cli_entry_point_calls_it_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """``mailtrap-sync`` (cli.main) sets the threshold before the command runs."""
    calls: list[str] = []
    monkeypatch.setattr(commands, "release_large_blocks", lambda: calls.append("allocator"))
    monkeypatch.setattr(commands, "cli", lambda **kwargs: calls.append("cli"))
    commands.main()
    assert calls == ["allocator", "cli"]
