from datetime import timedelta

import pytest

from cronledger.durations import (
    DurationError,
    format_duration,
    humanize_duration,
    parse_duration,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("10m", timedelta(minutes=10)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("90s", timedelta(seconds=90)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        ("0s", timedelta(0)),
        ("  5m \n", timedelta(minutes=5)),
    ],
)
def test_parse_duration_valid(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "value",
    ["10", "10 minutes", "", "   ", "5x", "1.5h", "30m1h", "1h1h", "5M", "1h 30m", "+5m", "٣s"],
)
def test_parse_duration_rejects_form(value: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(value)

    message = str(caught.value)
    assert repr(value) in message
    assert "such as 30s, 10m, 2h or 1d" in message


def test_parse_duration_rejects_negative() -> None:
    with pytest.raises(DurationError) as caught:
        parse_duration("-5m")

    assert (
        str(caught.value)
        == "invalid duration '-5m': a duration must not be negative; write e.g. 5m"
    )
    assert caught.value.rule == "a duration must not be negative; write e.g. 5m"


@pytest.mark.parametrize("value", [True, False, 300, 1.5, None, ["5m"]])
def test_parse_duration_rejects_non_string(value: object) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(value)

    assert repr(value) in str(caught.value)
    assert "a duration is a quoted string" in str(caught.value)


def test_parse_duration_rejects_too_large() -> None:
    with pytest.raises(ValueError, match="too large"):
        parse_duration("9999999999d")


def test_duration_error_is_value_error() -> None:
    assert issubclass(DurationError, ValueError)


def test_parse_duration_message_example() -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration("10 minutes")

    expected = (
        "invalid duration '10 minutes': write a number and a unit, such as 30s, 10m, 2h or 1d"
    )
    assert str(caught.value) == expected


@pytest.mark.parametrize(
    ("duration", "expected"),
    [
        (timedelta(0), "0s"),
        (timedelta(seconds=45), "45s"),
        (timedelta(minutes=90), "1h30m"),
        (timedelta(hours=2), "2h"),
        (timedelta(days=1, seconds=3), "1d3s"),
        (timedelta(seconds=59, microseconds=999_999), "59s"),
    ],
)
def test_format_duration_short_form(duration: timedelta, expected: str) -> None:
    assert format_duration(duration) == expected


@pytest.mark.parametrize("seconds", [0, 1, 59, 60, 61, 3_599, 3_600, 5_400, 86_399, 86_400, 90_061])
def test_format_duration_round_trips(seconds: int) -> None:
    duration = timedelta(seconds=seconds)

    assert parse_duration(format_duration(duration)) == duration


@pytest.mark.parametrize(
    ("duration", "expected"),
    [
        (timedelta(0), "0 s"),
        (timedelta(seconds=40), "40 s"),
        (timedelta(seconds=59), "59 s"),
        (timedelta(seconds=60), "1 min"),
        (timedelta(minutes=12, seconds=59), "12 min"),
        (timedelta(hours=1), "1 h"),
        (timedelta(hours=1, minutes=5), "1 h 5 min"),
        (timedelta(hours=3, minutes=5, seconds=30), "3 h 5 min"),
        (timedelta(days=1), "1 d"),
        (timedelta(days=2, hours=3, minutes=4), "2 d 3 h"),
    ],
)
def test_humanize_duration_forms(duration: timedelta, expected: str) -> None:
    assert humanize_duration(duration) == expected


def test_format_duration_rejects_negative() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        format_duration(timedelta(seconds=-1))


def test_humanize_duration_rejects_negative() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        humanize_duration(timedelta(seconds=-1))
