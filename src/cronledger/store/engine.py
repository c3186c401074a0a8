"""Engines: one pooled engine per database URL and process.

Every producer in a process shares one engine, so a job that records a run
every few seconds reuses its pooled connection instead of opening a new one
per call. After ``fork`` the child builds its own engine, because a pooled
connection must never be shared across processes.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL

from cronledger.store.urls import parse_database_url

log = logging.getLogger(__name__)

# Seconds to wait for a TCP connection to PostgreSQL before the write goes to
# the spool instead. Short, because a job must not hang on its monitoring.
CONNECT_TIMEOUT_SECONDS = 5

# Seconds a new SQLite file may take to switch to WAL mode while other
# processes make their first use of it at the same time.
WAL_SWITCH_SECONDS = 10

# Seconds SQLite waits for another process's write lock before failing.
SQLITE_BUSY_TIMEOUT_SECONDS = 30

_engines: dict[tuple[int, str, bool], Engine] = {}
_engines_lock = threading.Lock()


def get_engine(database_url: str | URL, *, autocommit: bool = False) -> Engine:
    """Return the shared engine for ``database_url`` in this process.

    ``autocommit=True`` gives a second engine, with a pool of its own, whose
    connections stay in autocommit mode. Each run event is one statement, and
    switching a pooled connection in and out of autocommit per checkout would
    cost extra round trips on every event.
    """
    url = database_url if isinstance(database_url, URL) else parse_database_url(database_url)
    key = (os.getpid(), url.render_as_string(hide_password=False), autocommit)

    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            if autocommit:
                engine = _create_engine(url, isolation_level="AUTOCOMMIT")
            else:
                # Readers (statistics, the monitor, migrations) are not on a
                # job's hot path, so a ping per checkout is worth it: after a
                # server restart their first query does not fail.
                engine = _create_engine(url, pool_pre_ping=True)
            _engines[key] = engine
        return engine


def dispose_engines() -> None:
    """Close every pooled connection of this process (tests and shutdown)."""
    with _engines_lock:
        for (pid, _, _), engine in list(_engines.items()):
            if pid == os.getpid():
                engine.dispose()
        _engines.clear()


def _create_engine(url: URL, **options: Any) -> Engine:
    if url.get_backend_name() == "sqlite":
        return _create_sqlite_engine(url, **options)
    return _create_postgresql_engine(url, **options)


def _create_postgresql_engine(url: URL, **options: Any) -> Engine:
    connect_args: dict[str, Any] = {
        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "application_name": "cronledger",
    }
    # The write engine has no pool_pre_ping: it would add a round trip to
    # every run event. A dropped connection surfaces as an error on use, and
    # the recorder retries once.
    return create_engine(
        url,
        pool_size=2,
        max_overflow=8,
        pool_recycle=1800,
        connect_args=connect_args,
        **options,
    )


def _create_sqlite_engine(url: URL, **options: Any) -> Engine:
    engine = create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
        **options,
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
        _use_wal(cursor)
        # NORMAL synchronous mode is durable against process crashes in WAL mode.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine


def _use_wal(cursor: Any) -> None:
    """Switch the database file to WAL mode, which lets readers and a writer overlap.

    The mode is stored in the file, so only the first connection to a new
    file switches it. That switch needs an exclusive lock, and SQLite reports
    "database is locked" at once, without its busy timeout, when another
    connection makes the same first use; so it is retried for a while. WAL
    only speeds things up, so a file left in its old mode still works.
    """
    deadline = time.monotonic() + WAL_SWITCH_SECONDS
    while cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        problem = "the journal mode did not change"
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as error:
            if "locked" not in str(error):
                raise
            problem = str(error)
        if time.monotonic() > deadline:
            log.warning("SQLite file left out of WAL mode: %s", problem)
            return
        time.sleep(0.05)
