"""Fire-time decisions of the scheduler, as pure functions of their inputs and ``now``.

Cron schedules fire at the times ``schedule.py`` computes in the job's time
zone. An interval schedule fires on a grid that starts at the Unix epoch
(1970-01-01 00:00 UTC): ``interval = "1h"`` fires at every full hour UTC,
``"90s"`` at every multiple of 90 seconds since the epoch. A grid that does
not depend on when a scheduler started makes every scheduler on every host
compute the same fire times, which the exactly-once claims need.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cronledger.schedule import CronSchedule, IntervalSchedule, Schedule
from cronledger.settings import OVERLAP_SKIP

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# A loop that wakes up late (a busy host, a long pause for garbage
# collection) still runs every fire time of the last few seconds. Fire times
# missed for longer count as downtime: only the latest one is run, and only
# within the service's grace period.
LAG_TOLERANCE = timedelta(seconds=5)

# An unfinished claim older than the job's timeout plus the kill delay plus
# this margin belongs to a scheduler that died: its run no longer counts as
# running, so the overlap policy does not block the service forever.
STALE_CLAIM_MARGIN = timedelta(minutes=1)

_TICK = timedelta(microseconds=1)


def next_fire_after(schedule: Schedule, t: datetime) -> datetime:
    """Return the first fire time strictly after ``t``, in UTC."""
    if isinstance(schedule, CronSchedule):
        return schedule.next_after(t)

    steps = (t - EPOCH) // schedule.every + 1
    return EPOCH + steps * schedule.every


def latest_fire_at_or_before(schedule: Schedule, t: datetime) -> datetime:
    """Return the last fire time at or before ``t``, in UTC."""
    if isinstance(schedule, IntervalSchedule):
        return EPOCH + ((t - EPOCH) // schedule.every) * schedule.every

    previous = schedule.previous_at_or_before(t)
    if previous is None:
        # cronsim searches 50 years back, and every valid expression fires
        # within that range. So this is a bug rather than a user error.
        raise RuntimeError(f"no fire time at or before {t.isoformat()} for {schedule}")
    return previous


def due_fire_times(
    schedule: Schedule, next_fire: datetime, now: datetime, grace: timedelta
) -> tuple[list[datetime], datetime]:
    """Return the fire times to run at ``now`` and the next fire time after ``now``.

    ``next_fire`` is the first fire time not yet handled. On time, the
    result is that one fire time. After a delay of up to ``LAG_TOLERANCE``
    it is every fire time of the delay. After a longer delay it is only the
    latest fire time, if it is at most ``grace`` old, so that a stalled loop
    never runs a burst.
    """
    following = next_fire_after(schedule, now)
    if next_fire > now:
        return [], next_fire

    recent: list[datetime] = []
    fire = max(next_fire, next_fire_after(schedule, now - LAG_TOLERANCE - _TICK))
    while fire <= now:
        recent.append(fire)
        fire = next_fire_after(schedule, fire)
    if recent:
        return recent, following

    latest = latest_fire_at_or_before(schedule, now)
    if now - latest <= grace:
        return [latest], following
    return [], following


def catch_up_fire(
    schedule: Schedule,
    now: datetime,
    grace: timedelta,
    known_since: datetime | None,
    last_start: datetime | None,
) -> datetime | None:
    """Return the fire time to run once at start-up, or None.

    Only the latest fire time at or before ``now`` is a candidate, so a
    scheduler that was down for a long time runs at most one catch-up run.
    It is run when it is at most ``grace`` old, when the service was known
    before it (``known_since``: a new service has missed nothing), and when
    no run started at or after it (``last_start``).
    """
    latest = latest_fire_at_or_before(schedule, now)
    if now - latest > grace:
        return None
    if known_since is None or known_since >= latest:
        return None
    if last_start is not None and last_start >= latest:
        return None
    return latest


def should_skip(overlap: str, previous_running: bool) -> bool:
    """Return True when a fire time is skipped because the previous run is still running."""
    return overlap == OVERLAP_SKIP and previous_running


def is_stale_claim(
    claimed_at: datetime, now: datetime, timeout: timedelta, kill_delay: timedelta
) -> bool:
    """Return True for an unfinished claim that no living scheduler can still be running."""
    return now - claimed_at > timeout + kill_delay + STALE_CLAIM_MARGIN
