"""Run one job of the scheduler, a command or a Python callable, and record it.

A command runs through ``cronledger.wrapper.CommandRun``, the code path of
``cronledger run``. A callable is recorded by ``cronledger.tracking.Tracker``,
the core of ``track()``. So a run looks the same in the database whichever
way it was started.

A command that exceeds its timeout gets SIGTERM on its process group, and
SIGKILL after the kill delay. An async callable is cancelled. A sync callable
cannot be stopped from outside: its run is recorded as timed_out when the
timeout passes, and the function keeps running in its thread until it
returns (its result is then only logged).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO

from cronledger.durations import humanize_duration
from cronledger.recorder import Recorder
from cronledger.scheduler.claims import Fire
from cronledger.settings import JobSettings
from cronledger.store.tables import COMPLETED, FAILED, TIMED_OUT
from cronledger.tracking import Tracker, describe_exception
from cronledger.validation import MAX_ITEMS
from cronledger.wrapper import CommandRun, ProcessControl

log = logging.getLogger(__name__)

STOPPED_MESSAGE = "stopped by the scheduler's shutdown before it finished"


class JobRun:
    """One run of a job in its own thread, from start to its recorded finish."""

    def __init__(
        self,
        job: JobSettings,
        fire: Fire,
        run_key: str,
        recorder: Recorder,
        *,
        database_url: str | None,
        spool_dir: str | None,
        kill_delay: timedelta,
        async_jobs: AsyncJobs,
        on_finish: Callable[[JobRun], None],
        stdout: BinaryIO | None = None,
        stderr: BinaryIO | None = None,
        items_dir: Path | None = None,
    ) -> None:
        self.job = job
        self.fire = fire
        self.run_key = run_key
        self.recorder = recorder
        self.database_url = database_url
        self.spool_dir = spool_dir
        self.status: str | None = None
        self._async_jobs = async_jobs
        self._on_finish = on_finish

        self._control = ProcessControl(job.timeout.total_seconds(), kill_delay.total_seconds())
        self._command_run: CommandRun | None = None
        if job.command is not None:
            command = job.command
            argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
            self._command_run = CommandRun(
                recorder,
                job.service_name,
                argv,
                stdout=stdout,
                stderr=stderr,
                run_key=run_key,
                cwd=job.working_dir,
                environment=job.environment,
                control=self._control,
                items_dir=items_dir,
            )

        self._stop_requested = threading.Event()
        # Set by stop() and by the end of a callable, to end the wait in _call.
        self._wake = threading.Event()
        self.thread = threading.Thread(
            target=self._run, name=f"cronledger-job-{job.service_name}", daemon=True
        )

    def spawn(self) -> None:
        """Start the command, if the job has one; ``start`` then follows it in a thread."""
        if self._command_run is not None:
            self._command_run.spawn()

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """End the run early: SIGTERM, then SIGKILL for a command; cancel for a callable."""
        self._stop_requested.set()
        self._control.end()
        self._wake.set()

    def _run(self) -> None:
        try:
            if self._command_run is not None:
                self.status = self._command_run.finish().status
            elif self.job.callable is not None:
                self.status = self._run_callable(self.job.callable)
        except Exception:
            # A bug here must not kill the scheduler; the run stays started
            # and the monitor times it out.
            log.exception(
                "service %s: run %s failed in the scheduler", self.job.service_name, self.run_key
            )
        finally:
            self._on_finish(self)

    def _run_callable(self, target: str) -> str:
        # The same URL and spool give the tracker this scheduler's shared recorder.
        tracker = Tracker(self.job.service_name, self.database_url, self.spool_dir)
        tracker.begin(self.run_key)
        try:
            function = resolve_callable(target)
        except (ImportError, AttributeError, TypeError) as error:
            tracker.end(error=f"cannot load {target}: {error}")
            return FAILED

        outcome = self._call(function)
        tracker.end(error=outcome.error, items_processed=outcome.items, status=outcome.status)
        return outcome.status or (FAILED if outcome.error else COMPLETED)

    def _call(self, function: Callable[[], Any]) -> _Outcome:
        """Call ``function`` and wait for it, its timeout, or a stop."""
        if inspect.iscoroutinefunction(function):
            future = self._async_jobs.submit(function())
        else:
            future = _call_in_thread(function, f"cronledger-call-{self.job.service_name}")
        future.add_done_callback(lambda _future: self._wake.set())

        self._wake.wait(self.job.timeout.total_seconds())
        if future.done():
            return _outcome_of(future, self.job.service_name)

        future.cancel()  # cancels an async function; a sync one keeps running
        if self._stop_requested.is_set():
            return _Outcome(error=STOPPED_MESSAGE, status=FAILED)
        limit = humanize_duration(self.job.timeout)
        note = "" if future.cancelled() else "; the function keeps running until it returns"
        return _Outcome(error=f"timed out after {limit}{note}", status=TIMED_OUT)


class _Outcome:
    def __init__(self, error: str | None = None, items: int = 0, status: str | None = None):
        self.error = error
        self.items = items
        self.status = status


def _outcome_of(future: Future[Any], service_name: str) -> _Outcome:
    try:
        result = future.result()
    except asyncio.CancelledError:
        return _Outcome(error="cancelled (asyncio.CancelledError)")
    except BaseException as error:
        return _Outcome(error=describe_exception(error))
    return _Outcome(items=_items_of(result, service_name))


def _items_of(result: object, service_name: str) -> int:
    """Return the items processed that a function returned, as ``@tracked`` counts them."""
    if not isinstance(result, int) or isinstance(result, bool):
        return 0
    if 0 <= result <= MAX_ITEMS:
        return result
    log.warning(
        "service %s: ignored invalid item count %d returned by the function; "
        "return an integer from 0 to %d to count items",
        service_name,
        result,
        MAX_ITEMS,
    )
    return 0


def _call_in_thread(function: Callable[[], Any], name: str) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_running_or_notify_cancel()

    def call() -> None:
        try:
            result = function()
        except BaseException as error:  # the job's own failure, recorded as such
            future.set_exception(error)
            return
        future.set_result(result)

    # A daemon thread, because a function that never returns must not keep
    # the scheduler from exiting.
    threading.Thread(target=call, name=name, daemon=True).start()
    return future


def resolve_callable(target: str) -> Callable[[], Any]:
    """Import ``"module:function"`` and return the function.

    Raises ImportError, AttributeError or TypeError with a message that
    names the target.
    """
    module_name, _, attribute_path = target.partition(":")
    module = importlib.import_module(module_name)
    value: Any = module
    for attribute in attribute_path.split("."):
        value = getattr(value, attribute)
    if not callable(value):
        raise TypeError(f"{target} is a {type(value).__name__}, not a function")
    function: Callable[[], Any] = value
    return function


class AsyncJobs:
    """One event loop in a thread of its own that runs every async callable."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, coroutine: Coroutine[Any, Any, Any]) -> Future[Any]:
        """Run ``coroutine`` on the loop; cancelling the future cancels its task."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._running_loop())

    def close(self) -> None:
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=5)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=loop.run_forever, name="cronledger-async-jobs", daemon=True
                )
                self._thread.start()
                self._loop = loop
            return self._loop
