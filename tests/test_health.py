import random
from datetime import UTC, datetime, timedelta

import pytest

from cronledger.health import (
    Health,
    HealthState,
    RunSnapshot,
    evaluate_health,
    runs_needed,
    shorten_error,
)
from cronledger.schedule import CronSchedule, IntervalSchedule
from cronledger.settings import ServiceSettings

NOW = datetime(2025, 6, 2, 10, 30, tzinfo=UTC)
SECOND = timedelta(seconds=1)


def minutes_ago(minutes: float) -> datetime:
    return NOW - timedelta(minutes=minutes)


def finished(
    run_id: int,
    started_minutes_ago: float,
    status: str = "completed",
    error: str | None = None,
) -> RunSnapshot:
    started_at = minutes_ago(started_minutes_ago)
    return RunSnapshot(run_id, started_at, started_at + timedelta(seconds=30), status, error)


def in_progress(run_id: int, started_at: datetime) -> RunSnapshot:
    return RunSnapshot(run_id, started_at, None, "started", None)


def history(statuses: str, error: str = "connection refused") -> list[RunSnapshot]:
    """Build finished runs from a string such as "FFS", oldest first, returned newest first.

    F is failed, T timed out and S completed. Runs start one hour apart, the
    newest 40 minutes before NOW.
    """
    status_of = {"F": "failed", "T": "timed_out", "S": "completed"}
    runs = []
    count = len(statuses)
    for index, letter in enumerate(statuses):
        hours_ago = count - 1 - index
        status = status_of[letter]
        message = None if status == "completed" else error
        runs.append(finished(index + 1, 40 + 60 * hours_ago, status, message))
    return list(reversed(runs))


def service(**changes: object) -> ServiceSettings:
    return ServiceSettings(name="flow-sync", **changes)  # type: ignore[arg-type]


# paused


def test_paused_beats_everything() -> None:
    settings = service(
        paused=True, schedule=CronSchedule("*/5 * * * *"), max_runtime=timedelta(minutes=10)
    )
    runs = [in_progress(9, minutes_ago(300)), *history("FFF")]

    health = evaluate_health(settings, runs, NOW)

    assert health.state is HealthState.PAUSED
    assert health.reason == "paused by an operator"
    assert health.next_expected is None
    assert health.stuck_run_ids == (9,)


def test_paused_without_runs() -> None:
    health = evaluate_health(service(paused=True), [], NOW)

    assert health.state is HealthState.PAUSED


# stuck


def test_max_runtime_exact_is_running() -> None:
    settings = service(max_runtime=timedelta(hours=1))
    run = in_progress(42, NOW - timedelta(hours=1))

    health = evaluate_health(settings, [run], NOW)

    assert health.state is HealthState.RUNNING
    assert health.stuck_run_ids == ()


def test_max_runtime_one_second_over() -> None:
    settings = service(max_runtime=timedelta(hours=1))
    run = in_progress(42, NOW - timedelta(hours=1) - SECOND)

    health = evaluate_health(settings, [run], NOW)

    assert health.state is HealthState.STUCK
    assert health.stuck_run_ids == (42,)


def test_stuck_reason() -> None:
    settings = service(max_runtime=timedelta(hours=1))
    run = in_progress(42, NOW - timedelta(hours=1, minutes=5))

    health = evaluate_health(settings, [run], NOW)

    assert health.reason == "run 42 has been running for 1 h 5 min, over its max runtime of 1 h"


def test_overlapping_runs_timed_separately() -> None:
    settings = service(max_runtime=timedelta(minutes=30))
    old = in_progress(41, minutes_ago(45))
    fresh = in_progress(42, minutes_ago(5))

    health = evaluate_health(settings, [fresh, old], NOW)

    assert health.state is HealthState.STUCK
    assert health.stuck_run_ids == (41,)
    assert health.reason.startswith("run 41 has been running for 45 min")


def test_two_stuck_runs() -> None:
    settings = service(max_runtime=timedelta(minutes=30))
    runs = [in_progress(42, minutes_ago(40)), in_progress(41, minutes_ago(90))]

    health = evaluate_health(settings, runs, NOW)

    assert health.stuck_run_ids == (42, 41)
    assert health.reason == (
        "2 runs are over their max runtime of 30 min: run 41 for 1 h 30 min, run 42 for 40 min"
    )


