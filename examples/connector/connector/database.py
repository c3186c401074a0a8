"""The connector's tables, kept in the same database as cronledger's.

One database for both means one URL to configure, one file to copy on
SQLite and one backup on PostgreSQL, which is how the connector ran before
cronledger too. The table names do not clash with cronledger's, which all
start with ``cron_``.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Dialect,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    text,
)
from sqlalchemy.schema import CreateTable
from sqlalchemy.types import TypeDecorator

EXAMPLE_DIR = Path(__file__).resolve().parent.parent

# The same variable the cronledger command and the Python API read, so the
# connector and cronledger always share a database.
ENV_DATABASE_URL = "CRONLEDGER_DATABASE_URL"
DEFAULT_DATABASE_URL = f"sqlite:///{EXAMPLE_DIR / 'cronledger.db'}"

# Job states, in the order a job goes through them.
AWAITING_PAYMENT = "awaiting_payment"
RUNNING = "running"
STARTED = "started"
COMPLETED = "completed"

PAYMENT_PENDING = "pending"
PAYMENT_PAID = "paid"

# Any fixed number works: it only has to be the same in every process.
_CREATE_TABLES_LOCK_ID = 7_160_742


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and read back timezone-aware, also on SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ValueError(f"expected a timezone-aware datetime, got {value!r}")
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


metadata = MetaData()

api_keys = Table(
    "api_keys",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("api_key", String(64), nullable=False),
    Column("refreshed_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
)

flows = Table(
    "flows",
    metadata,
    Column("id", String(100), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("description", Text, nullable=False, default=""),
    Column("price_cents", Integer, nullable=False),
    Column("synced_at", UTCDateTime(), nullable=False),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("flow_id", String(100), nullable=False),
    Column("state", String(30), nullable=False),
    Column("kodosumi_run_id", String(64)),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

payments = Table(
    "payments",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", Integer, ForeignKey("jobs.id"), nullable=False, unique=True),
    Column("amount_cents", Integer, nullable=False),
    Column("status", String(20), nullable=False),
    Column("paid_at", UTCDateTime()),
)


def database_url() -> str:
    """Return the URL from ``$CRONLEDGER_DATABASE_URL``, else the example's SQLite file."""
    return os.environ.get(ENV_DATABASE_URL, "").strip() or DEFAULT_DATABASE_URL


def connect(url: str | None = None) -> Engine:
    """Create an engine for ``url`` and make sure the connector's tables exist."""
    url = url or database_url()
    engine = _create_engine(url)
    create_tables(engine)
    return engine


def _create_engine(url: str) -> Engine:
    # Plain postgresql:// URLs, as teams write them, use the psycopg 3 driver
    # that cronledger installs.
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url.removeprefix(prefix)
    if url.startswith("sqlite"):
        # cronledger writes to the same file, so wait for its lock rather
        # than fail at once with "database is locked".
        return create_engine(url, connect_args={"timeout": 30})
    return create_engine(url, pool_pre_ping=True)


def create_tables(engine: Engine) -> None:
    """Create the connector's tables that do not exist yet.

    Several services may start at once, in threads of the scheduler or in
    separate processes, so a check followed by a plain CREATE could fail
    with "table already exists". CREATE TABLE IF NOT EXISTS settles that on
    SQLite. On PostgreSQL two concurrent IF NOT EXISTS can still collide in
    the catalogue, so an advisory lock serialises them there.
    """
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:lock_id)"), {"lock_id": _CREATE_TABLES_LOCK_ID}
            )
        for table in metadata.sorted_tables:
            connection.execute(CreateTable(table, if_not_exists=True))


def utc_now() -> datetime:
    return datetime.now(UTC)
