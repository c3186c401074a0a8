"""Apply cronledger's Alembic migrations, online or as SQL text.

The first use of a database upgrades it to the current schema. Many
processes may make that first use at once (a fleet of cron jobs firing on
the same minute), so the upgrade runs under a lock: a PostgreSQL advisory
lock, or an exclusive file lock beside the SQLite file. The process that gets the
lock second finds the schema current and does nothing.
"""

from __future__ import annotations

import fcntl
import io
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

from cronledger.errors import InvalidValueError

log = logging.getLogger(__name__)

VERSION_TABLE = "cronledger_schema_version"
MIGRATIONS_DIR = Path(__file__).parent / "migrations"

# An arbitrary constant that identifies cronledger's migration lock among
# the advisory locks of other applications on the same server.
ADVISORY_LOCK_KEY = 0x63726F6E6C6564  # "cronled"

_current: set[int] = set()
_current_lock = threading.Lock()


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    """Return the newest revision that this version of cronledger ships."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None, "the migrations directory has no revision"
    return head


def current_revision(connection: Connection) -> str | None:
    """Return the revision the database is at, or None for a new database."""
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def check_timezone(zone: str | None) -> str | None:
    """Return ``zone`` if it is a known IANA time zone name, else raise."""
    if zone is None:
        return None
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidValueError(
            f"unknown time zone '{zone}': use an IANA name such as Europe/Berlin or UTC"
        ) from None
    return zone


def upgrade(engine: Engine, *, origin_timezone: str | None = None) -> bool:
    """Upgrade the database to the newest revision; return True if it changed."""
    check_timezone(origin_timezone)
    head = head_revision()

    with _migration_lock(engine) as connection:
        if current_revision(connection) == head:
            connection.commit()
            return False
        config = _alembic_config()
        config.attributes["connection"] = connection
        config.attributes["origin_timezone"] = origin_timezone
        command.upgrade(config, "head")
        connection.commit()

    log.info("database upgraded to cronledger schema revision %s", head)
    return True


def ensure_schema(engine: Engine) -> None:
    """Upgrade the database on first use in this process, if it needs it."""
    key = id(engine)
    with _current_lock:
        if key in _current:
            return

    with engine.connect() as connection:
        is_current = current_revision(connection) == head_revision()
    if not is_current:
        upgrade(engine)

    with _current_lock:
        _current.add(key)


def forget_schema_checks() -> None:
    """Make the next ``ensure_schema`` look at the database again (tests)."""
    with _current_lock:
        _current.clear()


def offline_sql(dialect_name: str = "postgresql", *, origin_timezone: str | None = None) -> str:
    """Return the SQL of every migration, for teams that apply it themselves."""
    check_timezone(origin_timezone)
    buffer = io.StringIO()
    config = Config(output_buffer=buffer)
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["dialect_name"] = dialect_name
    config.attributes["origin_timezone"] = origin_timezone
    command.upgrade(config, "head", sql=True)
    return buffer.getvalue()


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[Connection]:
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
            connection.commit()
            try:
                yield connection
            finally:
                connection.rollback()
                connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY}
                )
                connection.commit()
        return

    database = engine.url.database
    assert database is not None, "a SQLite engine always names its file"
    lock_path = Path(database + ".migrate-lock")
    with open(lock_path, "a+b") as lock_file:
        # flock blocks until the process holding the lock closes the file,
        # which the kernel also does when that process dies.
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            with engine.connect() as connection:
                yield connection
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
