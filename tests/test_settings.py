import json
from datetime import timedelta
from pathlib import Path

import pytest

from cronledger.durations import format_duration
from cronledger.schedule import CronSchedule, IntervalSchedule, ScheduleError
from cronledger.settings import (
    ALLOWED_KEYS,
    DEFAULT_GRACE,
    DEFAULT_MAX_RUNTIME,
    Config,
    ConfigError,
    ServiceDefaults,
    ServiceSettings,
    load_config,
    validate_service_name,
)

EXAMPLE = """\
database_url = "sqlite:///cronledger.db"   # optional
[defaults]            # optional, applies to every service
timezone = "UTC"
grace = "5m"
max_runtime = "1h"
[services.flow-sync]
display_name = "Flow Sync"
description = "Copy the flow catalogue"
schedule = "*/5 * * * *"   # cron; or interval = "30s" (exactly one or neither)
timezone = "Europe/Berlin"
grace = "2m"
max_runtime = "10m"
failure_threshold = 3
recovery_threshold = 2
paused = false

[services."heart beat"]
interval = "30s"

[services.plain]
"""


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cronledger.toml"
    path.write_text(text, encoding="utf-8")
    return path


def config_problems(tmp_path: Path, text: str) -> tuple[str, ...]:
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


# validate_service_name


@pytest.mark.parametrize("name", ["flow-sync", "x", "Flow Sync 2", "a" * 100, "ünïcode/ジョブ"])
def test_service_name_valid(name: str) -> None:
    assert validate_service_name(name) == name


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "it has 0 characters"),
        ("a" * 101, "it has 101 characters"),
        (" flow", "leading or trailing whitespace"),
        ("flow\n", "leading or trailing whitespace"),
        ("flow\x00sync", "control character"),
        ("flow\x1bsync", "control character"),
        (42, "a service name is a string"),
    ],
)
def test_service_name_invalid(name: object, problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        validate_service_name(name)

    message = str(caught.value)
    assert message.startswith(f"invalid service name {name!r}: ")
    assert problem in message
    assert "1 to 100 characters" in message


# ServiceSettings


def test_settings_defaults() -> None:
    settings = ServiceSettings(name="flow-sync")

    assert settings.display_name == "flow-sync"
    assert settings.description == ""
    assert settings.schedule is None
    assert settings.timezone == "UTC"
    assert settings.grace == timedelta(minutes=5)
    assert settings.max_runtime == timedelta(hours=1)
    assert settings.failure_threshold == 1
    assert settings.recovery_threshold == 1
    assert settings.paused is False


def test_settings_zone_from_schedule() -> None:
    schedule = CronSchedule("0 9 * * *", "Europe/Berlin")
    settings = ServiceSettings(name="report", schedule=schedule)

    assert settings.timezone == "Europe/Berlin"


def test_settings_zone_mismatch_rejected() -> None:
    schedule = CronSchedule("0 9 * * *", "Europe/Berlin")

    with pytest.raises(ValueError, match="the cron schedule uses 'Europe/Berlin'"):
        ServiceSettings(name="report", schedule=schedule, timezone="UTC")


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"name": " report"}, "invalid service name ' report'"),
        ({"timezone": "Europe/Berln"}, "unknown time zone 'Europe/Berln'"),
        ({"grace": timedelta(seconds=-1)}, "a grace period must not be negative"),
        ({"max_runtime": timedelta(0)}, "a max runtime must be at least 1 second"),
        ({"failure_threshold": 0}, "invalid failure_threshold 0"),
        ({"recovery_threshold": True}, "invalid recovery_threshold True"),
    ],
)
def test_settings_invalid_value(changes: dict[str, object], fragment: str) -> None:
    arguments: dict[str, object] = {"name": "report", **changes}

    with pytest.raises(ValueError, match=fragment):
        ServiceSettings(**arguments)  # type: ignore[arg-type]


def test_settings_grace_zero_allowed() -> None:
    assert ServiceSettings(name="report", grace=timedelta(0)).grace == timedelta(0)


# load_config: valid files


