"""Expected start times of a periodic job: cron expressions and fixed intervals.

A schedule returns the next fire time strictly after an instant and, for cron,
the latest fire time at or before an instant. Both methods take and return
timezone-aware datetimes in UTC. A cron expression is evaluated in the job's
IANA time zone and the result converted back to UTC.

Cron syntax
    Five fields: minute (0-59), hour (0-23), day of month (1-31), month (1-12
    or JAN-DEC) and day of week (0-7 or SUN-SAT, where 0 and 7 are Sunday).
    Each field takes ``*``, a number, a range ``1-5``, a list ``1,15,30`` and a
    step ``*/10`` or ``0-30/10``. Names are case-insensitive. The aliases
    ``@yearly``, ``@annually``, ``@monthly``, ``@weekly``, ``@daily``,
    ``@midnight`` and ``@hourly`` stand for the usual expressions, and
    ``@reboot`` is rejected because it is not periodic. When both the day of
    month and the day of week are restricted (neither starts with ``*``), a day
    matches if either field matches, as in Vixie cron: ``0 0 13 * FRI`` fires on
    every 13th and every Friday. The cronsim extensions ``L``, ``LW`` and ``#``
    are accepted as well. Expressions are evaluated by the cronsim library.

Daylight saving time
    cronsim 2.9 follows Debian cron and splits expressions in two groups.

    A fixed-time expression (neither the minute nor the hour field starts with
    ``*``, as in ``30 2 * * *`` or ``0 9-17 * * *``) fires by the wall clock.
    A fire time that falls in the hour skipped in spring fires once, at the
    first minute after the gap (02:30 becomes 03:00 in Berlin). A fire time
    that falls in the hour repeated in autumn fires once, in the first pass
    (02:30 CEST, not again at 02:30 CET).

    Any other expression (``*/15 * * * *``, ``0 * * * *``, ``0 */2 * * *``)
    fires at every instant whose local time matches. Local times that do not
    exist are skipped, and the repeated hour fires twice, once per pass. The
    job then keeps its real-time rhythm: a ``*/15`` job runs every 15 minutes
    of real time across both changes.

    cronsim returns a repeated-hour fire time of a fixed-time job even when the
    search starts in the second pass, after that fire time. This module skips
    such results, so for every ``t``, ``next_after(t) > t`` and
    ``previous_at_or_before(next_after(t)) == next_after(t)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from cronledger.errors import InvalidValueError

__all__ = [
    "CronSchedule",
    "IntervalSchedule",
    "Schedule",
    "ScheduleError",
    "load_time_zone",
    "parse_schedule",
]

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

MIN_INTERVAL = timedelta(seconds=1)

_FIELD_NAMES = ("minute", "hour", "day-of-month", "month", "day-of-week")
_FIELD_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_MONTH_NAMES = (
    "JAN",
    "FEB",
    "MAR",
    "APR",
    "MAY",
    "JUN",
    "JUL",
    "AUG",
    "SEP",
    "OCT",
    "NOV",
    "DEC",
)
_WEEKDAY_NAMES = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
_FIELD_SYNTAX = "a number, a range such as 1-5, a list such as 1,15 or a step such as */10"

# Bound on the cronsim results skipped or stepped over while correcting for a
# repeated hour (see the module docstring). A repeated hour contains at most 60
# fire times of a 5-field expression, so reaching the bound means a bug here.
_MAX_CORRECTION_STEPS = 100


class ScheduleError(InvalidValueError):
    """An invalid schedule or time zone, with the broken rule kept apart.

    ``str(error)`` is the full message, which names the value. ``rule`` is the
    part after the value, so that the config loader can put the file, line and
    key in front of it.
    """

    def __init__(self, message: str, *, value: object, rule: str) -> None:
        self.value = value
        self.rule = rule
        super().__init__(message)


def load_time_zone(name: str) -> tzinfo:
    """Return the time zone for an IANA name such as ``Europe/Berlin``.

    ``UTC`` maps to ``datetime.UTC``, on which cronsim skips its DST handling.
    Raises ScheduleError (a ValueError) for a name that the tz database
    does not contain.
    """
    if name == "UTC":
        return UTC

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        # ZoneInfo raises ValueError for names that are not relative paths,
        # such as "/etc/localtime", and TypeError for non-strings.
        rule = "use an IANA name such as Europe/Berlin or UTC"
        raise ScheduleError(f"unknown time zone {name!r}: {rule}", value=name, rule=rule) from None


@dataclass(frozen=True)
class CronSchedule:
    """A cron expression evaluated in an IANA time zone.

    ``expression`` is kept as written (``@daily`` stays ``@daily``).
    Raises ScheduleError (a ValueError) for an invalid expression, an
    expression that never fires or an unknown time zone.
    """

    expression: str
    timezone: str = "UTC"
    _zone: tzinfo = field(init=False, repr=False, compare=False)
    _fields: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_zone", load_time_zone(self.timezone))
        object.__setattr__(self, "_fields", _validate_cron(self.expression))

    def next_after(self, t: datetime) -> datetime:
        """Return the first fire time strictly after ``t``, in UTC."""
        _require_aware(t)
        iterator = CronSim(self._fields, t.astimezone(self._zone))

        for _ in range(_MAX_CORRECTION_STEPS):
            candidate = _next_fire(iterator, self)
            if candidate > t:
                return candidate

        raise RuntimeError(f"no fire time after {t.isoformat()} found for {self}")

    def previous_at_or_before(self, t: datetime) -> datetime | None:
        """Return the last fire time at or before ``t``, in UTC.

        cronsim's reverse search can pass over a fire time in a repeated hour,
        so its result is only a starting point. The forward steps from there
        make the result agree with ``next_after``.
        """
        _require_aware(t)

        # cronsim's reverse search starts one second before its argument and
        # ignores microseconds, so start one second after t rounded down.
        search_start = t.replace(microsecond=0) + timedelta(seconds=1)
        iterator = CronSim(self._fields, search_start.astimezone(self._zone), reverse=True)
        try:
            candidate = next(iterator).astimezone(UTC)
        except StopIteration:
            return None

        for _ in range(_MAX_CORRECTION_STEPS):
            following = self.next_after(candidate)
            if following > t:
                return candidate
            candidate = following

        raise RuntimeError(f"no fire time at or before {t.isoformat()} found for {self}")

    def describe(self) -> str:
        """Describe the schedule in English, such as ``At 02:30 every day (Europe/Berlin)``."""
        words = CronSim(self._fields, datetime(2000, 1, 1, tzinfo=UTC)).explain()
        if self.timezone == "UTC":
            return words

        return f"{words} ({self.timezone})"


@dataclass(frozen=True)
class IntervalSchedule:
    """A fixed interval between starts, measured from the previous start.

    An interval has no grid of fire times: ``previous_at_or_before`` returns
    None, and a missed run is judged from the last start. Raises ScheduleError
    (a ValueError) for an interval shorter than 1 second.
    """

    every: timedelta

    def __post_init__(self) -> None:
        if self.every < MIN_INTERVAL:
            rule = "an interval must be at least 1 second; write e.g. 30s"
            seconds = self.every.total_seconds()
            raise ScheduleError(
                f"invalid interval of {seconds:g} seconds: {rule}", value=self.every, rule=rule
            )

    def next_after(self, t: datetime) -> datetime:
        """Return ``t + every``, in UTC."""
        _require_aware(t)
        return (t + self.every).astimezone(UTC)

    def previous_at_or_before(self, t: datetime) -> datetime | None:
        """Return None, because an interval has no fixed grid of fire times.

        The return type matches ``CronSchedule`` so that callers can use either.
        """
        _require_aware(t)
        return None

    def describe(self) -> str:
        """Describe the interval, such as ``every 30 seconds`` or ``every 1 hour 30 minutes``."""
        return f"every {_spell_out(self.every)}"


Schedule = CronSchedule | IntervalSchedule


def parse_schedule(
    cron: str | None = None,
    interval: timedelta | None = None,
    timezone: str = "UTC",
) -> Schedule | None:
    """Build a schedule from a cron expression or an interval, or None for neither.

    ``timezone`` applies to the cron expression. It is validated even with an
    interval or no schedule, so that a typo is reported wherever it is set.
    Raises ScheduleError (a ValueError) for both at once or any invalid value.
    """
    load_time_zone(timezone)

    if cron is not None and interval is not None:
        rule = "a cron expression and an interval are both set; set only one of them"
        raise ScheduleError(f"invalid schedule {cron!r}: {rule}", value=cron, rule=rule)
    if cron is not None:
        return CronSchedule(cron, timezone)
    if interval is not None:
        return IntervalSchedule(interval)

    return None


def _require_aware(t: datetime) -> None:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"invalid datetime {t.isoformat()}: it must be timezone-aware")


def _next_fire(iterator: CronSim, schedule: CronSchedule) -> datetime:
    try:
        return next(iterator).astimezone(UTC)
    except StopIteration:
        # cronsim stops after searching 50 years. The check in
        # _validate_cron rejects expressions that never fire, so only
        # an expression with gaps of over 50 years can get here.
        raise RuntimeError(f"{schedule} has no fire time within 50 years") from None


def _validate_cron(expression: str) -> str:
    """Return the five cron fields for an expression or alias, or raise ScheduleError."""
    fields = _expand_alias(expression)
    parts = fields.split()
    if len(parts) != 5:
        raise _cron_error(
            expression,
            f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}",
        )

    try:
        iterator = CronSim(fields, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as error:
        raise _cron_error(expression, _explain_field_error(parts, str(error))) from None

    # cronsim rejects most impossible dates itself (see _explain_field_error).
    # Its own search stops after 50 years, so this call cannot loop forever.
    try:
        next(iterator)
    except StopIteration:
        raise _cron_error(expression, "it never fires; check the day and month") from None

    return fields


def _expand_alias(expression: str) -> str:
    text = expression.strip()
    if not text.startswith("@"):
        return text

    alias = text.lower()
    if alias == "@reboot":
        raise _cron_error(
            expression,
            "@reboot runs once at system start and is not a periodic schedule; "
            "use a 5-field expression or an alias such as @daily",
        )
    if alias not in ALIASES:
        raise _cron_error(expression, f"unknown alias; use one of {', '.join(ALIASES)}")

    return ALIASES[alias]


def _cron_error(expression: str, rule: str) -> ScheduleError:
    return ScheduleError(
        f"invalid cron expression {expression!r}: {rule}", value=expression, rule=rule
    )


def _explain_field_error(parts: list[str], cronsim_message: str) -> str:
    """Turn cronsim's terse "Bad minute" into a rule that names the wrong value."""
    for index, name in enumerate(_FIELD_NAMES):
        if cronsim_message != f"Bad {name}":
            continue

        problem = _find_field_problem(index, parts[index])
        if problem is not None:
            return problem

        if name == "day-of-month":
            # Every value is in range, so cronsim rejected a day that no
            # selected month has, such as 30 or 31 February.
            return f"it never fires: no month in '{parts[3]}' has day '{parts[2]}'"

        return f"the {name} field '{parts[index]}' is invalid; write {_FIELD_SYNTAX}"

    return cronsim_message


