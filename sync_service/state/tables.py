"""The state store's tables, as SQLAlchemy Core metadata.

The schema is created and changed only through the Alembic migrations in ``migrations/``; this
module is what those migrations must produce (a test compares the two), and what the store's
queries are written against.

Enumerations are stored as short strings rather than native enum types, so that adding a value
never needs an ``ALTER TYPE`` migration. Source keys, emails and messages are unbounded text:
a length limit there would turn an unusual source row into a failed transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

# Constraint names follow this convention so that migrations name them the same way on every
# database, and a later migration can drop or alter them by name.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

PIPELINE_LENGTH = 200
ENUM_LENGTH = 20
HASH_LENGTH = 128
OWNER_LENGTH = 200


# What a text value that PostgreSQL cannot hold (a NUL character) is stored as: this mark, then
# the value with backslashes doubled and NUL written as backslash-0. Values that start with the
# mark (a Unicode noncharacter) are encoded too, so the encoding is one-to-one.
_MARK = "\ufdd0"


def encode_text(value: str) -> str:
    """``value`` as the state store keeps it (unchanged unless it holds NUL; see ``_MARK``)."""
    if "\x00" not in value and not value.startswith(_MARK):
        return value
    return _MARK + value.replace("\\", "\\\\").replace("\x00", "\\0")


def decode_text(value: str) -> str:
    if not value.startswith(_MARK):
        return value
    out, escaped = [], False
    for char in value[len(_MARK):]:
        if escaped:
            out.append("\x00" if char == "0" else char)
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            out.append(char)
    return "".join(out)


class SafeText(TypeDecorator[str]):
    """Unbounded text that may hold any Python string, NUL included (PostgreSQL text cannot):
    a source key, an email or a reason taken from a source row is stored, never refused."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else encode_text(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else decode_text(value)

    # Keys and addresses pass through here once per row of every state look-up (issue 11): where
    # the driver hands text over as it is (no processor of its own for Text), one plain function
    # per value instead of TypeDecorator's two-level wrapper.
    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        if self.impl_instance.bind_processor(dialect) is not None:
            return super().bind_processor(dialect)
        return _encode_or_none

    def result_processor(self, dialect: Dialect, coltype: Any) -> Callable[[Any], Any] | None:
        if self.impl_instance.result_processor(dialect, coltype) is not None:
            return super().result_processor(dialect, coltype)
        return _decode_or_none


def _encode_or_none(value: str | None) -> str | None:
    if value is None or ("\x00" not in value and not value.startswith(_MARK)):
        return value
    return encode_text(value)


def _decode_or_none(value: str | None) -> str | None:
    if value is None or not value.startswith(_MARK):
        return value
    return decode_text(value)


