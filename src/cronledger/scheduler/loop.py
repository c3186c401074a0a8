"""The scheduler loop: run each job of ``cronledger.toml`` on its schedule.

One pass of the loop finds the due fire times of every job, claims them in
the database in one transaction (see claims.py), and starts a thread per
run. It then sleeps until the next fire time, at most ``MAX_SLEEP`` seconds,
so that a clock change or a reload request is noticed quickly.

On start the scheduler syncs the config file's services to the database and
runs at most one catch-up run per job (see planner.catch_up_fire). A reload
(``request_reload``, on SIGHUP) reads the file again: a valid file replaces
the jobs and is synced, an invalid one is reported and the old jobs stay.
A stop starts no new run, waits up to ``stop_timeout`` for the running
ones, then ends them and records them as failed.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from cronledger.durations import humanize_duration
from cronledger.recorder import Recorder, get_recorder, utc_now
from cronledger.schedule import Schedule
from cronledger.scheduler.changes import describe_changes
from cronledger.scheduler.claims import (
    ClaimResult,
    Fire,
    claim_fires,
    finish_claim,
    load_service_states,
)
from cronledger.scheduler.lock import SchedulerLock
from cronledger.scheduler.planner import (
    catch_up_fire,
    due_fire_times,
    latest_fire_at_or_before,
    next_fire_after,
    should_skip,
)
from cronledger.scheduler.runner import AsyncJobs, JobRun
from cronledger.settings import Config, ConfigError, JobSettings, ServiceSettings, load_config
from cronledger.store.engine import get_engine
from cronledger.store.migrate import ensure_schema
from cronledger.store.services import sync_services
from cronledger.store.urls import display_url

log = logging.getLogger(__name__)

# Maximum sleep of the loop, in seconds.
MAX_SLEEP = 1.0

# Minimum seconds between two log lines about failed claims.
CLAIM_ERROR_LOG_SECONDS = 60.0

# Seconds a stop waits for jobs to exit after SIGKILL before it gives up on them.
FINAL_WAIT = 5.0


@dataclass
class _Planned:
    """A job with its service settings and its next fire time."""

    job: JobSettings
    settings: ServiceSettings
    schedule: Schedule
    next_fire: datetime


class Scheduler:
    """Runs the jobs of one config file against one database."""

    name = "scheduler"

    def __init__(
        self,
        config: Config,
        database_url: str | None,
        spool_dir: str | None = None,
        *,
        stdout: BinaryIO | None = None,
        stderr: BinaryIO | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.config = config
        self.database_url = database_url
        self.spool_dir = spool_dir
        self.recorder: Recorder = get_recorder(database_url, spool_dir)
        self.engine: Engine = get_engine(self.recorder.url)
        self.lock = SchedulerLock(self.engine)
        self.clock = clock
        self._stdout = stdout
        self._stderr = stderr
        self._planned: dict[str, _Planned] = {}
        self._running: dict[str, JobRun] = {}
        self._running_count: Counter[str] = Counter()
        self._running_lock = threading.Lock()
        self._reload_requested = threading.Event()
        self._async_jobs = AsyncJobs()
        self._paused_noted: set[str] = set()
        self._claim_failures = 0
        self._claim_failure_logged = -CLAIM_ERROR_LOG_SECONDS
        # Where commands write their item counts (CRONLEDGER_ITEMS_FILE).
        self._items_dir = Path(tempfile.mkdtemp(prefix="cronledger-scheduler-"))

    @property
    def database_label(self) -> str:
        return display_url(self.recorder.url)

    @property
    def jobs(self) -> dict[str, JobSettings]:
        return dict(self.config.jobs)

    def open(self) -> None:
        """Prepare the database, take the SQLite lock and sync the services.

        Raises SchedulerLockError when another scheduler uses the same
        SQLite file, and SQLAlchemyError when the database is unusable.
        """
        ensure_schema(self.engine)
        self.lock.acquire()
        _add_import_folder(self.config.path)
        self._sync(self.config)

    def request_reload(self) -> None:
        """Ask the loop to read the config file again; safe from a signal handler."""
        self._reload_requested.set()

    # The supervisor calls reload() on SIGHUP.
    reload = request_reload

    def run(self, stop: threading.Event) -> None:
        """Run jobs until ``stop`` is set, then stop gracefully."""
        try:
            now = self.clock()
            self._plan(self.config, now, keep=False)
            log.info(
                "scheduler started: %d %s from %s on %s",
                len(self._planned),
                "job" if len(self._planned) == 1 else "jobs",
                self.config.path,
                self.database_label,
            )
            self._catch_up(now)
            self._loop(stop)
        finally:
            self._shutdown()

    def _loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if self._reload_requested.is_set():
                self._reload_requested.clear()
                self._reload()

            now = self.clock()
            due: list[Fire] = []
            for name, planned in self._planned.items():
                fires, planned.next_fire = due_fire_times(
                    planned.schedule,
                    planned.next_fire,
                    now,
                    planned.settings.grace,
                )
                due.extend(Fire(name, at) for at in fires)
            if due:
                self._dispatch(due, now)

            stop.wait(self._sleep_seconds())

    def _sleep_seconds(self) -> float:
        if not self._planned:
            return MAX_SLEEP
        wake = min(planned.next_fire for planned in self._planned.values())
        seconds = (wake - self.clock()).total_seconds()
        return min(max(seconds, 0.0), MAX_SLEEP)

    def _plan(self, config: Config, now: datetime, *, keep: bool) -> None:
        """Compute the next fire time of every job; ``keep`` keeps unchanged ones."""
        planned: dict[str, _Planned] = {}
        for name, job in config.jobs.items():
            settings = config.services[name]
            schedule = settings.schedule
            assert schedule is not None  # the loader rejects a job without one
            previous = self._planned.get(name)
            if keep and previous is not None and previous.schedule == schedule:
                planned[name] = _Planned(job, settings, schedule, previous.next_fire)
                continue
            planned[name] = _Planned(job, settings, schedule, next_fire_after(schedule, now))
        self._planned = planned

    def _catch_up(self, now: datetime) -> None:
        """Run, once, the latest fire time that each job missed while no scheduler ran."""
        try:
            states = load_service_states(self.engine, list(self._planned))
        except SQLAlchemyError as error:
            log.warning("no catch-up runs: cannot read the services: %s", _short(error))
            return

        fires = []
        for name, planned in self._planned.items():
            state = states.get(name)
            schedule = planned.schedule
            fire = catch_up_fire(
                schedule,
                now,
                planned.settings.grace,
                known_since=state.created_at if state else None,
                last_start=state.last_run_at if state else None,
            )
            if fire is not None:
                log.info("service %s: catch-up run for the missed fire time %s", name, _at(fire))
                fires.append(Fire(name, fire, catch_up=True))
            elif state is not None and state.last_run_at is not None:
                latest = latest_fire_at_or_before(schedule, now)
                if state.last_run_at < latest and now - latest > planned.settings.grace:
                    log.info(
                        "service %s: no catch-up run: the missed fire time %s is older than "
                        "the grace period of %s",
                        name,
                        _at(latest),
                        humanize_duration(planned.settings.grace),
                    )
        if fires:
            self._dispatch(fires, now)

    def _dispatch(self, fires: list[Fire], now: datetime) -> None:
        jobs = {name: planned.job for name, planned in self._planned.items()}
        with self._running_lock:
            running_here = dict(self._running_count)
        try:
            result = claim_fires(
                self.engine, fires, jobs, now, self.config.scheduler.kill_delay, running_here
            )
        except SQLAlchemyError as error:
            result = self._claim_without_database(fires, running_here, error)

        for fire in result.skipped:
            log.info(
                "service %s: skipped the fire time %s: the previous run is still running",
                fire.service_name,
                _at(fire.scheduled_at),
            )
        self._note_paused(fires, result)
        for fire in result.lost:
            log.debug(
                "service %s: fire time %s runs on another scheduler",
                fire.service_name,
                _at(fire.scheduled_at),
            )
        # Every command is started before any thread that follows one, because
        # starting a thread waits for the threads already busy.
        started = [
            self._spawn(jobs[fire.service_name], fire, run_key) for fire, run_key in result.run
        ]
        for run in started:
            run.start()

    def _claim_without_database(
        self, fires: list[Fire], running_here: dict[str, int], error: SQLAlchemyError
    ) -> ClaimResult:
        """Decide without claims: run on SQLite, where no other scheduler can run them."""
        self._claim_failures += len(fires)
        # An outage fails every pass, so the error is logged once a minute.
        now = time.monotonic()
        should_log = now - self._claim_failure_logged >= CLAIM_ERROR_LOG_SECONDS
        if should_log:
            self._claim_failure_logged = now
        if not self.lock.exclusive:
            if should_log:
                log.error(
                    "%d due fire times not run since the last report: their claims failed, "
                    "and without a claim another scheduler might run them too: %s",
                    self._claim_failures,
                    _short(error),
                )
                self._claim_failures = 0
            return ClaimResult()

        if should_log:
            log.error(
                "fire claims not recorded (%s); %d due jobs run without a claim since the last "
                "report, because no other scheduler uses this SQLite file",
                _short(error),
                self._claim_failures,
            )
            self._claim_failures = 0
        result = ClaimResult()
        busy = {name for name, count in running_here.items() if count > 0}
        for fire in fires:
            job = self._planned[fire.service_name].job
            if should_skip(job.overlap, fire.service_name in busy):
                result.skipped.append(fire)
                continue
            busy.add(fire.service_name)
            result.run.append((fire, uuid.uuid4().hex))
        return result

    def _note_paused(self, fires: list[Fire], result: ClaimResult) -> None:
        """Log a pause or resume once, not on every fire time."""
        paused_now = {fire.service_name for fire in result.paused}
        for name in sorted(paused_now - self._paused_noted):
            log.info("service %s is paused; its fire times are not run until it is resumed", name)
        claimed = {fire.service_name for fire in fires} - paused_now
        for name in sorted(self._paused_noted & claimed):
            log.info("service %s was resumed; its jobs run again", name)
        self._paused_noted = (self._paused_noted - claimed) | paused_now

    def _spawn(self, job: JobSettings, fire: Fire, run_key: str) -> JobRun:
        run = JobRun(
            job,
            fire,
            run_key,
            self.recorder,
            database_url=self.database_url,
            spool_dir=self.spool_dir,
            kill_delay=self.config.scheduler.kill_delay,
            async_jobs=self._async_jobs,
            on_finish=self._finished,
            stdout=self._stdout,
            stderr=self._stderr,
            items_dir=self._items_dir,
        )
        with self._running_lock:
            self._running[run_key] = run
            self._running_count[job.service_name] += 1
        run.spawn()
        log.debug(
            "service %s: run %s started for %s", job.service_name, run_key, _at(fire.scheduled_at)
        )
        return run

    def _finished(self, run: JobRun) -> None:
        try:
            finish_claim(self.engine, run.fire, self.clock())
        except SQLAlchemyError as error:
            log.warning(
                "service %s: run %s finished but its claim was not updated, so the overlap "
                "check counts it as running until its timeout passes: %s",
                run.job.service_name,
                run.run_key,
                _short(error),
            )
        with self._running_lock:
            self._running.pop(run.run_key, None)
            self._running_count[run.job.service_name] -= 1
        log.info(
            "service %s: run %s for %s ended: %s",
            run.job.service_name,
            run.run_key,
            _at(run.fire.scheduled_at),
            run.status or "not recorded",
        )

    def _reload(self) -> None:
        log.info("reloading %s", self.config.path)
        try:
            config = load_config(self.config.path)
        except ConfigError as error:
            for problem in error.problems:
                log.error("config not reloaded, the previous one stays in use: %s", problem)
            return

        for change in describe_changes(self.config, config):
            log.info("reload: %s", change)
        if config.database_url != self.config.database_url:
            log.warning("reload: database_url changed; restart the scheduler to use it")
        self._plan(config, self.clock(), keep=True)
        self.config = config
        self._sync(config)

    def _sync(self, config: Config) -> None:
        try:
            result = sync_services(self.engine, config, self.clock())
        except SQLAlchemyError as error:
            log.warning("services not synced from %s: %s", config.path, _short(error))
            return
        log.info(
            "synced %s: %d added, %d updated", config.path, len(result.added), len(result.updated)
        )

    def _shutdown(self) -> None:
        with self._running_lock:
            running = list(self._running.values())
        stop_timeout = self.config.scheduler.stop_timeout
        if running:
            log.info(
                "stopping: no new runs; waiting up to %s s for %d running jobs",
                f"{stop_timeout.total_seconds():g}",
                len(running),
            )
        _join_all(running, time.monotonic() + stop_timeout.total_seconds())

        left = [run for run in running if run.thread.is_alive()]
        if left:
            names = ", ".join(sorted({run.job.service_name for run in left}))
            log.warning("stop timeout passed; ending %d running jobs (%s)", len(left), names)
            for run in left:
                run.stop()
            kill_delay = self.config.scheduler.kill_delay.total_seconds()
            _join_all(left, time.monotonic() + kill_delay + FINAL_WAIT)
        for run in left:
            if run.thread.is_alive():
                log.error(
                    "service %s: run %s did not end; it stays started until the monitor "
                    "times it out",
                    run.job.service_name,
                    run.run_key,
                )

        self._async_jobs.close()
        shutil.rmtree(self._items_dir, ignore_errors=True)
        self.lock.release()
        log.info("scheduler stopped")


def _join_all(runs: list[JobRun], deadline: float) -> None:
    for run in runs:
        run.thread.join(max(deadline - time.monotonic(), 0.0))


def _add_import_folder(config_path: Path) -> None:
    """Let ``callable = "module:function"`` import modules beside the config file."""
    folder = str(config_path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)


def _at(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def _short(error: Exception) -> str:
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__
