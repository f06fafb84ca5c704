"""Package discovery that pyproject.toml cannot express on its own.

The repository keeps ``connectors/`` and ``migrations/`` as top-level folders, but the
distribution installs them as ``sync_service.connectors`` and ``sync_service.migrations``: it
claims no generic top-level import name. ``package_dir`` maps the two folders; their subpackages
are found here so a new connector package needs no edit of this file.
"""

from __future__ import annotations

from setuptools import find_packages, setup

MAPPED = {"sync_service.connectors": "connectors", "sync_service.migrations": "migrations"}


def _packages() -> list[str]:
    found = find_packages(include=["sync_service", "sync_service.*"])
    for package, folder in MAPPED.items():
        found += [package, *(f"{package}.{sub}" for sub in find_packages(folder))]
    return found


setup(packages=_packages(), package_dir=MAPPED)
