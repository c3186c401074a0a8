"""Parse and format the durations that people write in configuration files.

The accepted form is one or more pairs of a whole number and a unit, largest
unit first and each unit at most once: ``30s``, ``10m``, ``2h``, ``1d``,
``1h30m``, ``90s``. The units are ``d`` (day), ``h`` (hour), ``m`` (minute) and
``s`` (second). Surrounding whitespace is ignored. ``0s`` is a valid duration.

``format_duration`` writes the same short form back, and ``humanize_duration``
writes the spaced form used in health reasons (``3 h 5 min``).
"""

from __future__ import annotations

import re
from datetime import timedelta

from cronledger.errors import InvalidValueError

__all__ = [
    "DurationError",
    "format_duration",
    "humanize_duration",
    "parse_duration",
]

ACCEPTED_FORM = "write a number and a unit, such as 30s, 10m, 2h or 1d"

_UNIT_SECONDS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}

# Each group is optional, but the order d, h, m, s is fixed, so "30m1h" and
# "1h1h" do not match. The check that at least one group matched is separate.
# [0-9] rather than \d, because \d also matches digits of other scripts.
_DURATION_PATTERN = re.compile(
    r"(?:(?P<d>[0-9]+)d)?(?:(?P<h>[0-9]+)h)?(?:(?P<m>[0-9]+)m)?(?:(?P<s>[0-9]+)s)?"
)


class DurationError(InvalidValueError):
    """An invalid duration, with the broken rule kept apart for other messages.

    ``str(error)`` is the full message. ``rule`` is the part after the value,
    so that the config loader can name the file, line and key in front of it.
    """

    def __init__(self, value: object, rule: str) -> None:
        self.value = value
        self.rule = rule
        super().__init__(f"invalid duration {value!r}: {rule}")


def parse_duration(value: object) -> timedelta:
    """Parse a duration such as ``1h30m`` into a ``timedelta``.

    Raises DurationError (a ValueError) for anything but a string in the
    accepted form: a bare number, a negative, an unknown unit, an empty string,
    a bool or any other type.
    """
    if not isinstance(value, str):
        raise DurationError(value, f"a duration is a quoted string; {ACCEPTED_FORM}")

    text = value.strip()
    unsigned = text.removeprefix("-")
    match = _DURATION_PATTERN.fullmatch(unsigned)
    if unsigned == "" or match is None:
        raise DurationError(value, ACCEPTED_FORM)

    if text.startswith("-"):
        raise DurationError(value, f"a duration must not be negative; write e.g. {unsigned}")

    total_seconds = 0
    for unit, seconds_per_unit in _UNIT_SECONDS.items():
        count = match.group(unit)
        if count is not None:
            total_seconds += int(count) * seconds_per_unit

    try:
        return timedelta(seconds=total_seconds)
    except OverflowError:
        raise DurationError(value, "the duration is too large; write at most 999999999d") from None


def format_duration(duration: timedelta) -> str:
    """Write a duration in the short form that ``parse_duration`` accepts.

    Fractions of a second are rounded down, so ``parse_duration`` of the
    result equals the input for whole-second durations. A zero duration
    is ``0s``. Raises ValueError for a negative duration.
    """
    parts = [f"{count}{unit}" for count, unit in _split_units(duration) if count]
    if not parts:
        return "0s"

    return "".join(parts)


def humanize_duration(duration: timedelta) -> str:
    """Write a duration for a sentence, such as ``40 s``, ``12 min`` or ``3 h 5 min``.

    The result keeps the two largest units and rounds the rest down: under a
    minute it shows seconds, under an hour whole minutes, under a day hours
    and minutes, and from one day on days and hours. A zero
    minute or hour part is left out (``2 h``, ``1 d``). Raises ValueError for
    a negative duration.
    """
    days, hours, minutes, seconds = (count for count, _ in _split_units(duration))

    if days:
        return _join_counts((days, "d"), (hours, "h"))
    if hours:
        return _join_counts((hours, "h"), (minutes, "min"))
    if minutes:
        return f"{minutes} min"

    return f"{seconds} s"


def _split_units(duration: timedelta) -> list[tuple[int, str]]:
    """Split a duration into whole days, hours, minutes and seconds."""
    if duration < timedelta(0):
        raise ValueError(f"invalid duration {duration!r}: a duration must not be negative")

    remaining = duration // timedelta(seconds=1)
    counts: list[tuple[int, str]] = []
    for unit, seconds_per_unit in _UNIT_SECONDS.items():
        count, remaining = divmod(remaining, seconds_per_unit)
        counts.append((count, unit))

    return counts


def _join_counts(major: tuple[int, str], minor: tuple[int, str]) -> str:
    major_count, major_unit = major
    minor_count, minor_unit = minor
    if minor_count == 0:
        return f"{major_count} {major_unit}"

    return f"{major_count} {major_unit} {minor_count} {minor_unit}"