def test_stuck_run_without_id() -> None:
    settings = service(max_runtime=timedelta(minutes=30))
    run = RunSnapshot(None, datetime(2025, 6, 2, 9, 0, tzinfo=UTC), None, "started")

    health = evaluate_health(settings, [run], NOW)

    assert health.state is HealthState.STUCK
    assert health.stuck_run_ids == ()
    assert health.reason.startswith("the run started at 09:00 UTC has been running for 1 h 30 min")


def test_stuck_beats_failing() -> None:
    settings = service(max_runtime=timedelta(minutes=30))
    runs = [in_progress(9, minutes_ago(31)), *history("FFF")]

    health = evaluate_health(settings, runs, NOW)

    assert health.state is HealthState.STUCK


def test_stuck_without_schedule() -> None:
    settings = service(max_runtime=timedelta(minutes=10))

    health = evaluate_health(settings, [in_progress(1, minutes_ago(11))], NOW)

    assert health.state is HealthState.STUCK


# failing: failure threshold N and recovery threshold M


def test_failures_below_threshold_healthy() -> None:
    settings = service(failure_threshold=3)

    health = evaluate_health(settings, history("SFF"), NOW)

    assert health.state is HealthState.HEALTHY
    assert health.reason == (
        "last run failed at 09:50:30 UTC (2 of 3 failures in a row before failing); "
        "last error: connection refused"
    )


def test_failures_at_threshold_failing() -> None:
    settings = service(failure_threshold=3)

    health = evaluate_health(settings, history("SFFF"), NOW)

    assert health.state is HealthState.FAILING
    assert health.reason == "3 consecutive failures; last error: connection refused"


def test_single_failure_default_threshold() -> None:
    health = evaluate_health(service(), history("SF"), NOW)

    assert health.state is HealthState.FAILING
    assert health.reason == "last run failed: connection refused"


def test_timed_out_counts_as_failure() -> None:
    settings = service(failure_threshold=2)
    runs = history("FT", error="")
    timed_out = RunSnapshot(2, runs[0].started_at, runs[0].finished_at, "timed_out", None)

    health = evaluate_health(settings, [timed_out, runs[1]], NOW)

    assert health.state is HealthState.FAILING
    assert health.reason == "2 consecutive failures; last error: timed out"


def test_recovery_below_threshold_failing() -> None:
    settings = service(failure_threshold=3, recovery_threshold=2)

    health = evaluate_health(settings, history("FFFS"), NOW)

    assert health.state is HealthState.FAILING
    assert health.reason == (
        "recovering: 1 of 2 completed runs in a row needed; last error: connection refused"
    )


def test_recovery_at_threshold_healthy() -> None:
    settings = service(failure_threshold=3, recovery_threshold=2)

    health = evaluate_health(settings, history("FFFSS"), NOW)

    assert health.state is HealthState.HEALTHY
    assert health.reason == "last run completed at 09:50:30 UTC"


def test_failure_during_recovery_restarts() -> None:
    settings = service(failure_threshold=3, recovery_threshold=2)

    health = evaluate_health(settings, history("FFFSF"), NOW)

    assert health.state is HealthState.FAILING
    assert health.reason == (
        "failed again while recovering (2 completed runs in a row needed); "
        "last error: connection refused"
    )


def test_recovery_count_restarts() -> None:
    settings = service(failure_threshold=3, recovery_threshold=2)

    still_failing = evaluate_health(settings, history("FFFSFS"), NOW)
    recovered = evaluate_health(settings, history("FFFSFSS"), NOW)

    assert still_failing.state is HealthState.FAILING
    assert recovered.state is HealthState.HEALTHY


def test_failing_without_schedule() -> None:
    health = evaluate_health(service(failure_threshold=2), history("FF"), NOW)

    assert health.state is HealthState.FAILING
    assert health.next_expected is None


def test_failing_beats_late() -> None:
    settings = service(schedule=CronSchedule("*/5 * * * *"))

    health = evaluate_health(settings, history("F"), NOW)

    assert health.state is HealthState.FAILING


def test_runs_needed() -> None:
    assert runs_needed(service()) == 3
    assert runs_needed(service(failure_threshold=3, recovery_threshold=2)) == 7
    assert runs_needed(service(failure_threshold=1, recovery_threshold=4)) == 9


# last error in reasons


def test_error_first_line() -> None:
    assert shorten_error("\n  disk full  \nmore detail\n") == "disk full"


def test_error_traceback_last_line() -> None:
    message = (
        "Traceback (most recent call last):\n"
        '  File "job.py", line 3, in <module>\n'
        "ConnectionError: connection refused\n"
    )

    assert shorten_error(message) == "ConnectionError: connection refused"