class UtcDateTime(TypeDecorator[datetime]):
    """Stores UTC, returns tz-aware UTC datetimes; refuses naive ones.

    SQLite keeps no time zone, so values are normalised to UTC on the way in and labelled UTC on
    the way out; on PostgreSQL the column is ``timestamptz`` and the conversion is a no-op.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r} given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime from the database, got {value!r}")
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


watermarks = sa.Table(
    "watermarks",
    metadata,
    sa.Column("pipeline", sa.String(PIPELINE_LENGTH), primary_key=True),
    # Tagged JSON (see state/codec.py), so cursor and key come back with their Python types.
    sa.Column("cursor_value", sa.Text, nullable=False),
    sa.Column("key_value", sa.Text, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

contacts = sa.Table(
    "contacts",
    metadata,
    sa.Column("pipeline", sa.String(PIPELINE_LENGTH), primary_key=True),
    sa.Column("source_key", SafeText, primary_key=True),
    sa.Column("email", SafeText, nullable=False),
    sa.Column("hash", sa.String(HASH_LENGTH), nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("import_id", sa.BigInteger, nullable=True),
    # Not unique: one batch may swap two keys' emails, and a unique index would trip over the
    # intermediate state. The job enforces one owner per email (RejectKind.DUPLICATE).
    sa.Index(None, "pipeline", "email"),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("pipeline", sa.String(PIPELINE_LENGTH), nullable=False),
    sa.Column("kind", sa.String(ENUM_LENGTH), nullable=False),
    sa.Column("started_at", UtcDateTime, nullable=False),
    sa.Column("finished_at", UtcDateTime, nullable=True),
    sa.Column("outcome", sa.String(ENUM_LENGTH), nullable=False),
    sa.Column("counts", sa.Text, nullable=False),  # JSON object of str -> int
    sa.Column("error", SafeText, nullable=True),
    sa.Index(None, "pipeline", "id"),
)

batches = sa.Table(
    "batches",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("pipeline", sa.String(PIPELINE_LENGTH), nullable=False),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=False),
    sa.Column("status", sa.String(ENUM_LENGTH), nullable=False),
    sa.Column("import_id", sa.BigInteger, nullable=True),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("posted_at", UtcDateTime, nullable=True),
    sa.Column("finished_at", UtcDateTime, nullable=True),
    sa.Column("created_count", sa.Integer, nullable=True),
    sa.Column("updated_count", sa.Integer, nullable=True),
    sa.Column("over_limit_count", sa.Integer, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("error", SafeText, nullable=True),
    sa.Index(None, "pipeline", "status"),
    sa.Index(None, "run_id"),
)

# The write-ahead half of a batch: one row per contact in the import, deleted when the batch
# closes (finished, failed or abandoned), so the table only ever holds in-flight batches.
batch_contacts = sa.Table(
    "batch_contacts",
    metadata,
    sa.Column(
        "batch_id",
        sa.Integer,
        sa.ForeignKey("batches.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("email", SafeText, primary_key=True),
    sa.Column("source_key", SafeText, nullable=False),
    sa.Column("kind", sa.String(ENUM_LENGTH), nullable=False),
    sa.Column("hash", sa.String(HASH_LENGTH), nullable=True),  # None: exclusion-only entry
    # confirm_batch clears the rejections of the batch's keys; without this index PostgreSQL
    # scanned the whole batch once per rejection (seconds per 50,000-contact batch).
    sa.Index(None, "batch_id", "source_key"),
)

rejections = sa.Table(
    "rejections",
    metadata,
    sa.Column("pipeline", sa.String(PIPELINE_LENGTH), primary_key=True),
    sa.Column("source_key", SafeText, primary_key=True),
    sa.Column("email", SafeText, nullable=True),
    sa.Column("kind", sa.String(ENUM_LENGTH), nullable=False),
    sa.Column("reason", SafeText, nullable=False),
    sa.Column(
        "run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="SET NULL"), nullable=True
    ),
    sa.Column("first_seen", UtcDateTime, nullable=False),
    sa.Column("last_seen", UtcDateTime, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    # MAILTRAP rejections: the hash of the contact Mailtrap refused (not posted again until the
    # row changes or an operator asks).
    sa.Column("hash", sa.String(HASH_LENGTH), nullable=True),
    sa.Index(None, "run_id"),
)

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("pipeline", sa.String(PIPELINE_LENGTH), primary_key=True),
    sa.Column("owner", sa.String(OWNER_LENGTH), nullable=False),
    sa.Column("acquired_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False),
    # The fencing token: grows each time the lease changes hands (see state/leases.py).
    sa.Column("generation", sa.BigInteger, nullable=False, server_default="0"),
)

# --- consent branch: opt-outs, custom events and reconcile (migration 0006) -------------------

# One row per source key that opted out (origin "source") or that Mailtrap reports unsubscribed
# (origin "mailtrap", found by a reconcile). ``status``: pending until Mailtrap answered the
# PATCH, then done; a Mailtrap-origin row is done from the start (nothing to send).
consent_optouts = sa.Table(
    "consent_optouts",
    metadata,
    sa.Column("pipeline", sa.String(PIPELINE_LENGTH), primary_key=True),
    sa.Column("source_key", SafeText, primary_key=True),
    sa.Column("email", SafeText, nullable=False),
    sa.Column("origin", sa.String(ENUM_LENGTH), nullable=False),
    sa.Column("status", sa.String(ENUM_LENGTH), nullable=False),
    sa.Column("reason", SafeText, nullable=True),  # the last refusal of a pending PATCH
    sa.Column("recorded_at", UtcDateTime, nullable=False),
    sa.Column("done_at", UtcDateTime, nullable=True),
    sa.Index(None, "pipeline", "status"),
)

# The custom events read from a pipeline's events source, by source key (deduplication across
# restarts). ``status``: queued → sending (written before the POST) → sent; rejected (422).
# ``lost`` counts answers that never came back (the event may have arrived; it was sent again).
consent_events = sa.Table(
    "consent_events",
    metadata,
    sa.Column("pipeline", sa.String(PIPELINE_LENGTH), primary_key=True),
    sa.Column("source_key", SafeText, primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),  # arrival order
    sa.Column("email", SafeText, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("params", sa.Text, nullable=False),  # JSON object
    sa.Column("status", sa.String(ENUM_LENGTH), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("lost", sa.Integer, nullable=False),
    sa.Column("reason", SafeText, nullable=True),
    sa.Column("queued_at", UtcDateTime, nullable=False),
    sa.Column("sent_at", UtcDateTime, nullable=True),
    sa.Index(None, "pipeline", "status", "seq"),
)

# Per pipeline: the events source's watermark (tagged JSON, like ``watermarks``) and when the
# last reconcile finished.
consent_marks = sa.Table(
    "consent_marks",
    metadata,
    sa.Column("pipeline", sa.String(PIPELINE_LENGTH), primary_key=True),
    sa.Column("events_cursor", sa.Text, nullable=True),
    sa.Column("events_key", sa.Text, nullable=True),
    sa.Column("reconciled_at", UtcDateTime, nullable=True),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

# The re-read skip (sync_service/reread.py): per key, the token of the last row the sync mapped
# (its cursor value, the hash it maps to and the pipeline's fingerprint, digested). A token only
# counts while the key's confirmed hash in ``contacts`` is the one it was made with, so a stale
# row here is harmless; ``db prune`` drops the rows of keys no longer in ``contacts``.
reread_tokens = sa.Table(
    "reread_tokens",
    metadata,
    sa.Column("pipeline", sa.String(PIPELINE_LENGTH), primary_key=True),
    sa.Column("source_key", SafeText, primary_key=True),
    sa.Column("token", sa.String(32), nullable=False),
)
