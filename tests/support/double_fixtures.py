"""Fixtures around the Mailtrap test double (filled in with the double)."""

from __future__ import annotations