def test_error_shortened_to_200() -> None:
    shortened = shorten_error("x" * 500)

    assert len(shortened) == 200
    assert shortened.endswith("...")


def test_error_of_200_kept() -> None:
    assert shorten_error("y" * 200) == "y" * 200


def test_failing_reason_shortens_error() -> None:
    runs = history("F", error="first line\nsecond line")

    health = evaluate_health(service(), runs, NOW)

    assert health.reason == "last run failed: first line"


def test_failure_without_message() -> None:
    run = RunSnapshot(1, minutes_ago(10), minutes_ago(9), "failed", None)

    health = evaluate_health(service(), [run], NOW)

    assert health.reason == "last run failed: no error message recorded"


# late


def hourly(grace: timedelta = timedelta(minutes=5), zone: str = "UTC") -> ServiceSettings:
    return service(schedule=CronSchedule("0 * * * *", zone), grace=grace)


def test_grace_exact_not_late() -> None:
    last = RunSnapshot(1, datetime(2025, 6, 2, 9, 0, 5, tzinfo=UTC), None, "completed")
    now = datetime(2025, 6, 2, 10, 5, tzinfo=UTC)

    health = evaluate_health(hourly(), [last], now)

    assert health.state is HealthState.HEALTHY
    assert health.next_expected == datetime(2025, 6, 2, 10, 0, tzinfo=UTC)


def test_grace_one_second_over_late() -> None:
    last = RunSnapshot(1, datetime(2025, 6, 2, 9, 0, 5, tzinfo=UTC), None, "completed")
    now = datetime(2025, 6, 2, 10, 5, 1, tzinfo=UTC)

    health = evaluate_health(hourly(), [last], now)

    assert health.state is HealthState.LATE
    assert health.overdue_since == datetime(2025, 6, 2, 10, 0, tzinfo=UTC)
    assert health.next_expected == datetime(2025, 6, 2, 10, 0, tzinfo=UTC)
    assert health.reason == "expected at 10:00 UTC, 5 min overdue"


def test_late_reason_in_service_zone() -> None:
    # 10:00 CET is 09:00 UTC in winter.
    last = RunSnapshot(1, datetime(2025, 1, 15, 8, 0, tzinfo=UTC), None, "completed")
    now = datetime(2025, 1, 15, 9, 12, tzinfo=UTC)

    health = evaluate_health(hourly(zone="Europe/Berlin"), [last], now)

    assert health.state is HealthState.LATE
    assert health.reason == "expected at 10:00 CET, 12 min overdue"
    assert health.overdue_since is not None
    assert health.overdue_since.isoformat() == "2025-01-15T09:00:00+00:00"


def test_late_reason_summer_zone() -> None:
    last = RunSnapshot(1, datetime(2025, 7, 1, 13, 0, tzinfo=UTC), None, "completed")
    now = datetime(2025, 7, 1, 14, 20, tzinfo=UTC)

    health = evaluate_health(hourly(zone="America/New_York"), [last], now)

    assert health.reason == "expected at 10:00 EDT, 20 min overdue"


def test_late_reason_other_day() -> None:
    last = RunSnapshot(1, datetime(2025, 6, 1, 9, 0, tzinfo=UTC), None, "completed")
    settings = service(schedule=CronSchedule("0 10 * * *"))

    health = evaluate_health(settings, [last], NOW)

    assert health.reason == "expected at 2025-06-01 10:00 UTC, 1 d overdue"


def test_zero_grace_late_after_one_second() -> None:
    last = RunSnapshot(1, datetime(2025, 6, 2, 9, 0, tzinfo=UTC), None, "completed")
    settings = hourly(grace=timedelta(0))

    at_fire_time = evaluate_health(settings, [last], datetime(2025, 6, 2, 10, 0, tzinfo=UTC))
    after = evaluate_health(settings, [last], datetime(2025, 6, 2, 10, 0, 1, tzinfo=UTC))

    assert at_fire_time.state is HealthState.HEALTHY
    assert after.state is HealthState.LATE


def test_running_run_counts_as_start() -> None:
    settings = service(schedule=CronSchedule("0 * * * *"), max_runtime=timedelta(hours=2))
    runs = [in_progress(2, datetime(2025, 6, 2, 10, 0, 2, tzinfo=UTC)), *history("S")]

    health = evaluate_health(settings, runs, NOW)

    assert health.state is HealthState.RUNNING
    assert health.reason == "running for 29 min"
    assert health.next_expected == datetime(2025, 6, 2, 11, 0, tzinfo=UTC)


