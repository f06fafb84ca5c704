"""Mailtrap side of mailtrap-sync: the HTTP client and, for tests and demos, a stateful double.

Import-light on purpose: importing the package pulls in nothing. The client lives in
``sync_service.mailtrap.client``; the test double in ``sync_service.mailtrap.double`` (it needs
Starlette and uvicorn) and its in-process httpx transport in ``sync_service.mailtrap.transport``.
"""

from __future__ import annotations
