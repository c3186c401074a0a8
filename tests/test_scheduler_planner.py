"""Pure fire-time decisions of the scheduler, with a frozen clock.

Every boundary is tested at the exact instant and one second past it.
Times are compared as ISO strings, so a wrong offset fails too.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cronledger.schedule import CronSchedule, IntervalSchedule
from cronledger.scheduler.planner import (
    LAG_TOLERANCE,
    STALE_CLAIM_MARGIN,
    catch_up_fire,
    due_fire_times,
    is_stale_claim,
    latest_fire_at_or_before,
    next_fire_after,
    should_skip,
)

EVERY_SECOND = IntervalSchedule(timedelta(seconds=1))
EVERY_90S = IntervalSchedule(timedelta(seconds=90))
HOURLY_BERLIN = CronSchedule("0 * * * *", "Europe/Berlin")
MINUTELY = CronSchedule("* * * * *")
SECOND = timedelta(seconds=1)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


# Interval grid from the Unix epoch.


def test_interval_grid_starts_at_epoch() -> None:
    # 2026-12-04T10:00:00Z is 1796378400 s after the epoch, a multiple of 90.
    assert iso(next_fire_after(EVERY_90S, at("2026-12-04T10:00:00+00:00"))) == (
        "2026-12-04T10:01:30+00:00"
    )
    assert iso(next_fire_after(EVERY_90S, at("2026-12-04T09:59:59+00:00"))) == (
        "2026-12-04T10:00:00+00:00"
    )


def test_interval_latest_at_fire_time() -> None:
    fire = at("2026-12-04T10:00:00+00:00")

    assert iso(latest_fire_at_or_before(EVERY_90S, fire)) == fire.isoformat()
    assert iso(latest_fire_at_or_before(EVERY_90S, fire - SECOND)) == ("2026-12-04T09:58:30+00:00")


def test_interval_grid_ignores_offset_of_input() -> None:
    berlin = datetime.fromisoformat("2026-12-04T11:00:00.500000+01:00")

    assert iso(next_fire_after(EVERY_SECOND, berlin)) == "2026-12-04T10:00:01+00:00"


def test_cron_fire_times_in_zone() -> None:
    # Berlin left summer time on 2026-10-25 at 03:00 CEST (01:00 UTC), so
    # the hourly schedule fires at 00:00 and 01:00 UTC, one hour apart.
    assert iso(next_fire_after(HOURLY_BERLIN, at("2026-10-25T00:30:00+00:00"))) == (
        "2026-10-25T01:00:00+00:00"
    )
    assert iso(latest_fire_at_or_before(HOURLY_BERLIN, at("2026-10-25T00:59:59+00:00"))) == (
        "2026-10-25T00:00:00+00:00"
    )


# Due fire times in the loop.


def test_due_on_time() -> None:
    fire = at("2026-12-04T10:00:05+00:00")

    fires, following = due_fire_times(EVERY_SECOND, fire, fire, timedelta(minutes=5))

    assert [iso(item) for item in fires] == ["2026-12-04T10:00:05+00:00"]
    assert iso(following) == "2026-12-04T10:00:06+00:00"


def test_nothing_due_before_fire_time() -> None:
    fire = at("2026-12-04T10:01:00+00:00")
    now = fire - timedelta(microseconds=1)

    fires, following = due_fire_times(MINUTELY, fire, now, timedelta(minutes=5))

    assert fires == []
    assert iso(following) == fire.isoformat()


def test_short_lag_runs_every_fire_time() -> None:
    first = at("2026-12-04T10:00:00+00:00")
    now = first + timedelta(seconds=3, milliseconds=200)

    fires, following = due_fire_times(EVERY_SECOND, first, now, timedelta(0))

    assert [iso(item) for item in fires] == [
        "2026-12-04T10:00:00+00:00",
        "2026-12-04T10:00:01+00:00",
        "2026-12-04T10:00:02+00:00",
        "2026-12-04T10:00:03+00:00",
    ]
    assert iso(following) == "2026-12-04T10:00:04+00:00"


def test_lag_boundary_at_tolerance() -> None:
    first = at("2026-12-04T10:00:00+00:00")

    at_boundary, _ = due_fire_times(EVERY_90S, first, first + LAG_TOLERANCE, timedelta(0))
    past_boundary, _ = due_fire_times(
        EVERY_90S, first, first + LAG_TOLERANCE + SECOND, timedelta(0)
    )

    assert [iso(item) for item in at_boundary] == [first.isoformat()]
    assert past_boundary == [], "a fire time older than the tolerance and the grace ran"


def test_long_lag_runs_only_latest() -> None:
    first = at("2026-12-04T10:00:00+00:00")
    now = at("2026-12-04T10:10:30+00:00")

    fires, following = due_fire_times(MINUTELY, first, now, timedelta(minutes=5))

    assert [iso(item) for item in fires] == ["2026-12-04T10:10:00+00:00"]
    assert iso(following) == "2026-12-04T10:11:00+00:00"


def test_long_lag_past_grace_runs_none() -> None:
    first = at("2026-12-04T10:00:00+00:00")
    now = at("2026-12-04T10:10:30+00:00")

    fires, following = due_fire_times(MINUTELY, first, now, timedelta(seconds=29))

    assert fires == []
    assert iso(following) == "2026-12-04T10:11:00+00:00"


# Catch-up after downtime.

KNOWN = at("2026-12-01T00:00:00+00:00")
GRACE = timedelta(minutes=5)


def test_catch_up_latest_within_grace() -> None:
    now = at("2026-12-04T10:03:00+00:00")
    last_start = at("2026-12-04T09:00:00+00:00")

    fire = catch_up_fire(MINUTELY, now, GRACE, KNOWN, last_start)

    assert iso(fire) == "2026-12-04T10:03:00+00:00"


def test_catch_up_at_grace_boundary() -> None:
    schedule = CronSchedule("0 * * * *")
    last_start = at("2026-12-04T09:00:00+00:00")
    boundary = at("2026-12-04T10:05:00+00:00")

    at_boundary = catch_up_fire(schedule, boundary, GRACE, KNOWN, last_start)
    past_boundary = catch_up_fire(schedule, boundary + SECOND, GRACE, KNOWN, last_start)

    assert iso(at_boundary) == "2026-12-04T10:00:00+00:00"
    assert past_boundary is None


def test_catch_up_never_a_burst() -> None:
    # Down for 40 s of a per-second job: 40 missed fire times, one catch-up.
    last_start = at("2026-12-04T10:00:00+00:00")
    now = at("2026-12-04T10:00:40.300000+00:00")

    fire = catch_up_fire(EVERY_SECOND, now, GRACE, KNOWN, last_start)

    assert iso(fire) == "2026-12-04T10:00:40+00:00"


def test_no_catch_up_for_new_service() -> None:
    now = at("2026-12-04T10:03:00+00:00")

    assert catch_up_fire(MINUTELY, now, GRACE, known_since=now, last_start=None) is None
    assert catch_up_fire(MINUTELY, now, GRACE, known_since=None, last_start=None) is None


def test_no_catch_up_after_start() -> None:
    schedule = CronSchedule("0 * * * *")
    now = at("2026-12-04T10:03:00+00:00")
    fire = at("2026-12-04T10:00:00+00:00")

    assert catch_up_fire(schedule, now, GRACE, KNOWN, last_start=fire) is None
    assert iso(catch_up_fire(schedule, now, GRACE, KNOWN, fire - SECOND)) == fire.isoformat()


def test_catch_up_for_never_run_known_service() -> None:
    now = at("2026-12-04T10:00:20+00:00")

    fire = catch_up_fire(MINUTELY, now, GRACE, KNOWN, last_start=None)

    assert iso(fire) == "2026-12-04T10:00:00+00:00"


# Overlap and stale claims.


@pytest.mark.parametrize(
    ("overlap", "previous_running", "skip"),
    [("skip", True, True), ("skip", False, False), ("allow", True, False), ("allow", False, False)],
)
def test_overlap_decision(overlap: str, previous_running: bool, skip: bool) -> None:
    assert should_skip(overlap, previous_running) is skip


def test_stale_claim_boundary() -> None:
    claimed = at("2026-12-04T10:00:00+00:00")
    timeout = timedelta(seconds=30)
    kill_delay = timedelta(seconds=10)
    boundary = claimed + timeout + kill_delay + STALE_CLAIM_MARGIN

    assert is_stale_claim(claimed, boundary, timeout, kill_delay) is False
    assert is_stale_claim(claimed, boundary + SECOND, timeout, kill_delay) is True
