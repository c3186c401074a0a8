"""Health of a service, computed from its settings, its recent runs and the time.

``evaluate_health`` is a pure function: it reads no clock and no database.
The first state in this list that applies wins:

1. ``paused``: an operator paused the service.
2. ``stuck``: a run has been ``started`` for longer than max runtime. Each of
   several overlapping runs is timed on its own.
3. ``failing``: the service entered failing after ``failure_threshold``
   failed or timed-out runs in a row, and has not since had
   ``recovery_threshold`` completed runs in a row. Finished runs are walked
   oldest to newest through this two-threshold state machine.
4. ``late``: the service has a schedule and ``now > expected + grace``. The
   expected start is ``schedule.next_after(newest start)``, where a run in
   progress counts as a start. With no run it is
   ``schedule.next_after(first_seen)``. With neither, the service cannot be
   late. So a service without a schedule is never late.
5. ``running``: a run is in progress within its max runtime.
6. ``healthy``: at least one run, and none of the above.
7. ``never_run``: no run yet, and not late.

Boundaries are strict: a run exactly ``max_runtime`` old is not stuck, and a
service exactly ``grace`` past its expected start is not late.

The caller passes every run still ``started`` and at least the newest
``runs_needed(settings)`` finished runs. The state machine starts as not
failing at the oldest run passed, so a window that contains no complete streak
of either threshold cannot see that the service was failing before it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from enum import StrEnum

from cronledger.durations import humanize_duration
from cronledger.schedule import CronSchedule, load_time_zone
from cronledger.settings import ServiceSettings

__all__ = [
    "FAILED_STATUSES",
    "FINISHED_STATUSES",
    "RUN_STATUSES",
    "Health",
    "HealthState",
    "RunSnapshot",
    "evaluate_health",
    "runs_needed",
    "shorten_error",
]

RUN_STATUSES = frozenset({"started", "completed", "failed", "timed_out"})
FINISHED_STATUSES = frozenset({"completed", "failed", "timed_out"})
FAILED_STATUSES = frozenset({"failed", "timed_out"})

MAX_REASON_ERROR_CHARS = 200


class HealthState(StrEnum):
    """Health states, in order of precedence."""

    PAUSED = "paused"
    STUCK = "stuck"
    FAILING = "failing"
    LATE = "late"
    RUNNING = "running"
    HEALTHY = "healthy"
    NEVER_RUN = "never_run"


@dataclass(frozen=True)
class RunSnapshot:
    """One run of a service as recorded, with timezone-aware times.

    ``status`` is ``started`` while the run is in progress, then
    ``completed``, ``failed`` or ``timed_out``. Raises ValueError for a naive
    datetime or an unknown status.
    """

    id: int | None
    started_at: datetime
    finished_at: datetime | None
    status: str
    error_message: str | None = None

    def __post_init__(self) -> None:
        _require_aware(self.started_at, "started_at")
        if self.finished_at is not None:
            _require_aware(self.finished_at, "finished_at")
        if self.status not in RUN_STATUSES:
            allowed = ", ".join(sorted(RUN_STATUSES))
            raise ValueError(f"invalid run status {self.status!r}: use one of {allowed}")


@dataclass(frozen=True)
class Health:
    """The health of a service at one instant.

    ``next_expected`` is the start the schedule expects next, in UTC: the
    pending start derived from the newest run (in the past while in grace or
    late), else for cron the next fire time after now. It is None when
    paused, without a schedule, or for an interval schedule with nothing to
    measure from. ``overdue_since`` is the missed expected start when late.
    ``stuck_run_ids`` lists the runs over max runtime, also when paused.
    """

    state: HealthState
    reason: str
    next_expected: datetime | None = None
    overdue_since: datetime | None = None
    stuck_run_ids: tuple[int, ...] = ()


def runs_needed(settings: ServiceSettings) -> int:
    """Return how many of the newest finished runs ``evaluate_health`` needs.

    The caller passes these plus every run still ``started``.
    """
    return max(settings.failure_threshold, settings.recovery_threshold) * 2 + 1


def evaluate_health(
    settings: ServiceSettings,
    runs: Iterable[RunSnapshot],
    now: datetime,
    *,
    first_seen: datetime | None = None,
    resumed_at: datetime | None = None,
) -> Health:
    """Evaluate the health of a service at ``now``.

    ``runs`` are the service's recent runs (see ``runs_needed``). They are
    sorted newest first by start here, so any order works. ``first_seen`` is
    when the service was declared or first recorded, which makes a service
    with no run late once its first expected start plus grace has passed.
    ``resumed_at`` is when an operator last resumed the service: fire times
    during the pause were not expected, so lateness counts from then.
    Raises ValueError for a naive ``now``, ``first_seen`` or ``resumed_at``.
    """
    _require_aware(now, "now")
    if first_seen is not None:
        _require_aware(first_seen, "first_seen")
    if resumed_at is not None:
        _require_aware(resumed_at, "resumed_at")

    newest_first = sorted(runs, key=lambda run: run.started_at, reverse=True)
    zone = load_time_zone(settings.timezone)
    in_progress = [run for run in newest_first if run.status == "started"]
    stuck = [run for run in in_progress if now - run.started_at > settings.max_runtime]
    stuck_ids = tuple(run.id for run in stuck if run.id is not None)

    if settings.paused:
        return Health(HealthState.PAUSED, "paused by an operator", stuck_run_ids=stuck_ids)

    expected = _expected_start(settings, newest_first, first_seen, resumed_at)
    next_expected = _next_expected(settings, expected, now)
    if stuck:
        reason = _stuck_reason(stuck, settings.max_runtime, now, zone)
        return Health(HealthState.STUCK, reason, next_expected, stuck_run_ids=stuck_ids)

    streak = _walk_failure_streaks(settings, newest_first)
    if streak.failing:
        reason = _failing_reason(streak, settings)
        return Health(HealthState.FAILING, reason, next_expected)

    if expected is not None and now > expected + settings.grace:
        overdue = humanize_duration(now - expected)
        reason = f"expected at {_clock(expected, zone, now)}, {overdue} overdue"
        return Health(HealthState.LATE, reason, expected, overdue_since=expected)

    if in_progress:
        return Health(HealthState.RUNNING, _running_reason(in_progress, now), next_expected)

    if newest_first:
        reason = _healthy_reason(streak, settings, zone, now)
        return Health(HealthState.HEALTHY, reason, next_expected)

    reason = _never_run_reason(next_expected, zone, now)
    return Health(HealthState.NEVER_RUN, reason, next_expected)


def _expected_start(
    settings: ServiceSettings,
    newest_first: Sequence[RunSnapshot],
    first_seen: datetime | None,
    resumed_at: datetime | None,
) -> datetime | None:
    """Return the start the schedule expects after the newest run, or after first_seen.

    A resume after the newest run (or after first_seen) moves the anchor to
    the resume, so a pause is never counted as lateness.
    """
    if settings.schedule is None:
        return None

    # NOTE: a start recorded slightly before its fire time (a host clock
    # running ahead) counts for the previous fire time, so the service is
    # reported late at this fire time plus grace.
    anchor = newest_first[0].started_at if newest_first else first_seen
    if resumed_at is not None and (anchor is None or resumed_at > anchor):
        anchor = resumed_at
    if anchor is None:
        return None

    return settings.schedule.next_after(anchor)


def _next_expected(
    settings: ServiceSettings, expected: datetime | None, now: datetime
) -> datetime | None:
    if expected is not None:
        return expected
    if isinstance(settings.schedule, CronSchedule):
        return settings.schedule.next_after(now)

    return None


@dataclass(frozen=True)
class _StreakState:
    """The result of walking finished runs through the failure state machine."""

    failing: bool
    consecutive_failures: int
    consecutive_completions: int
    last_finished: RunSnapshot | None
    last_failure: RunSnapshot | None


def _walk_failure_streaks(
    settings: ServiceSettings, newest_first: Sequence[RunSnapshot]
) -> _StreakState:
    """Run the finished runs, oldest first, through the two-threshold state machine.

    ``failure_threshold`` failures in a row enter failing. Once failing,
    only ``recovery_threshold`` completed runs in a row leave it, and a
    failure in between starts the count again.
    """
    failing = False
    failures = 0
    completions = 0
    last_finished: RunSnapshot | None = None
    last_failure: RunSnapshot | None = None

    for run in reversed(newest_first):
        if run.status not in FINISHED_STATUSES:
            continue

        last_finished = run
        if run.status in FAILED_STATUSES:
            last_failure = run
            failures += 1
            completions = 0
            if failures >= settings.failure_threshold:
                failing = True
        else:
            completions += 1
            failures = 0
            if completions >= settings.recovery_threshold:
                failing = False

    return _StreakState(failing, failures, completions, last_finished, last_failure)


def _stuck_reason(
    stuck: Sequence[RunSnapshot], max_runtime: timedelta, now: datetime, zone: tzinfo
) -> str:
    limit = humanize_duration(max_runtime)
    if len(stuck) == 1:
        run = stuck[0]
        elapsed = humanize_duration(now - run.started_at)
        name = _run_name(run, zone, now)
        return f"{name} has been running for {elapsed}, over its max runtime of {limit}"

    # Oldest first, because the oldest stuck run has been stuck the longest.
    details = ", ".join(
        f"{_run_name(run, zone, now)} for {humanize_duration(now - run.started_at)}"
        for run in reversed(stuck)
    )
    return f"{len(stuck)} runs are over their max runtime of {limit}: {details}"


def _run_name(run: RunSnapshot, zone: tzinfo, now: datetime) -> str:
    if run.id is None:
        return f"the run started at {_clock(run.started_at, zone, now)}"

    return f"run {run.id}"


def _failing_reason(streak: _StreakState, settings: ServiceSettings) -> str:
    error = _failure_summary(streak.last_failure)

    if streak.consecutive_completions > 0:
        needed = settings.recovery_threshold
        return (
            f"recovering: {streak.consecutive_completions} of {needed} completed runs in a row "
            f"needed; last error: {error}"
        )
    if streak.consecutive_failures < settings.failure_threshold:
        # A failure during recovery keeps the service failing.
        needed = settings.recovery_threshold
        return (
            f"failed again while recovering ({needed} completed runs in a row needed); "
            f"last error: {error}"
        )

    if streak.consecutive_failures == 1:
        return f"last run failed: {error}"

    return f"{streak.consecutive_failures} consecutive failures; last error: {error}"


def _failure_summary(run: RunSnapshot | None) -> str:
    if run is None:
        return "none recorded"
    if run.error_message is not None and run.error_message.strip():
        return shorten_error(run.error_message)
    if run.status == "timed_out":
        return "timed out"

    return "no error message recorded"


def shorten_error(message: str) -> str:
    """Return one line of an error message, at most about 200 characters long.

    The line is the first non-empty one, except for a Python traceback, where
    the last line names the exception and the first is always the same header.
    """
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return ""

    line = lines[0]
    if line.startswith("Traceback (most recent call last)"):
        line = lines[-1]

    if len(line) <= MAX_REASON_ERROR_CHARS:
        return line

    return line[: MAX_REASON_ERROR_CHARS - 3].rstrip() + "..."


def _running_reason(in_progress: Sequence[RunSnapshot], now: datetime) -> str:
    oldest = in_progress[-1]
    elapsed = humanize_duration(max(now - oldest.started_at, timedelta(0)))
    if len(in_progress) == 1:
        return f"running for {elapsed}"

    return f"{len(in_progress)} runs in progress, the oldest for {elapsed}"


def _healthy_reason(
    streak: _StreakState, settings: ServiceSettings, zone: tzinfo, now: datetime
) -> str:
    run = streak.last_finished
    if run is None:
        return "no finished run yet"

    finished_at = _clock(run.finished_at or run.started_at, zone, now)
    if run.status == "completed":
        return f"last run completed at {finished_at}"

    # Below the failure threshold, a failed run leaves the service healthy.
    verb = "timed out" if run.status == "timed_out" else "failed"
    return (
        f"last run {verb} at {finished_at} "
        f"({streak.consecutive_failures} of {settings.failure_threshold} failures in a row "
        f"before failing); last error: {_failure_summary(run)}"
    )


def _never_run_reason(next_expected: datetime | None, zone: tzinfo, now: datetime) -> str:
    if next_expected is None:
        return "no run recorded yet"

    return f"no run recorded yet; first expected at {_clock(next_expected, zone, now)}"


def _clock(moment: datetime, zone: tzinfo, now: datetime) -> str:
    """Format a time in the service's zone, with the date when it is not today there."""
    local = moment.astimezone(zone)
    time_format = "%H:%M" if local.second == 0 else "%H:%M:%S"
    if local.date() != now.astimezone(zone).date():
        time_format = f"%Y-%m-%d {time_format}"

    return f"{local.strftime(time_format)} {local.tzname()}"


def _require_aware(moment: datetime, name: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"invalid {name} {moment.isoformat()}: it must be timezone-aware")
