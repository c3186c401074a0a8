"""One scheduler per SQLite file.

Several schedulers on one PostgreSQL database share the work through fire
claims. SQLite is the single-machine setup, so a second scheduler on the
same file is a mistake (two terminals, a forgotten service). It is rejected
at start through an exclusive lock on the file ``DATABASE.scheduler-lock``,
which the kernel releases when the holding process ends, however it ends.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from sqlalchemy import Engine

from cronledger.errors import CronledgerError


class SchedulerLockError(CronledgerError):
    """Another scheduler already runs on the same SQLite database file."""


class SchedulerLock:
    """The exclusive lock of the one scheduler on a SQLite file; nothing on PostgreSQL."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._file: IO[str] | None = None

    @property
    def exclusive(self) -> bool:
        """True while this process holds the lock, so no other scheduler can run."""
        return self._file is not None

    def acquire(self) -> None:
        """Take the lock on SQLite; raise SchedulerLockError when another scheduler holds it."""
        if self.engine.dialect.name != "sqlite":
            return

        database = self.engine.url.database
        if not database or database == ":memory:":
            raise SchedulerLockError(
                "the scheduler needs a database file or PostgreSQL, not an in-memory SQLite "
                "database; use a URL such as sqlite:///cronledger.db"
            )
        path = Path(database + ".scheduler-lock")
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - kept open while running
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise SchedulerLockError(
                f"another scheduler (process {holder}) is already running on the SQLite "
                f"database {database}; stop it first, or use PostgreSQL to run schedulers "
                "on several hosts"
            ) from None

        # The holder's pid, for the message above; informational only.
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
