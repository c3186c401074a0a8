"""Record runs from Python: ``track()``, ``@tracked`` and ``CronExecutionLogger``.

All three share one core, ``Tracker``, which builds the start and finish
events and hands them to the recorder. The async faces run the same calls
in a worker thread, so a slow database does not block the event loop.

Tracking never makes a job fail: database errors go to the spool and are
logged. Only a programming error in the call itself (an invalid service
name or item count) raises, before anything is written.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, overload

from cronledger.errors import InvalidValueError
from cronledger.recorder import Recorder, get_recorder, new_start, utc_now
from cronledger.settings import ServiceSettings
from cronledger.signals import RunTerminated, async_guard, signal_name, sync_guard
from cronledger.store.executions import FinishEvent, StartEvent
from cronledger.store.tables import COMPLETED, FAILED
from cronledger.text import MAX_ERROR_CHARS, clean_text
from cronledger.validation import MAX_ITEMS, validate_items, validate_service_name

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_heartbeats = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cronledger-heartbeat")


class Run:
    """One execution in progress, handed to the job by ``track()``."""

    def __init__(self, start: StartEvent, recorder: Recorder) -> None:
        self._start = start
        self._recorder = recorder
        self._items = 0
        self._error: str | None = None
        self.execution_id: int | None = None

    @property
    def service_name(self) -> str:
        return self._start.service_name

    @property
    def run_key(self) -> str:
        """The unique key of this run, also stored in ``cron_executions.run_key``."""
        return self._start.run_key

    @property
    def started_at(self) -> Any:
        return self._start.started_at

    @property
    def items_processed(self) -> int:
        return self._items

    @items_processed.setter
    def items_processed(self, value: int) -> None:
        self._items = validate_items(value)

    def add_items(self, count: int = 1) -> None:
        """Add ``count`` to the items processed by this run."""
        self.items_processed = self._items + validate_items(count)

    def fail(self, error: str) -> None:
        """Mark the run failed with ``error`` even if no exception escapes."""
        self._error = str(error)

    def heartbeat(self) -> None:
        """Record that the run is alive, without waiting for the database."""
        _heartbeats.submit(self._recorder.heartbeat, self.run_key)


class Tracker:
    """The shared core of every Python producer: one run, start to finish."""

    def __init__(
        self,
        service_name: str,
        database_url: str | None = None,
        spool_dir: str | Path | None = None,
        settings: ServiceSettings | None = None,
    ) -> None:
        self.service_name = validate_service_name(service_name)
        if settings is not None and settings.name != self.service_name:
            raise InvalidValueError(
                f"settings for service {settings.name!r} given to service {service_name!r}: "
                "use the same name in both"
            )
        self.settings = settings
        self.recorder = get_recorder(database_url, spool_dir)
        self.run: Run | None = None
        self._started_monotonic = 0.0

    def begin(self, run_key: str | None = None) -> Run:
        """Record the start of a run and return it; ``run_key`` is generated unless given."""
        if self.settings is not None:
            self.recorder.declare(self.settings)
        start = new_start(self.service_name, run_key)
        run = Run(start, self.recorder)
        run.execution_id = self.recorder.start(start)
        # The duration is the job's own: recording the start is not counted,
        # which matters for the first run of a process (connecting, creating
        # the schema) and for a start spooled after a database timeout.
        self._started_monotonic = time.monotonic()
        self.run = run
        return run

    def end(
        self,
        *,
        error: str | None = None,
        items_processed: int | None = None,
        status: str | None = None,
    ) -> None:
        """Record the end of the current run; ``error`` marks it failed.

        ``status`` overrides the status derived from ``error``; the scheduler
        passes timed_out for a function that exceeded its timeout.
        """
        run = self.run
        if run is None:
            raise RuntimeError(
                f"service {self.service_name!r}: no run in progress; call log_start() first"
            )
        if items_processed is not None:
            run.items_processed = items_processed

        duration_ms = round((time.monotonic() - self._started_monotonic) * 1000)
        error = error if error is not None else run._error
        event = FinishEvent(
            start=run._start,
            status=status or (FAILED if error is not None else COMPLETED),
            finished_at=utc_now(),
            duration_ms=duration_ms,
            items_processed=run.items_processed,
            error_message=clean_text(error, MAX_ERROR_CHARS),
        )
        self.recorder.finish(event)
        self.run = None


def describe_exception(error: BaseException) -> str | None:
    """Return the error message stored for a run that raised ``error``.

    None means the run completed: ``SystemExit(0)`` is a job that chose to
    stop successfully.
    """
    if isinstance(error, RunTerminated):
        return f"terminated by {error.signal_name}"
    if isinstance(error, KeyboardInterrupt):
        return "interrupted by SIGINT (KeyboardInterrupt)"
    if isinstance(error, SystemExit) and error.code in (0, None):
        return None
    summary = f"{type(error).__name__}: {error}".rstrip(": ")
    if error.__traceback__ is None and error.__cause__ is None and error.__context__ is None:
        # An exception that was never raised, such as one handed to
        # log_completion, has no traceback to add.
        return summary
    details = "".join(traceback.format_exception(error)).rstrip()
    return f"{summary}\n\n{details}"


class track:
    """Track one run of ``service_name`` as a sync or async context manager.

    ::

        with track("flow-sync") as run:
            run.items_processed += copy_flows()

        async with track("payment-checker") as run:
            run.add_items(await check_payments())

    An exception marks the run failed with its type and message, and is
    re-raised. SIGTERM and SIGINT mark it failed with the signal's name.
    ``settings`` declares the service's schedule and limits from code; a
    declaration in the config file takes precedence.
    """

    def __init__(
        self,
        service_name: str,
        *,
        database_url: str | None = None,
        spool_dir: str | Path | None = None,
        settings: ServiceSettings | None = None,
    ) -> None:
        self._tracker = Tracker(service_name, database_url, spool_dir, settings)
        self._guarded = False
        self._task: asyncio.Task[Any] | None = None
        self._signals: list[int] = []

    def __enter__(self) -> Run:
        run = self._tracker.begin()
        self._guarded = sync_guard.enter()
        return run

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._tracker.end(error=describe_exception(exc) if exc is not None else None)
        finally:
            if self._guarded:
                sync_guard.leave()

    async def __aenter__(self) -> Run:
        run = await asyncio.to_thread(self._tracker.begin)
        self._task = asyncio.current_task()
        if self._task is not None:
            self._signals = async_guard(asyncio.get_running_loop()).enter(self._task)
        return run

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        guard = async_guard(asyncio.get_running_loop())
        if self._task is not None:
            guard.leave(self._task)

        if self._signals and isinstance(exc, asyncio.CancelledError):
            signum = self._signals[0]
            # Written in the loop's thread, because the process is ending and a
            # second cancellation must not interrupt the write.
            self._tracker.end(error=_signal_error(signum))
            if guard.signalled_runs():
                # asyncio stops the loop on the first SystemExit or
                # KeyboardInterrupt that a task raises. So only the last run to
                # record the signal ends the process, and the others stay cancelled.
                return
            if signal_name(signum) == "SIGINT":
                raise KeyboardInterrupt
            raise RunTerminated(signum)

        error = describe_exception(exc) if exc is not None else None
        if isinstance(exc, asyncio.CancelledError):
            error = "cancelled (asyncio.CancelledError)"
        await asyncio.to_thread(self._tracker.end, error=error)


def _signal_error(signum: int) -> str:
    name = signal_name(signum)
    if name == "SIGINT":
        return "interrupted by SIGINT (KeyboardInterrupt)"
    return f"terminated by {name}"


@overload
def tracked(func: Callable[P, R], /) -> Callable[P, R]: ...
@overload
def tracked(
    name: str | None = None,
    /,
    *,
    database_url: str | None = None,
    spool_dir: str | Path | None = None,
    settings: ServiceSettings | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...
def tracked(
    name: Any = None,
    /,
    *,
    database_url: str | None = None,
    spool_dir: str | Path | None = None,
    settings: ServiceSettings | None = None,
) -> Any:
    """Track every call of a sync or async function as one run.

    ``@tracked("flow-sync")`` names the service; a bare ``@tracked`` uses the
    function's name. A function that returns an int reports it as the items
    processed; any other return value is passed through and counts 0.
    """
    if callable(name):
        return tracked(None)(name)
    if name is not None:
        validate_service_name(name)

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        service = name or func.__name__

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                async with track(
                    service, database_url=database_url, spool_dir=spool_dir, settings=settings
                ) as run:
                    result = await func(*args, **kwargs)
                    _count_result(run, result)
                    return result

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with track(
                service, database_url=database_url, spool_dir=spool_dir, settings=settings
            ) as run:
                result = func(*args, **kwargs)
                _count_result(run, result)
                return result

        return wrapper

    return decorate


def _count_result(run: Run, result: object) -> None:
    if not isinstance(result, int) or isinstance(result, bool):
        return
    if 0 <= result <= MAX_ITEMS:
        run.add_items(result)
        return
    # The function's own return value passes through untouched, so a bad
    # count is reported in the log rather than raised into the caller.
    log.warning(
        "service %s: ignored invalid item count %d returned by the function; "
        "return an integer from 0 to %d to count items",
        run.service_name,
        result,
        MAX_ITEMS,
    )


class CronExecutionLogger:
    """Log the runs of one service, one at a time, with two awaited calls.

    ::

        cron_logger = CronExecutionLogger("flow-sync", database_url)
        await cron_logger.log_start()
        try:
            items = await sync_flows()
        except Exception as exc:
            await cron_logger.log_completion(0, str(exc))
            raise
        else:
            await cron_logger.log_completion(items)

    ``database_url`` may be a plain ``postgresql://`` URL; without it the
    ``CRONLEDGER_DATABASE_URL`` environment variable or ``./cronledger.db``
    is used.
    """

    def __init__(
        self,
        service_name: str,
        database_url: str | None = None,
        *,
        spool_dir: str | Path | None = None,
        settings: ServiceSettings | None = None,
    ) -> None:
        self.service_name = validate_service_name(service_name)
        self._tracker = Tracker(service_name, database_url, spool_dir, settings)

    @property
    def execution_id(self) -> int | None:
        """The id of the current run's row, or None while it waits in the spool."""
        run = self._tracker.run
        return run.execution_id if run is not None else None

    async def log_start(self) -> int | None:
        """Record the start of a run and return its execution id.

        Returns None when the database was unreachable and the start was
        saved to the spool; the row gets its id when the spool is replayed.
        """
        run = await asyncio.to_thread(self._tracker.begin)
        return run.execution_id

    async def log_completion(
        self, items_processed: int = 0, error: str | BaseException | None = None
    ) -> None:
        """Record the end of the run: failed if ``error`` is given, else completed.

        An invalid ``items_processed`` raises InvalidValueError after the run
        is recorded as failed with that error, so the run does not stay open.
        """
        try:
            validate_items(items_processed)
        except InvalidValueError as invalid:
            await asyncio.to_thread(self._tracker.end, error=f"{invalid}", items_processed=0)
            raise
        message: str | None
        if isinstance(error, BaseException):
            message = describe_exception(error) or str(error)
        else:
            message = error if error is None else str(error)
        await asyncio.to_thread(self._tracker.end, error=message, items_processed=items_processed)
