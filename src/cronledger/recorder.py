"""The one write path for run events: database first, spool on failure.

Every producer (the logger, ``track()``, ``cronledger run``) hands its start
and finish events to a ``Recorder``. ``start`` and ``finish`` catch every
error (see ``_write_or_spool``): when the database cannot take an event, for
whatever reason, the event goes to the local spool, which is replayed on the
next successful contact. Only a failing spool loses it, and that is logged.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from cronledger.settings import ServiceSettings
from cronledger.spool import Event, EventRejected, Spool, default_spool_root
from cronledger.store import executions
from cronledger.store.engine import get_engine
from cronledger.store.executions import FinishEvent, StartEvent
from cronledger.store.migrate import ensure_schema
from cronledger.store.services import declare_service
from cronledger.store.urls import display_url, parse_database_url, resolve_database_url

log = logging.getLogger(__name__)

T = TypeVar("T")

# Errors that mean "the database is not reachable right now": the event is
# spooled and a later replay will succeed.
UNAVAILABLE_ERRORS = (OperationalError, InterfaceError)

_recorders: dict[tuple[str, str], Recorder] = {}
_recorders_lock = threading.Lock()


def get_recorder(database_url: str | None = None, spool_dir: str | Path | None = None) -> Recorder:
    """Return the shared recorder for a database URL and spool directory.

    Raises ``InvalidDatabaseURLError`` for a URL that cannot be used at all,
    because no amount of waiting fixes a typo.
    """
    url = parse_database_url(resolve_database_url(database_url))
    root = Path(spool_dir) if spool_dir is not None else default_spool_root()
    key = (url.render_as_string(hide_password=False), str(root))
    with _recorders_lock:
        recorder = _recorders.get(key)
        if recorder is None:
            recorder = Recorder(url, root)
            _recorders[key] = recorder
        return recorder


def forget_recorders() -> None:
    """Drop the shared recorders, so the next call builds new ones (tests)."""
    with _recorders_lock:
        _recorders.clear()


def utc_now() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


def new_start(service_name: str, run_key: str | None = None) -> StartEvent:
    """Build the start event of a run that begins now in this process.

    ``run_key`` is generated unless the caller already chose one (the
    scheduler stores it with its fire claim before the run starts).
    """
    return StartEvent(
        run_key=run_key or uuid.uuid4().hex,
        service_name=service_name,
        started_at=utc_now(),
        host=socket.gethostname(),
        pid=os.getpid(),
    )


class Recorder:
    """Writes run events to one database, falling back to its spool."""

    def __init__(self, url: URL, spool_root: Path) -> None:
        self.url = url
        self.spool = Spool(spool_root, display_url(url))
        self._declared: dict[str, ServiceSettings] = {}

    @property
    def engine(self) -> Engine:
        return get_engine(self.url)

    def start(self, event: StartEvent) -> int | None:
        """Record a start; return the row id, or None if it was spooled."""
        return self._write_or_spool(event, lambda connection: self._apply_start(connection, event))

    def finish(self, event: FinishEvent) -> None:
        """Record the outcome of a run."""
        self._write_or_spool(event, lambda connection: self._apply_finish(connection, event))

    def declare(self, settings: ServiceSettings) -> None:
        """Store settings declared in code, once per process; failures are only logged."""
        if self._declared.get(settings.name) == settings:
            return
        try:
            self._write(lambda connection: declare_service(connection, settings, utc_now()))
        except SQLAlchemyError as error:
            log.warning("settings of service %s not stored: %s", settings.name, _short(error))
            return
        self._declared[settings.name] = settings

    def heartbeat(self, run_key: str) -> None:
        """Note that a run is alive; a heartbeat the database misses is dropped."""
        try:
            self._write(
                lambda connection: executions.record_heartbeat(connection, run_key, utc_now())
            )
        except SQLAlchemyError as error:
            log.debug("heartbeat of run %s not recorded: %s", run_key, error)

    def flush_spool(self) -> int:
        """Replay every spooled event; return how many reached the database.

        Raises the database error if the database is still unreachable.
        """
        ensure_schema(self.engine)
        return self._replay()

    def _write_or_spool(self, event: Event, write: Callable[[Connection], T]) -> T | None:
        try:
            result = self._write(write)
        except Exception as error:
            # Broad on purpose: besides database errors, a first use may fail
            # in the migration (a read-only directory for the SQLite lock
            # file, say), and tracking must never make the job fail.
            self._spool(event, error)
            return None

        if self.spool.pending():
            try:
                self._replay()
            except Exception as error:
                # The event itself is recorded; a replay problem must not fail the job.
                log.warning("replay of spooled events stopped, will retry later: %s", _short(error))
        return result

    def _write(self, write: Callable[[Connection], T]) -> T:
        ensure_schema(self.engine)
        autocommit = get_engine(self.url, autocommit=True)
        try:
            with autocommit.connect() as connection:
                return write(connection)
        except DBAPIError as error:
            if not error.connection_invalidated:
                raise
        # A pooled connection went stale (a server restart, say); the pool
        # dropped it, so one retry gets a fresh connection.
        with autocommit.connect() as connection:
            return write(connection)

    def _replay(self) -> int:
        def apply(event: Event) -> None:
            try:
                if isinstance(event, FinishEvent):
                    self._write(lambda connection: self._apply_finish(connection, event))
                else:
                    self._write(lambda connection: self._apply_start(connection, event))
            except UNAVAILABLE_ERRORS:
                raise
            except SQLAlchemyError as error:
                # The database is up but refuses this event for good, so it
                # is kept aside rather than blocking every later event.
                raise EventRejected(_short(error)) from error

        count = self.spool.replay(apply)
        if count:
            log.info("replayed %d spooled run events into %s", count, display_url(self.url))
        return count

    # The database trigger on cron_executions adds a new service to
    # cron_services, so no separate registration round trip is needed.
    def _apply_start(self, connection: Connection, event: StartEvent) -> int | None:
        return executions.record_start(connection, event)

    def _apply_finish(self, connection: Connection, event: FinishEvent) -> None:
        executions.record_finish(connection, event)

    def _spool(self, event: Event, error: Exception) -> None:
        run_key = event.start.run_key if isinstance(event, FinishEvent) else event.run_key
        try:
            path = self.spool.save(event)
        except OSError as spool_error:
            # The last resort: the event in the log, so a person can replay it.
            log.error(
                "run %s: database unavailable (%s) and the spool failed (%s); event lost: %r",
                run_key,
                _short(error),
                spool_error,
                event,
            )
            return
        log.warning(
            "run %s: database %s unavailable (%s); event saved to %s, replayed on the next "
            "contact or by `cronledger spool flush`",
            run_key,
            display_url(self.url),
            _short(error),
            path,
        )


def _short(error: Exception) -> str:
    text = str(getattr(error, "orig", None) or error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__
