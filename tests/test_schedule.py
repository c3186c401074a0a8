# DST transitions of 2025 used below, as listed by the tz database:
#   Europe/Berlin     spring 2025-03-30 02:00 CET  -> 03:00 CEST (01:00 UTC)
#                     autumn 2025-10-26 03:00 CEST -> 02:00 CET  (01:00 UTC)
#   America/New_York  spring 2025-03-09 02:00 EST  -> 03:00 EDT  (07:00 UTC)
#                     autumn 2025-11-02 02:00 EDT  -> 01:00 EST  (06:00 UTC)
#   Australia/Sydney  spring 2025-10-05 02:00 AEST -> 03:00 AEDT (2025-10-04 16:00 UTC)
#                     autumn 2025-04-06 03:00 AEDT -> 02:00 AEST (2025-04-05 16:00 UTC)

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from cronledger.schedule import (
    CronSchedule,
    IntervalSchedule,
    ScheduleError,
    load_time_zone,
    parse_schedule,
)

ZONES = ("Europe/Berlin", "America/New_York", "Australia/Sydney")

# Instants at which each zone changes its UTC offset in 2025, spring then autumn.
TRANSITIONS = {
    "Europe/Berlin": (
        datetime(2025, 3, 30, 1, tzinfo=UTC),
        datetime(2025, 10, 26, 1, tzinfo=UTC),
    ),
    "America/New_York": (
        datetime(2025, 3, 9, 7, tzinfo=UTC),
        datetime(2025, 11, 2, 6, tzinfo=UTC),
    ),
    "Australia/Sydney": (
        datetime(2025, 10, 4, 16, tzinfo=UTC),
        datetime(2025, 4, 5, 16, tzinfo=UTC),
    ),
}

# Fixed-time and wildcard expressions, chosen to hit the skipped and the
# repeated hour of all three zones.
DST_EXPRESSIONS = (
    "30 2 * * *",
    "30 1 * * *",
    "*/15 * * * *",
    "0 * * * *",
    "30 1-3 * * *",
    "0,30 2 * * *",
    "0 */2 * * *",
)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def local_iso(moment: datetime, zone: str) -> str:
    return moment.astimezone(ZoneInfo(zone)).isoformat()


def fire_times(schedule: CronSchedule, start: datetime, count: int) -> list[datetime]:
    times = []
    moment = start
    for _ in range(count):
        moment = schedule.next_after(moment)
        times.append(moment)
    return times


# Basic cron behaviour


def test_next_after_is_strictly_after() -> None:
    schedule = CronSchedule("0 * * * *")

    assert schedule.next_after(utc(2025, 1, 1, 10)) == utc(2025, 1, 1, 11)


def test_next_after_mid_minute() -> None:
    schedule = CronSchedule("*/5 * * * *")
    moment = datetime(2025, 1, 1, 10, 4, 59, 999_999, tzinfo=UTC)

    assert schedule.next_after(moment) == utc(2025, 1, 1, 10, 5)


def test_previous_includes_fire_time() -> None:
    schedule = CronSchedule("0 * * * *")

    assert schedule.previous_at_or_before(utc(2025, 1, 1, 10)) == utc(2025, 1, 1, 10)


def test_previous_one_second_before() -> None:
    schedule = CronSchedule("0 * * * *")
    moment = utc(2025, 1, 1, 9, 59, 59)

    assert schedule.previous_at_or_before(moment) == utc(2025, 1, 1, 9)


def test_previous_with_microseconds() -> None:
    schedule = CronSchedule("0 * * * *")
    moment = datetime(2025, 1, 1, 10, 0, 0, 500_000, tzinfo=UTC)

    assert schedule.previous_at_or_before(moment) == utc(2025, 1, 1, 10)


