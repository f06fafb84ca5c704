"""Tests of the state store, on real SQLite files (and PostgreSQL where marked)."""