def test_load_example_config(tmp_path: Path) -> None:
    path = write_config(tmp_path, EXAMPLE)
    config = load_config(path)

    assert config.path == path
    assert config.database_url == "sqlite:///cronledger.db"
    assert config.defaults == ServiceDefaults()
    assert list(config.services) == ["flow-sync", "heart beat", "plain"]


def test_load_example_service(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, EXAMPLE))

    assert config.services["flow-sync"] == ServiceSettings(
        name="flow-sync",
        display_name="Flow Sync",
        description="Copy the flow catalogue",
        schedule=CronSchedule("*/5 * * * *", "Europe/Berlin"),
        timezone="Europe/Berlin",
        grace=timedelta(minutes=2),
        max_runtime=timedelta(minutes=10),
        failure_threshold=3,
        recovery_threshold=2,
        paused=False,
    )


def test_load_interval_and_plain(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, EXAMPLE))

    assert config.services["heart beat"].schedule == IntervalSchedule(timedelta(seconds=30))
    assert config.services["plain"].schedule is None
    assert config.services["plain"].grace == DEFAULT_GRACE
    assert config.services["plain"].max_runtime == DEFAULT_MAX_RUNTIME


def test_load_empty_file(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, ""))

    assert config.database_url is None
    assert config.defaults == ServiceDefaults()
    assert config.services == {}


def test_defaults_apply_to_services(tmp_path: Path) -> None:
    text = """\
[defaults]
timezone = "America/New_York"
grace = "10m"
max_runtime = "2h"
failure_threshold = 2
recovery_threshold = 3

[services.report]
schedule = "0 9 * * MON-FRI"

[services.sync]
grace = "1m"
"""
    config = load_config(write_config(tmp_path, text))
    report = config.services["report"]
    sync = config.services["sync"]

    assert report.schedule == CronSchedule("0 9 * * MON-FRI", "America/New_York")
    assert report.timezone == "America/New_York"
    assert report.grace == timedelta(minutes=10)
    assert report.max_runtime == timedelta(hours=2)
    assert report.failure_threshold == 2
    assert report.recovery_threshold == 3
    assert sync.grace == timedelta(minutes=1)


def test_dotted_keys_accepted(tmp_path: Path) -> None:
    text = 'services.sync.interval = "1m"\nservices.sync.grace = "30s"\n'
    config = load_config(write_config(tmp_path, text))

    assert config.services["sync"].schedule == IntervalSchedule(timedelta(minutes=1))
    assert config.services["sync"].grace == timedelta(seconds=30)


def _to_toml(config: Config) -> str:
    """Write a Config back as TOML, for the round-trip test."""
    lines = [f"database_url = {json.dumps(config.database_url)}"]
    for name, service in config.services.items():
        lines.append(f"[services.{json.dumps(name)}]")
        lines.append(f"display_name = {json.dumps(service.display_name)}")
        lines.append(f"description = {json.dumps(service.description)}")
        if isinstance(service.schedule, CronSchedule):
            lines.append(f"schedule = {json.dumps(service.schedule.expression)}")
        elif isinstance(service.schedule, IntervalSchedule):
            lines.append(f'interval = "{format_duration(service.schedule.every)}"')
        lines.append(f"timezone = {json.dumps(service.timezone)}")
        lines.append(f'grace = "{format_duration(service.grace)}"')
        lines.append(f'max_runtime = "{format_duration(service.max_runtime)}"')
        lines.append(f"failure_threshold = {service.failure_threshold}")
        lines.append(f"recovery_threshold = {service.recovery_threshold}")
        lines.append(f"paused = {str(service.paused).lower()}")
    return "\n".join(lines) + "\n"


def test_config_round_trips(tmp_path: Path) -> None:
    original = load_config(write_config(tmp_path, EXAMPLE))
    copy_path = tmp_path / "copy.toml"
    copy_path.write_text(_to_toml(original), encoding="utf-8")

    copy = load_config(copy_path)

    assert copy.database_url == original.database_url
    assert copy.services == original.services


# load_config: invalid values, each reported with file, line, key and value