def test_results_are_utc() -> None:
    schedule = CronSchedule("0 9 * * *", "Europe/Berlin")
    moment = datetime(2025, 1, 1, 12, tzinfo=ZoneInfo("Asia/Tokyo"))

    result = schedule.next_after(moment)
    previous = schedule.previous_at_or_before(moment)

    assert result.tzinfo is UTC
    assert previous is not None
    assert previous.tzinfo is UTC


def test_zone_applies_to_fields() -> None:
    schedule = CronSchedule("0 9 * * *", "Europe/Berlin")

    assert schedule.next_after(utc(2025, 1, 1)).isoformat() == "2025-01-01T08:00:00+00:00"
    assert schedule.next_after(utc(2025, 7, 1)).isoformat() == "2025-07-01T07:00:00+00:00"


def test_naive_datetime_rejected() -> None:
    schedule = CronSchedule("0 * * * *")

    with pytest.raises(ValueError, match="timezone-aware"):
        schedule.next_after(datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        schedule.previous_at_or_before(datetime(2025, 1, 1))


@pytest.mark.parametrize(
    ("alias", "expanded"),
    [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
        ("@HOURLY", "0 * * * *"),
    ],
)
def test_alias_matches_expression(alias: str, expanded: str) -> None:
    start = utc(2025, 2, 14, 13, 27)
    by_alias = fire_times(CronSchedule(alias), start, 3)
    by_expression = fire_times(CronSchedule(expanded), start, 3)

    assert by_alias == by_expression


def test_alias_kept_as_written() -> None:
    schedule = CronSchedule("@daily", "Europe/Berlin")

    assert schedule.expression == "@daily"
    assert schedule.timezone == "Europe/Berlin"


def test_names_ranges_and_steps() -> None:
    schedule = CronSchedule("0-30/15 9 * jan,FEB mon-fri")
    # 2025-01-03 is a Friday, 2025-01-06 a Monday.
    times = fire_times(schedule, utc(2025, 1, 3, 9, 20), 3)

    assert [t.isoformat() for t in times] == [
        "2025-01-03T09:30:00+00:00",
        "2025-01-06T09:00:00+00:00",
        "2025-01-06T09:15:00+00:00",
    ]


def test_day_fields_use_or_rule() -> None:
    # Vixie cron: with both day fields restricted, either one matching is enough.
    schedule = CronSchedule("0 0 13 * FRI")
    # 2025-06-06 and 2025-06-20 are Fridays, and 2025-06-13 is a Friday the 13th.
    times = fire_times(schedule, utc(2025, 6, 1), 4)

    assert [t.date().isoformat() for t in times] == [
        "2025-06-06",
        "2025-06-13",
        "2025-06-20",
        "2025-06-27",
    ]


def test_day_fields_or_rule_with_date() -> None:
    schedule = CronSchedule("0 0 1 * MON")
    # 2025-09-01 is a Monday, 2025-10-01 a Wednesday.
    times = fire_times(schedule, utc(2025, 9, 25), 3)

    assert [t.date().isoformat() for t in times] == ["2025-09-29", "2025-10-01", "2025-10-06"]


def test_sunday_as_seven() -> None:
    by_seven = fire_times(CronSchedule("0 0 * * 7"), utc(2025, 1, 1), 2)
    by_zero = fire_times(CronSchedule("0 0 * * 0"), utc(2025, 1, 1), 2)

    assert by_seven == by_zero


def test_february_29_fires_in_leap_year() -> None:
    schedule = CronSchedule("0 0 29 2 *")

    assert schedule.next_after(utc(2025, 1, 1)) == utc(2028, 2, 29)


def test_describe_utc() -> None:
    assert CronSchedule("30 2 * * *").describe() == "At 02:30 every day"


def test_describe_names_zone() -> None:
    schedule = CronSchedule("*/15 * * * *", "Europe/Berlin")

    assert schedule.describe() == "Every 15th minute of every hour (Europe/Berlin)"


def test_schedules_compare_by_value() -> None:
    assert CronSchedule("@daily", "UTC") == CronSchedule("@daily")
    assert CronSchedule("@daily", "UTC") != CronSchedule("@daily", "Europe/Berlin")


# Invalid cron expressions and zones


@pytest.mark.parametrize(
    ("expression", "rule"),
    [
        ("* * * *", "expected 5 fields (minute hour day-of-month month day-of-week), got 4"),
        ("* * * * * *", "expected 5 fields (minute hour day-of-month month day-of-week), got 6"),
        ("", "expected 5 fields (minute hour day-of-month month day-of-week), got 0"),
        ("61 * * * *", "minute 61 is out of range 0-59"),
        ("0 24 * * *", "hour 24 is out of range 0-23"),
        ("0 0 0 * *", "day-of-month 0 is out of range 1-31"),
        ("0 0 32 * *", "day-of-month 32 is out of range 1-31"),
        ("0 0 * 13 *", "month 13 is out of range 1-12"),
        ("0 0 * * 8", "day-of-week 8 is out of range 0-7"),
        ("0 0 * * 1-9", "day-of-week 9 is out of range 0-7"),
        ("0 0 * FOO *", "month 'FOO' is not a number or a name; use 1-12 or JAN-DEC"),
        ("0 0 * * FUN", "day-of-week 'FUN' is not a number or a name; use 0-7 or SUN-SAT"),
        ("x * * * *", "minute 'x' is not a number; use 0-59"),
        ("*/0 * * * *", "the minute field '*/0' is invalid"),
        ("5-1 * * * *", "the minute field '5-1' is invalid"),
        ("@reboot", "@reboot runs once at system start and is not a periodic schedule"),
        ("@often", "unknown alias; use one of @yearly"),
        ("0 0 31 2 *", "it never fires: no month in '2' has day '31'"),
        ("0 0 30 2 *", "it never fires: no month in '2' has day '30'"),
        ("0 0 31 4,6,9,11 *", "it never fires"),
    ],
)
def test_invalid_cron_rejected(expression: str, rule: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        CronSchedule(expression)

    message = str(caught.value)
    assert message.startswith(f"invalid cron expression {expression!r}: ")
    assert rule in message
    assert rule in caught.value.rule


def test_minute_out_of_range_message() -> None:
    with pytest.raises(ValueError) as caught:
        CronSchedule("61 * * * *")

    assert (
        str(caught.value) == "invalid cron expression '61 * * * *': minute 61 is out of range 0-59"
    )


def test_impossible_date_with_weekday_fires() -> None:
    # The OR rule makes "31 February or any Monday in February" fire on Mondays.
    schedule = CronSchedule("0 0 31 2 MON")

    assert schedule.next_after(utc(2025, 1, 1)) == utc(2025, 2, 3)


@pytest.mark.parametrize("zone", ["Europe/Berln", "", "utc", "/etc/localtime", "../UTC"])
def test_unknown_zone_rejected(zone: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        CronSchedule("0 * * * *", zone)

    assert str(caught.value) == (
        f"unknown time zone {zone!r}: use an IANA name such as Europe/Berlin or UTC"
    )


def test_load_time_zone_utc() -> None:
    assert load_time_zone("UTC") is UTC


# Daylight saving time: fixed-time jobs


def test_berlin_skipped_hour_fixed_time() -> None:
    schedule = CronSchedule("30 2 * * *", "Europe/Berlin")
    times = fire_times(schedule, utc(2025, 3, 28, 12), 3)

    assert [local_iso(t, "Europe/Berlin") for t in times] == [
        "2025-03-29T02:30:00+01:00",
        "2025-03-30T03:00:00+02:00",
        "2025-03-31T02:30:00+02:00",
    ]
    assert times[1].isoformat() == "2025-03-30T01:00:00+00:00"


def test_berlin_repeated_hour_fixed_time() -> None:
    schedule = CronSchedule("30 2 * * *", "Europe/Berlin")
    times = fire_times(schedule, utc(2025, 10, 24, 12), 3)

    assert [local_iso(t, "Europe/Berlin") for t in times] == [
        "2025-10-25T02:30:00+02:00",
        "2025-10-26T02:30:00+02:00",
        "2025-10-27T02:30:00+01:00",
    ]
    assert times[1].isoformat() == "2025-10-26T00:30:00+00:00"


def test_berlin_second_pass_skips_fire() -> None:
    # 02:10 CET is in the second pass, after the 02:30 CEST fire time.
    schedule = CronSchedule("30 2 * * *", "Europe/Berlin")
    moment = datetime.fromisoformat("2025-10-26T02:10:00+01:00")

    assert schedule.next_after(moment).isoformat() == "2025-10-27T01:30:00+00:00"


def test_berlin_second_pass_previous() -> None:
    schedule = CronSchedule("30 2 * * *", "Europe/Berlin")
    moment = datetime.fromisoformat("2025-10-26T02:10:00+01:00")
    previous = schedule.previous_at_or_before(moment)

    assert previous is not None
    assert local_iso(previous, "Europe/Berlin") == "2025-10-26T02:30:00+02:00"


def test_new_york_skipped_hour_fixed_time() -> None:
    schedule = CronSchedule("30 2 * * *", "America/New_York")
    times = fire_times(schedule, utc(2025, 3, 7, 12), 3)

    assert [local_iso(t, "America/New_York") for t in times] == [
        "2025-03-08T02:30:00-05:00",
        "2025-03-09T03:00:00-04:00",
        "2025-03-10T02:30:00-04:00",
    ]
    assert times[1].isoformat() == "2025-03-09T07:00:00+00:00"


def test_new_york_repeated_hour_fixed_time() -> None:
    schedule = CronSchedule("30 1 * * *", "America/New_York")
    times = fire_times(schedule, utc(2025, 10, 31, 12), 3)

    assert [local_iso(t, "America/New_York") for t in times] == [
        "2025-11-01T01:30:00-04:00",
        "2025-11-02T01:30:00-04:00",
        "2025-11-03T01:30:00-05:00",
    ]
    assert times[1].isoformat() == "2025-11-02T05:30:00+00:00"


def test_sydney_skipped_hour_fixed_time() -> None:
    schedule = CronSchedule("30 2 * * *", "Australia/Sydney")
    times = fire_times(schedule, utc(2025, 10, 3), 3)

    assert [local_iso(t, "Australia/Sydney") for t in times] == [
        "2025-10-04T02:30:00+10:00",
        "2025-10-05T03:00:00+11:00",
        "2025-10-06T02:30:00+11:00",
    ]
    assert times[1].isoformat() == "2025-10-04T16:00:00+00:00"


def test_sydney_repeated_hour_fixed_time() -> None:
    schedule = CronSchedule("30 2 * * *", "Australia/Sydney")
    times = fire_times(schedule, utc(2025, 4, 4), 3)

    assert [local_iso(t, "Australia/Sydney") for t in times] == [
        "2025-04-05T02:30:00+11:00",
        "2025-04-06T02:30:00+11:00",
        "2025-04-07T02:30:00+10:00",
    ]
    assert times[1].isoformat() == "2025-04-05T15:30:00+00:00"


def test_skipped_hour_fires_once() -> None:
    # 02:00 and 02:30 both fall in the gap and both move to 03:00.
    schedule = CronSchedule("0,30 2 * * *", "Europe/Berlin")
    times = fire_times(schedule, utc(2025, 3, 29, 12), 2)

    assert [local_iso(t, "Europe/Berlin") for t in times] == [
        "2025-03-30T03:00:00+02:00",
        "2025-03-31T02:00:00+02:00",
    ]


# Daylight saving time: frequent jobs


def test_berlin_every_15_min_spring() -> None:
    schedule = CronSchedule("*/15 * * * *", "Europe/Berlin")
    times = fire_times(schedule, utc(2025, 3, 30, 0, 30), 3)

    assert [local_iso(t, "Europe/Berlin") for t in times] == [
        "2025-03-30T01:45:00+01:00",
        "2025-03-30T03:00:00+02:00",
        "2025-03-30T03:15:00+02:00",
    ]
    assert [t.isoformat() for t in times] == [
        "2025-03-30T00:45:00+00:00",
        "2025-03-30T01:00:00+00:00",
        "2025-03-30T01:15:00+00:00",
    ]


def test_berlin_every_15_min_autumn() -> None:
    schedule = CronSchedule("*/15 * * * *", "Europe/Berlin")
    times = fire_times(schedule, utc(2025, 10, 26, 0, 30), 3)

    assert [local_iso(t, "Europe/Berlin") for t in times] == [
        "2025-10-26T02:45:00+02:00",
        "2025-10-26T02:00:00+01:00",
        "2025-10-26T02:15:00+01:00",
    ]
    assert [t.isoformat() for t in times] == [
        "2025-10-26T00:45:00+00:00",
        "2025-10-26T01:00:00+00:00",
        "2025-10-26T01:15:00+00:00",
    ]


def test_new_york_every_15_min_spring() -> None:
    schedule = CronSchedule("*/15 * * * *", "America/New_York")
    times = fire_times(schedule, utc(2025, 3, 9, 6, 30), 2)

    assert [local_iso(t, "America/New_York") for t in times] == [
        "2025-03-09T01:45:00-05:00",
        "2025-03-09T03:00:00-04:00",
    ]


def test_new_york_every_15_min_autumn() -> None:
    schedule = CronSchedule("*/15 * * * *", "America/New_York")
    times = fire_times(schedule, utc(2025, 11, 2, 5, 30), 2)

    assert [local_iso(t, "America/New_York") for t in times] == [
        "2025-11-02T01:45:00-04:00",
        "2025-11-02T01:00:00-05:00",
    ]


def test_sydney_every_15_min_spring() -> None:
    schedule = CronSchedule("*/15 * * * *", "Australia/Sydney")
    times = fire_times(schedule, utc(2025, 10, 4, 15, 30), 2)

    assert [local_iso(t, "Australia/Sydney") for t in times] == [
        "2025-10-05T01:45:00+10:00",
        "2025-10-05T03:00:00+11:00",
    ]


def test_sydney_every_15_min_autumn() -> None:
    schedule = CronSchedule("*/15 * * * *", "Australia/Sydney")
    times = fire_times(schedule, utc(2025, 4, 5, 15, 30), 2)

    assert [local_iso(t, "Australia/Sydney") for t in times] == [
        "2025-04-06T02:45:00+11:00",
        "2025-04-06T02:00:00+10:00",
    ]


def test_every_15_min_previous_across_gap() -> None:
    schedule = CronSchedule("*/15 * * * *", "Europe/Berlin")
    previous = schedule.previous_at_or_before(utc(2025, 3, 30, 1, 5))

    assert previous is not None
    assert local_iso(previous, "Europe/Berlin") == "2025-03-30T03:00:00+02:00"
    assert schedule.previous_at_or_before(utc(2025, 3, 30, 0, 59)) == utc(2025, 3, 30, 0, 45)


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize("expression", DST_EXPRESSIONS)
def test_transition_sweep_agrees(zone: str, expression: str) -> None:
    # Every 5 minutes through 6 hours around both changes of the year.
    schedule = CronSchedule(expression, zone)
    for transition in TRANSITIONS[zone]:
        moment = transition - timedelta(hours=3)
        while moment < transition + timedelta(hours=3):
            following = schedule.next_after(moment)
            previous = schedule.previous_at_or_before(moment)

            assert following > moment
            assert schedule.previous_at_or_before(following) == following
            assert previous is not None
            assert previous <= moment
            assert schedule.next_after(previous) == following
            moment += timedelta(minutes=5)


def _instants() -> st.SearchStrategy[datetime]:
    """Draw aware UTC instants of 2025, half of them within a day of a DST change."""
    # Hypothesis takes naive bounds and attaches the zone from `timezones`.
    year = st.datetimes(
        min_value=datetime(2025, 1, 1),
        max_value=datetime(2025, 12, 31),
        timezones=st.just(UTC),
    )
    offsets = st.timedeltas(min_value=timedelta(days=-1), max_value=timedelta(days=1))
    near_change = st.builds(
        lambda transition, offset: transition + offset,
        st.sampled_from([t for pair in TRANSITIONS.values() for t in pair]),
        offsets,
    )
    return st.one_of(year, near_change)


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    moment=_instants(),
    zone=st.sampled_from(ZONES),
    expression=st.sampled_from(DST_EXPRESSIONS),
)
def test_next_and_previous_agree(moment: datetime, zone: str, expression: str) -> None:
    schedule = CronSchedule(expression, zone)
    following = schedule.next_after(moment)

    assert following > moment
    assert schedule.previous_at_or_before(following) == following


# Interval schedules


def test_interval_next_after() -> None:
    schedule = IntervalSchedule(timedelta(seconds=30))

    assert schedule.next_after(utc(2025, 1, 1, 10)) == utc(2025, 1, 1, 10, 0, 30)


def test_interval_has_no_previous() -> None:
    schedule = IntervalSchedule(timedelta(minutes=5))

    assert schedule.previous_at_or_before(utc(2025, 1, 1, 10)) is None


def test_interval_result_is_utc() -> None:
    schedule = IntervalSchedule(timedelta(hours=1))
    moment = datetime(2025, 3, 30, 1, 30, tzinfo=ZoneInfo("Europe/Berlin"))

    assert schedule.next_after(moment).isoformat() == "2025-03-30T01:30:00+00:00"


@pytest.mark.parametrize(
    ("every", "words"),
    [
        (timedelta(seconds=30), "every 30 seconds"),
        (timedelta(seconds=1), "every second"),
        (timedelta(minutes=5), "every 5 minutes"),
        (timedelta(hours=1), "every hour"),
        (timedelta(minutes=90), "every 1 hour 30 minutes"),
        (timedelta(days=1), "every day"),
        (timedelta(seconds=1.5), "every 1.5 seconds"),
    ],
)
def test_interval_describe(every: timedelta, words: str) -> None:
    assert IntervalSchedule(every).describe() == words


@pytest.mark.parametrize(
    "every", [timedelta(0), timedelta(milliseconds=999), timedelta(seconds=-30)]
)
def test_interval_below_one_second(every: timedelta) -> None:
    with pytest.raises(ScheduleError, match="an interval must be at least 1 second"):
        IntervalSchedule(every)


def test_interval_of_one_second() -> None:
    assert IntervalSchedule(timedelta(seconds=1)).every == timedelta(seconds=1)


# parse_schedule


def test_parse_schedule_cron() -> None:
    schedule = parse_schedule(cron="*/5 * * * *", timezone="Europe/Berlin")

    assert schedule == CronSchedule("*/5 * * * *", "Europe/Berlin")


def test_parse_schedule_interval() -> None:
    schedule = parse_schedule(interval=timedelta(seconds=30))

    assert schedule == IntervalSchedule(timedelta(seconds=30))


def test_parse_schedule_neither() -> None:
    assert parse_schedule() is None


def test_parse_schedule_both_rejected() -> None:
    with pytest.raises(ScheduleError, match="set only one of them"):
        parse_schedule(cron="* * * * *", interval=timedelta(seconds=30))


def test_parse_schedule_checks_zone() -> None:
    with pytest.raises(ScheduleError, match="unknown time zone 'Mars/Olympus'"):
        parse_schedule(interval=timedelta(seconds=30), timezone="Mars/Olympus")
