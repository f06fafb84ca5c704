"""Alembic environment and versions for the mailtrap-sync state store.

An importable package so that the installed code can find its migrations (see
``sync_service.state.schema.migrations_dir``). The application runs them through
``StateStore.upgrade()`` / ``mailtrap-sync db upgrade``; developers use ``alembic.ini`` here.
"""
