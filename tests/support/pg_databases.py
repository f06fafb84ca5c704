"""Empty PostgreSQL databases for tests, without paying ``CREATE DATABASE`` for each one.

``CREATE DATABASE`` costs about 0.3 to 0.4 s of server CPU on PostgreSQL 15 (it copies
template1's ~7 MB of catalogs through the WAL), and some 160 tests ask for a database. So a
database a test has finished with is wiped and handed to a later test instead of being dropped:
its sessions are ended, its database-level settings reset, every schema but the system ones and
``public`` dropped, and ``public`` emptied and given back its owner, privileges and comment. It
is only handed out again when ``fingerprint`` then tells it from a new database in nothing (the
row count of every catalog holding per-database objects; the schemas' owners, privileges and
comments; the database's own owner, privileges and settings), compared with that of a database
just created. Otherwise it is dropped and a new one is created, as before. A test therefore
always starts with an empty database in the state ``CREATE DATABASE`` leaves.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.pool import NullPool

# Catalogs whose rows belong to one database. pg_statistic is left out: autovacuum may analyze
# the catalogs at any time; pg_namespace's pg_temp_N schemas stay once a session made them.
_COUNTED = (
    "pg_class", "pg_type", "pg_proc", "pg_attribute", "pg_attrdef", "pg_constraint", "pg_index",
    "pg_inherits", "pg_depend", "pg_description", "pg_rewrite", "pg_trigger", "pg_event_trigger",
    "pg_policy", "pg_extension", "pg_collation", "pg_conversion", "pg_operator", "pg_opclass",
    "pg_opfamily", "pg_amop", "pg_amproc", "pg_aggregate", "pg_cast", "pg_enum", "pg_range",
    "pg_sequence", "pg_statistic_ext", "pg_publication", "pg_subscription_rel",
    "pg_foreign_data_wrapper", "pg_foreign_server", "pg_foreign_table", "pg_user_mapping",
    "pg_default_acl", "pg_init_privs", "pg_largeobject_metadata", "pg_ts_config", "pg_ts_dict",
    "pg_ts_parser", "pg_ts_template", "pg_transform", "pg_language", "pg_seclabel",
)
_FINGERPRINT = sa.text(
    "SELECT " + ", ".join(f"(SELECT count(*) FROM {table})" for table in _COUNTED) + ","
    " (SELECT count(*) FROM pg_namespace WHERE nspname !~ '^pg_(toast_)?temp_'),"
    " (SELECT string_agg(nspname || ':' || nspowner::regrole::text || ':'"
    "   || coalesce(nspacl::text, '-') || ':' || coalesce(obj_description(oid, 'pg_namespace'),"
    "   '-'), ',' ORDER BY nspname) FROM pg_namespace WHERE nspname !~ '^pg_(toast_)?temp_'),"
    " (SELECT datdba::regrole::text || ':' || coalesce(datacl::text, '-') || ':'"
    "   || datconnlimit || ':' || datallowconn FROM pg_database"
    "   WHERE datname = current_database()),"
    " (SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase"
    "   WHERE d.datname = current_database())"
)
_OTHER_SCHEMAS = sa.text(
    "SELECT nspname FROM pg_namespace WHERE nspname !~ '^pg_' AND nspname <> 'information_schema'"
    " AND nspname <> 'public'"
)
# public itself is kept (a new one would lack template1's pg_init_privs row): what it holds is
# dropped, but for what goes with something else (a range type's constructors, an extension's
# members). Other kinds of objects left in it fail the fingerprint.
_ALONE = (
    " AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = '{catalog}'::regclass"
    " AND d.objid = o.oid AND d.deptype IN ('i', 'e'))"
)
_PUBLIC_OBJECTS = sa.text(
    "SELECT 'DROP ' || CASE relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'"
    "  WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END"
    "  || ' IF EXISTS ' || oid::regclass::text || ' CASCADE'"
    " FROM pg_class o WHERE relnamespace = 'public'::regnamespace"
    "  AND relkind IN ('r', 'p', 'v', 'm', 'S', 'f')" + _ALONE.format(catalog="pg_class") +
    " UNION ALL SELECT 'DROP ROUTINE IF EXISTS ' || oid::regprocedure::text || ' CASCADE'"
    " FROM pg_proc o WHERE pronamespace = 'public'::regnamespace" + _ALONE.format(
        catalog="pg_proc") +
    " UNION ALL SELECT 'DROP ' || CASE typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END"
    "  || ' IF EXISTS ' || oid::regtype::text || ' CASCADE'"
    " FROM pg_type o WHERE typnamespace = 'public'::regnamespace"
    "  AND (typtype IN ('d', 'e', 'r')"
    "   OR typtype = 'c' AND (SELECT relkind FROM pg_class WHERE oid = o.typrelid) = 'c')"
    + _ALONE.format(catalog="pg_type")
)
# public as template1 has it on PostgreSQL 15 and later (checked by the fingerprint).
_PUBLIC_AS_NEW = (
    "ALTER SCHEMA public OWNER TO pg_database_owner",
    "REVOKE ALL ON SCHEMA public FROM PUBLIC",
    "GRANT USAGE ON SCHEMA public TO PUBLIC",
    "COMMENT ON SCHEMA public IS 'standard public schema'",
)
_OTHERS = "FROM pg_stat_activity WHERE datname = :name AND pid <> pg_backend_pid()"


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class PgDatabases:
    """Hands out empty databases on one server; ``close`` drops every one still held."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.admin: Engine = sa.create_engine(server, isolation_level="AUTOCOMMIT")
        self.idle: list[str] = []
        self.fresh: Sequence[object] | None = None  # the fingerprint of a new database
        self.created = self.reused = 0

    def url(self, name: str) -> str:
        return make_url(self.server).set(database=name).render_as_string(hide_password=False)

    def take(self) -> str:
        """The name of an empty database, the caller's until ``give_back``."""
        if self.idle:
            self.reused += 1
            return self.idle.pop()
        name = f"mts_{uuid.uuid4().hex[:12]}"
        with self.admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
        self.created += 1
        if self.fresh is None:
            self.fresh = self._inside(name, fingerprint)
        return name

    def give_back(self, name: str) -> None:
        """Wipe ``name`` for a later test, or drop it when it cannot be made new again."""
        try:
            clean = self._wipe(name)
        except sa.exc.SQLAlchemyError:
            clean = False
        if clean:
            self.idle.append(name)
        else:
            self.drop(name)

    def drop(self, name: str) -> None:
        with self.admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {_quoted(name)} WITH (FORCE)"))

    def close(self) -> None:
        while self.idle:
            self.drop(self.idle.pop())
        self.admin.dispose()

    def _wipe(self, name: str) -> bool:
        with self.admin.connect() as conn:
            conn.execute(sa.text(f"SELECT pg_terminate_backend(pid) {_OTHERS}"), {"name": name})
            if not _sessions_ended(conn, name):
                return False
            prepared = sa.text("SELECT count(*) FROM pg_prepared_xacts WHERE database = :name")
            if conn.execute(prepared, {"name": name}).scalar_one():
                return False
            conn.execute(sa.text(f"ALTER DATABASE {_quoted(name)} RESET ALL"))
        return self.fresh is not None and self._inside(name, _emptied) == self.fresh

    def _inside(self, name: str, action: Callable[[Connection], Sequence[object]]
                ) -> Sequence[object]:
        engine = sa.create_engine(self.url(name), isolation_level="AUTOCOMMIT", poolclass=NullPool)
        try:
            with engine.connect() as conn:
                return action(conn)
        finally:
            engine.dispose()


def fingerprint(conn: Connection) -> Sequence[object]:
    """What tells the database ``conn`` is on from a new one (see the module's docstring)."""
    return tuple(conn.execute(_FINGERPRINT).one())


def _emptied(conn: Connection) -> Sequence[object]:
    for schema in conn.execute(_OTHER_SCHEMAS).scalars().all():
        conn.execute(sa.text(f"DROP SCHEMA {_quoted(schema)} CASCADE"))
    for statement in [*conn.execute(_PUBLIC_OBJECTS).scalars().all(), *_PUBLIC_AS_NEW]:
        conn.execute(sa.text(statement))
    return fingerprint(conn)


def _sessions_ended(conn: Connection, name: str, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while conn.execute(sa.text(f"SELECT count(*) {_OTHERS}"), {"name": name}).scalar_one():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
