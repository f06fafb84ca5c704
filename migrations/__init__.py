"""Alembic environment and versions for the mailtrap-sync state store.

Kept in the repository's top-level ``migrations/`` folder and installed as the package
``sync_service.migrations`` (see setup.py), so the distribution claims no generic top-level
import name. The installed code finds it with ``importlib.resources`` (see
``sync_service.state.schema.migrations_dir``) and runs it through ``StateStore.upgrade()`` /
``mailtrap-sync db upgrade``; developers use ``alembic.ini`` here.
"""
