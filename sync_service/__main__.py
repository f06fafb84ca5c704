"""``python -m sync_service`` and the ``mailtrap-sync`` script; the CLI is ``sync_service.cli``."""

from __future__ import annotations

from sync_service.cli import cli, main

__all__ = ["cli", "main"]

if __name__ == "__main__":
    main()
