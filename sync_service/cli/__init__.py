"""The ``mailtrap-sync`` command line, as a package.

- ``group``: the root click group; it turns the project's errors into one line on stderr and the
  documented exit code, once for every command.
- ``commands``: the commands themselves (parse options, build settings, call into the package).
- ``render``: everything printed: rich tables on a terminal, tab-separated lines off one, JSON;
  values from source data have their control characters escaped.
- ``checks``: what ``check`` verifies, one line per moving part.
- ``state_view``: read-only views of the state store for ``plan``, ``status`` and ``explain``.
"""

from __future__ import annotations

from sync_service.cli.commands import cli, main

__all__ = ["cli", "main"]