def _find_field_problem(index: int, text: str) -> str | None:
    """Name the first value in a field that is out of range or not a known name."""
    name = _FIELD_NAMES[index]
    low, high = _FIELD_RANGES[index]
    ranged_text = text.split("/", maxsplit=1)[0]

    for token in re.split(r"[,\-]", ranged_text):
        if token.isdigit() and token.isascii() and not low <= int(token) <= high:
            return f"{name} {token} is out of range {low}-{high}"
        if token.isalpha() and not _is_known_name(index, token.upper()):
            kind = "a number or a name" if name in ("month", "day-of-week") else "a number"
            return f"{name} '{token}' is not {kind}; {_names_hint(index)}"

    return None


def _is_known_name(index: int, token: str) -> bool:
    if _FIELD_NAMES[index] == "month":
        return token in _MONTH_NAMES
    if _FIELD_NAMES[index] == "day-of-week":
        return token in _WEEKDAY_NAMES

    # "L" and "LW" are cronsim extensions: the last day and last weekday of the month.
    return _FIELD_NAMES[index] == "day-of-month" and token in ("L", "LW")


def _names_hint(index: int) -> str:
    low, high = _FIELD_RANGES[index]
    if _FIELD_NAMES[index] == "month":
        return f"use {low}-{high} or JAN-DEC"
    if _FIELD_NAMES[index] == "day-of-week":
        return f"use {low}-{high} or SUN-SAT"

    return f"use {low}-{high}"


def _spell_out(duration: timedelta) -> str:
    """Write a duration in words, such as ``1 hour 30 minutes``, or ``day`` for exactly one unit."""
    if duration % timedelta(seconds=1):
        return f"{duration.total_seconds():g} seconds"

    words = []
    remaining = duration // timedelta(seconds=1)
    for unit, seconds_per_unit in (("day", 86_400), ("hour", 3_600), ("minute", 60), ("second", 1)):
        count, remaining = divmod(remaining, seconds_per_unit)
        if count:
            words.append(_plural(count, unit))

    # "every day" reads better than "every 1 day".
    if len(words) == 1 and words[0].startswith("1 "):
        return words[0].removeprefix("1 ")

    return " ".join(words)


def _plural(count: int, unit: str) -> str:
    if count == 1:
        return f"1 {unit}"

    return f"{count} {unit}s"
