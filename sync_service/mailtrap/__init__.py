"""Mailtrap side of mailtrap-sync: the production HTTP client (no test code lives here).

Import-light on purpose: importing the package pulls in nothing. The client lives in
``sync_service.mailtrap.client``, its answer parsing in ``answers`` and request pacing in
``pacing``.
"""

from __future__ import annotations