def test_late_beats_running() -> None:
    settings = service(schedule=CronSchedule("*/5 * * * *"), max_runtime=timedelta(hours=1))
    run = in_progress(2, minutes_ago(20))

    health = evaluate_health(settings, [run], NOW)

    assert health.state is HealthState.LATE


def test_no_schedule_never_late() -> None:
    last = finished(1, 60 * 24 * 30)

    health = evaluate_health(service(), [last], NOW)

    assert health.state is HealthState.HEALTHY
    assert health.next_expected is None


# new services


def test_new_service_before_due() -> None:
    first_seen = datetime(2025, 6, 2, 9, 30, tzinfo=UTC)
    now = datetime(2025, 6, 2, 10, 5, tzinfo=UTC)

    health = evaluate_health(hourly(), [], now, first_seen=first_seen)

    assert health.state is HealthState.NEVER_RUN
    assert health.reason == "no run recorded yet; first expected at 10:00 UTC"
    assert health.next_expected == datetime(2025, 6, 2, 10, 0, tzinfo=UTC)


def test_new_service_late_after_due() -> None:
    first_seen = datetime(2025, 6, 2, 9, 30, tzinfo=UTC)
    now = datetime(2025, 6, 2, 10, 5, 1, tzinfo=UTC)

    health = evaluate_health(hourly(), [], now, first_seen=first_seen)

    assert health.state is HealthState.LATE
    assert health.overdue_since == datetime(2025, 6, 2, 10, 0, tzinfo=UTC)


def test_new_service_without_first_seen() -> None:
    health = evaluate_health(hourly(), [], NOW)

    assert health.state is HealthState.NEVER_RUN
    assert health.next_expected == datetime(2025, 6, 2, 11, 0, tzinfo=UTC)
    assert health.reason == "no run recorded yet; first expected at 11:00 UTC"


def test_new_service_without_schedule() -> None:
    first_seen = NOW - timedelta(days=30)

    health = evaluate_health(service(), [], NOW, first_seen=first_seen)

    assert health.state is HealthState.NEVER_RUN
    assert health.reason == "no run recorded yet"
    assert health.next_expected is None


# interval schedules


def every_30_seconds() -> ServiceSettings:
    return service(schedule=IntervalSchedule(timedelta(seconds=30)), grace=timedelta(seconds=10))


def test_interval_grace_exact_not_late() -> None:
    last = RunSnapshot(1, NOW - timedelta(seconds=40), NOW - timedelta(seconds=39), "completed")

    health = evaluate_health(every_30_seconds(), [last], NOW)

    assert health.state is HealthState.HEALTHY
    assert health.next_expected == NOW - timedelta(seconds=10)


def test_interval_one_second_over_late() -> None:
    last = RunSnapshot(1, NOW - timedelta(seconds=41), NOW - timedelta(seconds=40), "completed")

    health = evaluate_health(every_30_seconds(), [last], NOW)

    assert health.state is HealthState.LATE
    assert health.overdue_since == NOW - timedelta(seconds=11)
    assert health.reason == "expected at 10:29:49 UTC, 11 s overdue"


def test_interval_new_service_late() -> None:
    first_seen = NOW - timedelta(seconds=41)

    health = evaluate_health(every_30_seconds(), [], NOW, first_seen=first_seen)

    assert health.state is HealthState.LATE


def test_interval_without_first_seen() -> None:
    health = evaluate_health(every_30_seconds(), [], NOW)

    assert health.state is HealthState.NEVER_RUN
    assert health.next_expected is None


# running and healthy


def test_running_reason() -> None:
    health = evaluate_health(service(), [in_progress(5, minutes_ago(2))], NOW)

    assert health.state is HealthState.RUNNING
    assert health.reason == "running for 2 min"


def test_several_running() -> None:
    runs = [in_progress(6, minutes_ago(2)), in_progress(5, minutes_ago(12))]

    health = evaluate_health(service(), runs, NOW)

    assert health.reason == "2 runs in progress, the oldest for 12 min"


def test_healthy_reason() -> None:
    run = RunSnapshot(
        1,
        datetime(2025, 6, 2, 8, 59, tzinfo=UTC),
        datetime(2025, 6, 2, 9, 0, tzinfo=UTC),
        "completed",
    )

    health = evaluate_health(service(), [run], NOW)

    assert health.state is HealthState.HEALTHY
    assert health.reason == "last run completed at 09:00 UTC"