@pytest.mark.parametrize(
    ("line", "rule"),
    [
        ('grace = "-5m"', "a duration must not be negative; write e.g. 5m"),
        ('grace = "5 minutes"', "write a number and a unit, such as 30s, 10m, 2h or 1d"),
        ("grace = 300", "a duration is a quoted string"),
        ('max_runtime = "0s"', "a max runtime must be at least 1 second"),
        ("failure_threshold = 0", "a threshold is a whole number of at least 1"),
        ("failure_threshold = 2.5", "a threshold is a whole number of at least 1"),
        ('failure_threshold = "3"', "a threshold is a whole number of at least 1"),
        ("recovery_threshold = true", "a threshold is a whole number of at least 1"),
        ("recovery_threshold = -1", "a threshold is a whole number of at least 1"),
        ('timezone = "Europe/Berln"', "use an IANA name such as Europe/Berlin or UTC"),
        ('schedule = "61 * * * *"', "minute 61 is out of range 0-59"),
        ('schedule = "* * * *"', "expected 5 fields"),
        ('schedule = "@reboot"', "not a periodic schedule"),
        ('schedule = "0 0 31 2 *"', "it never fires"),
        ('interval = "0s"', "an interval must be at least 1 second"),
        ('paused = "no"', "it must be true or false"),
        ("display_name = 5", "it must be a string in quotes"),
        ('display_name = ""', "it must not be empty"),
        ("description = false", "it must be a string in quotes"),
    ],
)
def test_invalid_service_value(tmp_path: Path, line: str, rule: str) -> None:
    text = f"# services\n\n[services.flow-sync]\n# one key per case\n{line}\n"
    key, value = (part.strip() for part in line.split("=", maxsplit=1))

    problems = config_problems(tmp_path, text)

    assert len(problems) == 1
    assert str(tmp_path / "cronledger.toml") in problems[0]
    assert problems[0].startswith(f"{tmp_path / 'cronledger.toml'} line 5: ")
    assert f"services.flow-sync.{key} = {value} is invalid: " in problems[0]
    assert rule in problems[0]


def test_grace_message_example(tmp_path: Path) -> None:
    lines = ["[services.flow-sync]"] + ["# padding"] * 10 + ['grace = "-5m"']
    problems = config_problems(tmp_path, "\n".join(lines) + "\n")

    assert problems == (
        f'{tmp_path / "cronledger.toml"} line 12: services.flow-sync.grace = "-5m" is invalid: '
        "a duration must not be negative; write e.g. 5m",
    )


def test_invalid_default_value(tmp_path: Path) -> None:
    problems = config_problems(tmp_path, '[defaults]\ntimezone = "UTC"\nmax_runtime = "-1h"\n')

    assert len(problems) == 1
    assert "line 3: " in problems[0]
    assert 'defaults.max_runtime = "-1h" is invalid' in problems[0]


def test_database_url_not_string(tmp_path: Path) -> None:
    problems = config_problems(tmp_path, "database_url = 5\n")

    assert len(problems) == 1
    assert "line 1: database_url = 5 is invalid: it must be a string in quotes" in problems[0]


def test_schedule_and_interval_rejected(tmp_path: Path) -> None:
    text = '[services.sync]\nschedule = "*/5 * * * *"\ninterval = "30s"\n'
    problems = config_problems(tmp_path, text)

    assert len(problems) == 1
    assert "line 3: " in problems[0]
    assert 'services.sync.interval = "30s" is invalid' in problems[0]
    assert "a cron schedule or an interval, not both" in problems[0]


def test_unknown_service_key(tmp_path: Path) -> None:
    problems = config_problems(tmp_path, '[services.sync]\ninterval = "30s"\ngracee = "5m"\n')

    assert len(problems) == 1
    assert "line 3: " in problems[0]
    assert 'unknown key services.sync.gracee = "5m"' in problems[0]
    assert "allowed keys here: " in problems[0]
    assert "description, display_name" in problems[0]


def test_unknown_top_level_key(tmp_path: Path) -> None:
    problems = config_problems(tmp_path, 'database_url = "sqlite://"\ncolour = "blue"\n')

    assert len(problems) == 1
    assert 'line 2: unknown key colour = "blue"' in problems[0]


def test_unknown_table(tmp_path: Path) -> None:
    problems = config_problems(tmp_path, '\n[alert]\nemail = "ops@example.com"\n')

    assert len(problems) == 1
    assert "line 2: unknown key alert = {...} (a table)" in problems[0]


