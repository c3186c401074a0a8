"""The scheduler's keys in cronledger.toml: jobs per service and the [scheduler] table."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from cronledger.scheduler.changes import describe_changes
from cronledger.settings import (
    ConfigError,
    JobSettings,
    SchedulerSettings,
    ServiceSettings,
    load_config,
)


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cronledger.toml"
    path.write_text(text, encoding="utf-8")
    return path


def config_problems(tmp_path: Path, text: str) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, text))
    return caught.value.problems


def test_command_job_with_every_key(tmp_path: Path) -> None:
    config = load_config(
        write_config(
            tmp_path,
            """
[services.sync]
interval = "30s"
max_runtime = "10m"
command = ["/app/bin/sync", "--all"]
working_dir = "work"
environment = { LOG_LEVEL = "debug" }
timeout = "2m"
overlap = "allow"
""",
        )
    )

    job = config.jobs["sync"]
    assert job.command == ("/app/bin/sync", "--all")
    assert job.shell is False
    assert job.callable is None
    assert job.working_dir == (tmp_path / "work").resolve()
    assert job.environment == {"LOG_LEVEL": "debug"}
    assert job.timeout == timedelta(minutes=2)
    assert job.overlap == "allow"


def test_job_defaults(tmp_path: Path) -> None:
    config = load_config(
        write_config(
            tmp_path,
            """
[services.report]
schedule = "0 6 * * *"
max_runtime = "20m"
callable = "app.jobs:report"
""",
        )
    )

    assert config.jobs["report"] == JobSettings(
        service_name="report",
        callable="app.jobs:report",
        timeout=timedelta(minutes=20),
    )
    assert config.scheduler == SchedulerSettings(
        stop_timeout=timedelta(seconds=30), kill_delay=timedelta(seconds=10)
    )


def test_shell_string_command(tmp_path: Path) -> None:
    config = load_config(
        write_config(
            tmp_path,
            """
[services.clean]
interval = "1h"
command = "find /tmp -mtime +7 -delete | wc -l"
shell = true
""",
        )
    )

    assert config.jobs["clean"].command == "find /tmp -mtime +7 -delete | wc -l"
    assert config.jobs["clean"].shell is True


def test_service_without_job(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, '[services.cron-only]\nschedule = "@daily"\n'))

    assert "cron-only" in config.services
    assert config.jobs == {}


def test_scheduler_table(tmp_path: Path) -> None:
    config = load_config(
        write_config(tmp_path, '[scheduler]\nstop_timeout = "2m"\nkill_delay = "0s"\n')
    )

    assert config.scheduler.stop_timeout == timedelta(minutes=2)
    assert config.scheduler.kill_delay == timedelta(0)


def test_code_settings_need_no_job_keys() -> None:
    settings = ServiceSettings("from-code", grace=timedelta(minutes=1))

    assert settings.max_runtime == timedelta(hours=1)


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ('interval = "1s"\ncommand = "echo hi"', 'services.job.command = "echo hi" is invalid'),
        ('interval = "1s"\ncommand = "a | b"', "it uses shell syntax"),
        ('interval = "1s"\ncommand = ["a"]\nshell = true', "services.job.shell = true is invalid"),
        ('interval = "1s"\ncommand = []', "it must be an argument list"),
        ('interval = "1s"\ncommand = ["a", 1]', "every argument must be a string"),
        ('interval = "1s"\ncallable = "not a function"', 'write "module:function"'),
        ('interval = "1s"\ncallable = "m:f"\ncommand = ["a"]', "not both"),
        ('interval = "1s"\ncallable = "m:f"\nshell = true', "it applies only to a command"),
        ('command = ["a"]', "the service has no schedule"),
        ('interval = "1s"\ntimeout = "5s"', "it applies only to a job"),
        ('interval = "1s"\ncommand = ["a"]\ntimeout = "0s"', "it must be at least 1s"),
        ('interval = "1s"\ncommand = ["a"]\novertap = "skip"', "unknown key services.job.overtap"),
        ('interval = "1s"\ncommand = ["a"]\noverlap = "queue"', 'write "skip" (the default)'),
        ('interval = "1s"\ncommand = ["a"]\nenvironment = { N = 1 }', "the value of N must be"),
        ('interval = "1s"\ncommand = ["a"]\nenvironment = "N=1"', "it must be a table of strings"),
        ('interval = "1s"\ncommand = ["a"]\nworking_dir = ""', "it must not be empty"),
    ],
)
def test_invalid_job_keys(tmp_path: Path, table: str, expected: str) -> None:
    problems = config_problems(tmp_path, f"[services.job]\n{table}\n")

    assert len(problems) == 1, problems
    assert expected in problems[0]
    assert "cronledger.toml line " in problems[0]


def test_invalid_scheduler_keys(tmp_path: Path) -> None:
    problems = config_problems(
        tmp_path, '[scheduler]\nstop_timeout = "soon"\nkill_delay = 5\nlinger = "1s"\n'
    )

    assert len(problems) == 3, problems
    assert 'scheduler.stop_timeout = "soon" is invalid' in problems[0]
    assert "scheduler.kill_delay = 5 is invalid" in problems[1]
    assert "unknown key scheduler.linger" in problems[2]


def test_reload_changes_described(tmp_path: Path) -> None:
    old = load_config(
        write_config(
            tmp_path,
            '[services.a]\ninterval = "1s"\ncommand = ["true"]\n'
            '[services.b]\ninterval = "1s"\ncommand = ["true"]\n',
        )
    )
    new = load_config(
        write_config(
            tmp_path,
            '[scheduler]\nstop_timeout = "1m"\n'
            '[services.b]\ninterval = "2s"\ncommand = ["false"]\n'
            '[services.c]\nschedule = "@daily"\n',
        )
    )

    assert describe_changes(old, new) == [
        "service c added",
        "service a removed; a run in progress finishes",
        "service b changed: schedule, command",
        "[scheduler] changed: stop_timeout",
    ]
    assert describe_changes(new, new) == ["no changes"]