def test_healthy_next_expected_cron() -> None:
    settings = service(schedule=CronSchedule("0 * * * *"))
    run = RunSnapshot(1, datetime(2025, 6, 2, 10, 0, tzinfo=UTC), NOW, "completed")

    health = evaluate_health(settings, [run], NOW)

    assert health.next_expected == datetime(2025, 6, 2, 11, 0, tzinfo=UTC)


def test_run_order_does_not_matter() -> None:
    settings = service(failure_threshold=2, recovery_threshold=2)
    runs = history("SFFSFS")
    shuffled = runs.copy()
    random.Random(7).shuffle(shuffled)

    assert evaluate_health(settings, shuffled, NOW) == evaluate_health(settings, runs, NOW)


def test_health_is_frozen() -> None:
    health = Health(HealthState.HEALTHY, "ok")

    with pytest.raises(AttributeError):
        health.state = HealthState.LATE  # type: ignore[misc]


def test_state_values() -> None:
    assert [state.value for state in HealthState] == [
        "paused",
        "stuck",
        "failing",
        "late",
        "running",
        "healthy",
        "never_run",
    ]


# input checks


def test_naive_now_rejected() -> None:
    with pytest.raises(ValueError, match=r"invalid now .* timezone-aware"):
        evaluate_health(service(), [], datetime(2025, 6, 2, 10, 30))


def test_naive_start_rejected() -> None:
    with pytest.raises(ValueError, match="invalid started_at"):
        RunSnapshot(1, datetime(2025, 6, 2, 10, 30), None, "started")


def test_unknown_status_rejected() -> None:
    with pytest.raises(ValueError, match="invalid run status 'done'"):
        RunSnapshot(1, NOW, None, "done")


# A daily job on the day of each 2025 DST change, run the day before at its
# usual time. The transitions (local wall clock):
# - Europe/Berlin: 2025-03-30 02:00 CET -> 03:00 CEST; 2025-10-26 03:00 CEST -> 02:00 CET.
# - America/New_York: 2025-03-09 02:00 EST -> 03:00 EDT; 2025-11-02 02:00 EDT -> 01:00 EST.
# - Australia/Sydney: 2025-04-06 03:00 AEDT -> 02:00 AEST; 2025-10-05 02:00 AEST -> 03:00 AEDT.
# A skipped fire time is expected at the first minute after the gap, and a
# repeated one once, in its first pass.
DST_DAILY_CASES = [
    ("Europe/Berlin", "30 2 * * *", "2025-03-29T01:30:00+00:00", "2025-03-30T01:00:00+00:00"),
    ("Europe/Berlin", "30 2 * * *", "2025-10-25T00:30:00+00:00", "2025-10-26T00:30:00+00:00"),
    ("America/New_York", "30 2 * * *", "2025-03-08T07:30:00+00:00", "2025-03-09T07:00:00+00:00"),
    ("America/New_York", "30 1 * * *", "2025-11-01T05:30:00+00:00", "2025-11-02T05:30:00+00:00"),
    ("Australia/Sydney", "30 2 * * *", "2025-04-04T15:30:00+00:00", "2025-04-05T15:30:00+00:00"),
    ("Australia/Sydney", "30 2 * * *", "2025-10-03T16:30:00+00:00", "2025-10-04T16:00:00+00:00"),
]


@pytest.mark.parametrize(("zone", "expression", "last_start", "expected"), DST_DAILY_CASES)
def test_dst_day_grace_boundary(zone: str, expression: str, last_start: str, expected: str) -> None:
    grace = timedelta(minutes=10)
    settings = service(schedule=CronSchedule(expression, zone), timezone=zone, grace=grace)
    last = RunSnapshot(1, datetime.fromisoformat(last_start), None, "completed")
    due = datetime.fromisoformat(expected)

    at_grace = evaluate_health(settings, [last], due + grace)
    past_grace = evaluate_health(settings, [last], due + grace + timedelta(seconds=1))

    assert at_grace.state is HealthState.HEALTHY, at_grace.reason
    assert at_grace.next_expected is not None
    assert at_grace.next_expected.isoformat() == expected
    assert past_grace.state is HealthState.LATE, past_grace.reason
    assert past_grace.overdue_since is not None
    assert past_grace.overdue_since.isoformat() == expected