def test_unknown_default_key(tmp_path: Path) -> None:
    problems = config_problems(tmp_path, '[defaults]\nschedule = "@daily"\n')

    assert len(problems) == 1
    assert 'line 2: unknown key defaults.schedule = "@daily"' in problems[0]


def test_service_not_a_table(tmp_path: Path) -> None:
    problems = config_problems(tmp_path, '[services]\nsync = "*/5 * * * *"\n')

    assert len(problems) == 1
    assert 'line 2: services.sync = "*/5 * * * *" is invalid' in problems[0]
    assert "it must be a table such as [services.sync]" in problems[0]


def test_invalid_service_name(tmp_path: Path) -> None:
    problems = config_problems(tmp_path, '\n[services." sync"]\ninterval = "30s"\n')

    assert len(problems) == 1
    assert "line 2: service name ' sync' is invalid" in problems[0]
    assert "leading or trailing whitespace" in problems[0]


def test_quoted_service_name_line(tmp_path: Path) -> None:
    text = '[services."heart beat"]\ninterval = "30s"\n\ngrace = "-1m"\n'
    problems = config_problems(tmp_path, text)

    assert len(problems) == 1
    assert 'line 4: services."heart beat".grace = "-1m" is invalid' in problems[0]


def test_dotted_key_line(tmp_path: Path) -> None:
    text = 'services.sync.interval = "1m"\nservices.sync.grace = "-1m"\n'
    problems = config_problems(tmp_path, text)

    assert len(problems) == 1
    assert 'line 2: services.sync.grace = "-1m" is invalid' in problems[0]


def test_multiline_string_ignored(tmp_path: Path) -> None:
    # The header-like line inside the description must not move the line count.
    text = '[services.sync]\ndescription = """\n[services.other]\ngrace = "1m"\n"""\ngrace = "x"\n'
    problems = config_problems(tmp_path, text)

    assert len(problems) == 1
    assert 'line 6: services.sync.grace = "x" is invalid' in problems[0]


def test_all_problems_reported(tmp_path: Path) -> None:
    text = """\
database_url = 5
[services.one]
grace = "-5m"
failure_threshold = 0
[services.two]
schedule = "61 * * * *"
timezone = "Mars/Olympus"
"""
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    lines = str(caught.value).splitlines()

    assert len(lines) == 5
    assert "line 1: database_url = 5" in lines[0]
    assert 'line 3: services.one.grace = "-5m"' in lines[1]
    assert "line 4: services.one.failure_threshold = 0" in lines[2]
    assert 'line 6: services.two.schedule = "61 * * * *"' in lines[3]
    assert 'line 7: services.two.timezone = "Mars/Olympus"' in lines[4]


def test_bad_zone_still_checks_cron(tmp_path: Path) -> None:
    text = '[services.two]\ntimezone = "Mars/Olympus"\nschedule = "0 0 30 2 *"\n'
    problems = config_problems(tmp_path, text)

    assert len(problems) == 2
    assert "timezone" in problems[0]
    assert "it never fires" in problems[1]


# load_config: unreadable files


def test_toml_syntax_error(tmp_path: Path) -> None:
    problems = config_problems(tmp_path, 'database_url = "sqlite://"\ngrace =\n')

    assert len(problems) == 1
    assert problems[0].startswith(f"{tmp_path / 'cronledger.toml'}: invalid TOML: ")
    assert "line 2" in problems[0]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert str(caught.value) == (
        f"config file {path} not found; create it or give the path of an existing file"
    )


def test_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "cronledger.toml"
    path.write_bytes(b'description = "caf\xe9"\n')

    with pytest.raises(ConfigError, match="not valid UTF-8"):
        load_config(path)


def test_config_error_is_value_error() -> None:
    assert issubclass(ConfigError, ValueError)
    assert issubclass(ScheduleError, ValueError)


def test_allowed_keys_cover_example() -> None:
    assert "services" in ALLOWED_KEYS[""]
    assert "schedule" in ALLOWED_KEYS["services.*"]
    assert "schedule" not in ALLOWED_KEYS["defaults"]
