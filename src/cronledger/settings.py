"""Service settings and the ``cronledger.toml`` file that declares them.

A service is one periodic job. Its settings define when it should start (a cron
schedule, an interval or neither) and how late a start may be (grace). They
also define how long a run may take (max runtime) and how many failed or
completed runs in a row change its health (failure and recovery thresholds).

Defaults, chosen for jobs that run every few minutes to once a day:

==================  ========  ===============================================
setting             default   reason
==================  ========  ===============================================
timezone            UTC       the cron schedule's zone when it has one
grace               5m        leaves room for a busy host and slow start-up
max_runtime         1h        set it per job when runs take longer or far less
failure_threshold   1         the first failure is reported
recovery_threshold  1         the first completed run clears a failure
paused              false
==================  ========  ===============================================

``load_config`` reads the file with ``tomllib``. Unknown keys and invalid
values are rejected, and all problems are reported together in one
``ConfigError`` with file, line, key and value. The allowed keys of every
table are listed in ``ALLOWED_KEYS``. A new table needs an entry there, a
converter in ``_CONVERTERS`` for each new key and a step in ``_ConfigReader.read``.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from cronledger.durations import DurationError, parse_duration
from cronledger.errors import InvalidValueError
from cronledger.schedule import (
    CronSchedule,
    IntervalSchedule,
    Schedule,
    ScheduleError,
    load_time_zone,
)
from cronledger.validation import (
    MAX_SERVICE_NAME_LENGTH,
    service_name_problem,
    validate_service_name,
)

__all__ = [
    "ALLOWED_KEYS",
    "DEFAULT_FAILURE_THRESHOLD",
    "DEFAULT_GRACE",
    "DEFAULT_MAX_RUNTIME",
    "DEFAULT_RECOVERY_THRESHOLD",
    "DEFAULT_TIMEZONE",
    "MAX_SERVICE_NAME_LENGTH",
    "Config",
    "ConfigError",
    "JobSettings",
    "SchedulerSettings",
    "ServiceDefaults",
    "ServiceSettings",
    "load_config",
    "validate_service_name",
]

_T = TypeVar("_T")
_D = TypeVar("_D")

DEFAULT_TIMEZONE = "UTC"
DEFAULT_GRACE = timedelta(minutes=5)
DEFAULT_MAX_RUNTIME = timedelta(hours=1)
DEFAULT_FAILURE_THRESHOLD = 1
DEFAULT_RECOVERY_THRESHOLD = 1

# The services table stores the name in a VARCHAR(100) column.

# The keys that the [defaults] table and each [services.NAME] table share.
_SERVICE_DEFAULT_KEYS = frozenset(
    {"timezone", "grace", "max_runtime", "failure_threshold", "recovery_threshold"}
)

# The keys of a [services.NAME] table that tell the scheduler what to run.
_JOB_KEYS = frozenset(
    {"command", "shell", "callable", "working_dir", "environment", "timeout", "overlap"}
)

# Allowed keys per table. "services.*" means every [services.NAME] table.
# The keys of "services" itself are service names, so it has no entry.
ALLOWED_KEYS: Mapping[str, frozenset[str]] = {
    "": frozenset({"database_url", "defaults", "services", "server", "alerts", "scheduler"}),
    "defaults": _SERVICE_DEFAULT_KEYS,
    "services.*": _SERVICE_DEFAULT_KEYS
    | {"display_name", "description", "schedule", "interval", "paused", "alerts"}
    | _JOB_KEYS,
    "scheduler": frozenset({"stop_timeout", "kill_delay"}),
    "server": frozenset({"host", "port", "public_url", "session_secret"}),
    "alerts": frozenset({"channels", "remind_every", "dashboard_url", "blind_after"}),
}


@dataclass(frozen=True)
class ServiceSettings:
    """The declared settings of one service.

    ``display_name`` defaults to ``name``. ``timezone`` names the zone for
    clock times in health reasons and defaults to the cron schedule's zone, or
    UTC without one. A cron schedule in another zone than ``timezone`` is
    rejected. Raises InvalidValueError (a ValueError) for an invalid value.
    """

    name: str
    display_name: str = ""
    description: str = ""
    schedule: Schedule | None = None
    timezone: str = ""
    grace: timedelta = DEFAULT_GRACE
    max_runtime: timedelta = DEFAULT_MAX_RUNTIME
    failure_threshold: int = DEFAULT_FAILURE_THRESHOLD
    recovery_threshold: int = DEFAULT_RECOVERY_THRESHOLD
    paused: bool = False

    def __post_init__(self) -> None:
        validate_service_name(self.name)

        if self.display_name == "":
            object.__setattr__(self, "display_name", self.name)
        if self.timezone == "":
            object.__setattr__(self, "timezone", _schedule_time_zone(self.schedule))

        load_time_zone(self.timezone)
        self._check_schedule_time_zone()
        _raise_for_problem("grace", self.grace, _grace_problem(self.grace))
        _raise_for_problem("max_runtime", self.max_runtime, _max_runtime_problem(self.max_runtime))
        _raise_for_problem(
            "failure_threshold", self.failure_threshold, _threshold_problem(self.failure_threshold)
        )
        _raise_for_problem(
            "recovery_threshold",
            self.recovery_threshold,
            _threshold_problem(self.recovery_threshold),
        )

    def _check_schedule_time_zone(self) -> None:
        if isinstance(self.schedule, CronSchedule) and self.schedule.timezone != self.timezone:
            raise InvalidValueError(
                f"invalid timezone {self.timezone!r} for service {self.name!r}: the cron "
                f"schedule uses {self.schedule.timezone!r}; give both the same time zone"
            )


def _schedule_time_zone(schedule: Schedule | None) -> str:
    if isinstance(schedule, CronSchedule):
        return schedule.timezone

    return DEFAULT_TIMEZONE


def _raise_for_problem(key: str, value: object, problem: str | None) -> None:
    if problem is not None:
        raise InvalidValueError(f"invalid {key} {value!r}: {problem}")


def _grace_problem(grace: timedelta) -> str | None:
    if grace < timedelta(0):
        return "a grace period must not be negative; write e.g. 5m"

    return None


def _max_runtime_problem(max_runtime: timedelta) -> str | None:
    if max_runtime < timedelta(seconds=1):
        return "a max runtime must be at least 1 second; write e.g. 1h"

    return None


def _threshold_problem(threshold: object) -> str | None:
    # bool is a subclass of int, but "failure_threshold = true" is a mistake.
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        return "a threshold is a whole number of at least 1, such as 3"

    return None


@dataclass(frozen=True)
class ServiceDefaults:
    """Values from the [defaults] table, used by every service that does not set them."""

    timezone: str = DEFAULT_TIMEZONE
    grace: timedelta = DEFAULT_GRACE
    max_runtime: timedelta = DEFAULT_MAX_RUNTIME
    failure_threshold: int = DEFAULT_FAILURE_THRESHOLD
    recovery_threshold: int = DEFAULT_RECOVERY_THRESHOLD


@dataclass(frozen=True)
class ServerSettings:
    """The [server] table: where ``cronledger serve`` listens and how it signs sessions.

    ``session_secret`` may also come from $CRONLEDGER_SESSION_SECRET, which wins.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str | None = None
    session_secret: str | None = None


# How long cronledger may see no monitor pass, or no run start from any
# service, before it calls itself blind (see cronledger.alerts.blind).
DEFAULT_BLIND_AFTER = timedelta(minutes=5)


@dataclass(frozen=True)
class AlertSettings:
    """The [alerts] table: default channels (Apprise URLs), reminders, links, blindness.

    URLs are kept as written: ``${VAR}`` is replaced from the environment
    only by cronledger.alerts.config, when alerts are sent.
    """

    channels: tuple[str, ...] = ()
    remind_every: timedelta | None = None
    dashboard_url: str | None = None
    blind_after: timedelta = DEFAULT_BLIND_AFTER


OVERLAP_SKIP = "skip"
OVERLAP_ALLOW = "allow"
DEFAULT_STOP_TIMEOUT = timedelta(seconds=30)
DEFAULT_KILL_DELAY = timedelta(seconds=10)


@dataclass(frozen=True)
class JobSettings:
    """The job that ``cronledger scheduler`` runs for one service, with its limits.

    Exactly one of ``command`` and ``callable`` is set. ``command`` is an
    argument list, or a string for ``/bin/sh -c`` when ``shell`` is true.
    ``callable`` is ``"module:function"``. ``working_dir`` is absolute (the
    loader resolves it against the config file's folder). ``timeout``
    defaults to the service's max runtime.
    """

    service_name: str
    command: tuple[str, ...] | str | None = None
    shell: bool = False
    callable: str | None = None
    working_dir: Path | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    timeout: timedelta = DEFAULT_MAX_RUNTIME
    overlap: str = OVERLAP_SKIP


@dataclass(frozen=True)
class SchedulerSettings:
    """The [scheduler] table: how a graceful stop ends the running jobs."""

    # How long a stop waits for running jobs before it terminates them.
    stop_timeout: timedelta = DEFAULT_STOP_TIMEOUT
    # How long a job may take to exit after SIGTERM before it gets SIGKILL.
    kill_delay: timedelta = DEFAULT_KILL_DELAY


@dataclass(frozen=True)
class Config:
    """The contents of a ``cronledger.toml`` file, services in file order."""

    path: Path
    database_url: str | None = None
    defaults: ServiceDefaults = field(default_factory=ServiceDefaults)
    services: dict[str, ServiceSettings] = field(default_factory=dict)
    # Services whose table sets `paused`. Only these have their pause state
    # written by a sync, so a file without the key keeps an operator's pause.
    pause_declared: frozenset[str] = frozenset()
    server: ServerSettings = field(default_factory=lambda: ServerSettings())
    alerts: AlertSettings = field(default_factory=lambda: AlertSettings())
    # The `alerts` key of the services that set it: Apprise URLs that replace
    # the [alerts] channels for that service; an empty tuple silences it.
    service_alerts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # The services that have a command or callable, for the scheduler.
    jobs: Mapping[str, JobSettings] = field(default_factory=dict)
    scheduler: SchedulerSettings = field(default_factory=lambda: SchedulerSettings())


class ConfigError(InvalidValueError):
    """A config file that cannot be read or contains invalid values.

    ``problems`` contains one message per problem, each naming the file, the line,
    the key and the value. ``str(error)`` joins them with newlines.
    """

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = Path(path)
        self.problems = tuple(problems)
        super().__init__("\n".join(problems))


def load_config(path: Path | str) -> Config:
    """Read and validate a ``cronledger.toml`` file.

    Raises ConfigError for a missing or unreadable file, a TOML syntax error,
    an unknown key or an invalid value. All invalid keys and values of the
    file are reported in one error.
    """
    path = Path(path)
    text = _read_text(path)

    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(path, [f"{path}: invalid TOML: {error}"]) from None

    reader = _ConfigReader(path, text)
    config = reader.read(document)
    if reader.problems:
        raise ConfigError(path, reader.problems)

    return config


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        message = f"config file {path} not found; create it or give the path of an existing file"
        raise ConfigError(path, [message]) from None
    except UnicodeDecodeError as error:
        message = f"{path}: the file is not valid UTF-8 ({error}); save it as UTF-8"
        raise ConfigError(path, [message]) from None
    except OSError as error:
        raise ConfigError(path, [f"cannot read config file {path}: {error.strerror}"]) from None


class _Rejected(Exception):
    """A value that breaks a rule, raised by the converters below."""

    def __init__(self, rule: str) -> None:
        self.rule = rule
        super().__init__(rule)


# Converters turn a TOML value into a settings value or raise _Rejected.


def _to_text(value: object) -> str:
    if not isinstance(value, str):
        raise _Rejected("it must be a string in quotes")

    return value


def _to_non_empty_text(value: object) -> str:
    text = _to_text(value)
    if text.strip() == "":
        raise _Rejected("it must not be empty")

    return text


def _to_flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Rejected("it must be true or false")

    return value


def _to_time_zone(value: object) -> str:
    name = _to_text(value)
    try:
        load_time_zone(name)
    except ScheduleError as error:
        raise _Rejected(f"unknown time zone; {error.rule}") from None

    return name


def _to_cron_expression(value: object) -> str:
    expression = _to_text(value)
    try:
        # The zone does not change whether an expression is valid, and the
        # service's zone is applied once all keys are read.
        CronSchedule(expression)
    except ScheduleError as error:
        raise _Rejected(error.rule) from None

    return expression


def _to_duration(value: object) -> timedelta:
    try:
        return parse_duration(value)
    except DurationError as error:
        raise _Rejected(error.rule) from None


def _to_interval(value: object) -> timedelta:
    interval = _to_duration(value)
    try:
        IntervalSchedule(interval)
    except ScheduleError as error:
        raise _Rejected(error.rule) from None

    return interval


def _to_grace(value: object) -> timedelta:
    grace = _to_duration(value)
    _reject_problem(_grace_problem(grace))
    return grace


def _to_max_runtime(value: object) -> timedelta:
    max_runtime = _to_duration(value)
    _reject_problem(_max_runtime_problem(max_runtime))
    return max_runtime


def _to_threshold(value: object) -> int:
    _reject_problem(_threshold_problem(value))
    assert isinstance(value, int)
    return value


def _to_port(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise _Rejected("a port is a whole number from 1 to 65535, such as 8080")
    return value


# ${NAME} in an alert URL, replaced from the environment when alerts are sent.
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _to_alert_urls(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _Rejected('it must be an array of Apprise URLs, such as ["json://host/path"]')

    urls = []
    for item in value:
        url = _to_non_empty_text(item).strip()
        if "://" not in url:
            raise _Rejected(
                f"{url!r} is not an Apprise URL; write e.g. mailto://, slack:// or json://"
            )
        if "${" in ENV_REFERENCE.sub("", url):
            raise _Rejected(
                f"{url!r} has an unclosed or invalid ${{...}}; write ${{VARIABLE_NAME}}"
            )
        urls.append(url)

    return tuple(urls)


def _to_positive_duration(value: object) -> timedelta:
    duration = _to_duration(value)
    if duration <= timedelta(0):
        raise _Rejected("it must be longer than 0s; write e.g. 5m")

    return duration


def _to_dashboard_url(value: object) -> str:
    url = _to_non_empty_text(value).strip()
    if not url.startswith(("http://", "https://")):
        raise _Rejected("it must start with http:// or https://, such as https://cron.example.com")

    return url.rstrip("/")


def _to_command(value: object) -> tuple[str, ...] | str:
    if isinstance(value, str):
        if value.strip() == "":
            raise _Rejected("it must not be empty")
        return value
    if not isinstance(value, list) or not value:
        raise _Rejected('it must be an argument list such as ["/app/bin/sync", "--all"]')
    if not all(isinstance(item, str) for item in value) or value[0] == "":
        raise _Rejected("every argument must be a string in quotes, the first not empty")

    return tuple(value)


# "module:function", such as "app.jobs:sync_flows".
_CALLABLE_PATTERN = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*"
    r"(\.[A-Za-z_][A-Za-z0-9_]*)*"
)


def _to_callable(value: object) -> str:
    text = _to_text(value).strip()
    if _CALLABLE_PATTERN.fullmatch(text) is None:
        raise _Rejected('write "module:function", such as "app.jobs:sync_flows"')

    return text


def _to_environment(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _Rejected('it must be a table of strings, such as { LOG_LEVEL = "debug" }')
    for name, item in value.items():
        if not isinstance(item, str):
            raise _Rejected(f"the value of {name} must be a string in quotes")
        if name == "" or "=" in name or "\0" in name or "\0" in item:
            raise _Rejected(f"{name!r} is not a valid environment variable name")

    return dict(value)


def _to_overlap(value: object) -> str:
    text = _to_text(value)
    if text not in (OVERLAP_SKIP, OVERLAP_ALLOW):
        raise _Rejected(f'write "{OVERLAP_SKIP}" (the default) or "{OVERLAP_ALLOW}"')

    return text


def _to_at_least_a_second(value: object) -> timedelta:
    duration = _to_duration(value)
    if duration < timedelta(seconds=1):
        raise _Rejected("it must be at least 1s; write e.g. 30s")

    return duration


def _reject_problem(problem: str | None) -> None:
    if problem is not None:
        raise _Rejected(problem)


_CONVERTERS: Mapping[str, Callable[[object], object]] = {
    "database_url": _to_non_empty_text,
    "display_name": _to_non_empty_text,
    "description": _to_text,
    "schedule": _to_cron_expression,
    "interval": _to_interval,
    "timezone": _to_time_zone,
    "grace": _to_grace,
    "max_runtime": _to_max_runtime,
    "failure_threshold": _to_threshold,
    "recovery_threshold": _to_threshold,
    "paused": _to_flag,
    "host": _to_non_empty_text,
    "port": _to_port,
    "public_url": _to_non_empty_text,
    "session_secret": _to_non_empty_text,
    "channels": _to_alert_urls,
    "alerts": _to_alert_urls,
    "remind_every": _to_positive_duration,
    "dashboard_url": _to_dashboard_url,
    "blind_after": _to_positive_duration,
    "command": _to_command,
    "shell": _to_flag,
    "callable": _to_callable,
    "working_dir": _to_non_empty_text,
    "environment": _to_environment,
    "timeout": _to_at_least_a_second,
    "overlap": _to_overlap,
    "stop_timeout": _to_duration,
    "kill_delay": _to_duration,
}


def _build_defaults(values: dict[str, object]) -> ServiceDefaults:
    return ServiceDefaults(
        timezone=_typed(values, "timezone", str, DEFAULT_TIMEZONE),
        grace=_typed(values, "grace", timedelta, DEFAULT_GRACE),
        max_runtime=_typed(values, "max_runtime", timedelta, DEFAULT_MAX_RUNTIME),
        failure_threshold=_typed(values, "failure_threshold", int, DEFAULT_FAILURE_THRESHOLD),
        recovery_threshold=_typed(values, "recovery_threshold", int, DEFAULT_RECOVERY_THRESHOLD),
    )


def _build_server(values: dict[str, object]) -> ServerSettings:
    return ServerSettings(
        host=_typed(values, "host", str, ServerSettings.host),
        port=_typed(values, "port", int, ServerSettings.port),
        public_url=_typed(values, "public_url", str, None),
        session_secret=_typed(values, "session_secret", str, None),
    )


def _build_alerts(values: dict[str, object]) -> AlertSettings:
    return AlertSettings(
        channels=_typed(values, "channels", tuple, ()),
        remind_every=_typed(values, "remind_every", timedelta, None),
        dashboard_url=_typed(values, "dashboard_url", str, None),
        blind_after=_typed(values, "blind_after", timedelta, DEFAULT_BLIND_AFTER),
    )


def _build_scheduler(values: dict[str, object]) -> SchedulerSettings:
    return SchedulerSettings(
        stop_timeout=_typed(values, "stop_timeout", timedelta, DEFAULT_STOP_TIMEOUT),
        kill_delay=_typed(values, "kill_delay", timedelta, DEFAULT_KILL_DELAY),
    )


def _job_problems(values: dict[str, object]) -> list[tuple[str, str]]:
    """Return (key, rule) for each job key that does not fit the others."""
    has_command = "command" in values
    has_callable = "callable" in values
    if has_command and has_callable:
        return [("callable", "command is set too; a job runs a command or a callable, not both")]

    if not has_command and not has_callable:
        return [
            (key, 'it applies only to a job; add command = [...] or callable = "module:function"')
            for key in sorted(_JOB_KEYS & values.keys())
        ]

    problems = []
    if "schedule" not in values and "interval" not in values:
        key = "command" if has_command else "callable"
        problems.append(
            (key, 'the service has no schedule; add schedule = "*/5 * * * *" or interval = "30s"')
        )
    shell = values.get("shell", False)
    command = values.get("command")
    if has_callable and "shell" in values:
        problems.append(("shell", "it applies only to a command"))
    elif isinstance(command, str) and not shell:
        problems.append(("command", _command_string_rule(command)))
    elif isinstance(command, tuple) and shell:
        problems.append(("shell", "shell = true takes the command as one string, not a list"))

    return problems


# Characters that only a shell gives a meaning to.
_SHELL_SYNTAX = re.compile(r"[|&;<>$`*?(){}\[\]~\n]")


def _command_string_rule(command: str) -> str:
    if _SHELL_SYNTAX.search(command) is not None:
        return "it uses shell syntax, and a command string runs only with shell = true; set it"

    try:
        suggestion = json.dumps(shlex.split(command))
    except ValueError:
        suggestion = '["program", "argument"]'
    return (
        f"a command string runs only through /bin/sh with shell = true; set it, "
        f"or write the command as an argument list: {suggestion}"
    )


def _build_job(
    settings: ServiceSettings, values: dict[str, object], config_folder: Path
) -> JobSettings | None:
    """Build the job of a service whose keys passed ``_job_problems``, or None."""
    if "command" not in values and "callable" not in values:
        return None

    command = values.get("command")
    if not isinstance(command, tuple | str):
        command = None
    working_dir = _typed(values, "working_dir", str, None)
    environment = values.get("environment", {})
    assert isinstance(environment, dict)
    return JobSettings(
        service_name=settings.name,
        command=command,
        shell=_typed(values, "shell", bool, False),
        callable=_typed(values, "callable", str, None),
        working_dir=None if working_dir is None else (config_folder / working_dir).resolve(),
        environment=environment,
        timeout=_typed(values, "timeout", timedelta, settings.max_runtime),
        overlap=_typed(values, "overlap", str, OVERLAP_SKIP),
    )


def _build_service(
    name: str, values: dict[str, object], defaults: ServiceDefaults
) -> ServiceSettings:
    """Build the settings of a service from converted values and the defaults."""
    timezone = _typed(values, "timezone", str, defaults.timezone)

    schedule: Schedule | None = None
    cron = _typed(values, "schedule", str, None)
    interval = _typed(values, "interval", timedelta, None)
    if cron is not None:
        schedule = CronSchedule(cron, timezone)
    elif interval is not None:
        schedule = IntervalSchedule(interval)

    return ServiceSettings(
        name=name,
        display_name=_typed(values, "display_name", str, ""),
        description=_typed(values, "description", str, ""),
        schedule=schedule,
        timezone=timezone,
        grace=_typed(values, "grace", timedelta, defaults.grace),
        max_runtime=_typed(values, "max_runtime", timedelta, defaults.max_runtime),
        failure_threshold=_typed(values, "failure_threshold", int, defaults.failure_threshold),
        recovery_threshold=_typed(values, "recovery_threshold", int, defaults.recovery_threshold),
        paused=_typed(values, "paused", bool, False),
    )


def _typed(values: dict[str, object], key: str, kind: type[_T], default: _D) -> _T | _D:
    """Return a converted value with its type checked, or ``default`` when absent."""
    if key not in values:
        return default

    value = values[key]
    if not isinstance(value, kind):
        raise TypeError(f"{key} was converted to {type(value).__name__}, not {kind.__name__}")

    return value


class _ConfigReader:
    """Convert a parsed TOML document into a Config, collecting every problem."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = _KeyLines(text)
        self.problems: list[str] = []
        self.jobs: dict[str, JobSettings] = {}

    def read(self, document: dict[str, object]) -> Config:
        top = self._convert_table((), "", document)

        defaults_table = self._sub_table(("defaults",), document.get("defaults", {}))
        defaults = _build_defaults(self._convert_table(("defaults",), "defaults", defaults_table))

        services_table = self._sub_table(("services",), document.get("services", {}))
        services: dict[str, ServiceSettings] = {}
        for name, service_table in services_table.items():
            settings = self._read_service(name, service_table, defaults)
            if settings is not None:
                services[name] = settings

        database_url = _typed(top, "database_url", str, None)
        pause_declared = frozenset(
            name
            for name, table in services_table.items()
            if isinstance(table, dict) and "paused" in table
        )
        server_table = self._sub_table(("server",), document.get("server", {}))
        server = _build_server(self._convert_table(("server",), "server", server_table))
        alerts_table = self._sub_table(("alerts",), document.get("alerts", {}))
        alerts = _build_alerts(self._convert_table(("alerts",), "alerts", alerts_table))
        # The services that are None here had their problems reported already.
        service_alerts = {
            name: _to_alert_urls(table["alerts"])
            for name, table in services_table.items()
            if name in services and isinstance(table, dict) and "alerts" in table
        }
        return Config(
            self.path,
            database_url,
            defaults,
            services,
            pause_declared,
            server=server,
            alerts=alerts,
            service_alerts=service_alerts,
            jobs=self.jobs,
            scheduler=self._read_scheduler(document),
        )

    def _read_scheduler(self, document: dict[str, object]) -> SchedulerSettings:
        table = self._sub_table(("scheduler",), document.get("scheduler", {}))
        return _build_scheduler(self._convert_table(("scheduler",), "scheduler", table))

    def _read_service(
        self, name: str, raw_table: object, defaults: ServiceDefaults
    ) -> ServiceSettings | None:
        """Convert one [services.NAME] table, or return None after reporting its problems."""
        problems_before = len(self.problems)
        key_path = ("services", name)

        name_problem = service_name_problem(name)
        if name_problem is not None:
            self._report(key_path, f"service name {name!r} is invalid: {name_problem}")

        table = self._sub_table(key_path, raw_table)
        values = self._convert_table(key_path, "services.*", table)
        if "schedule" in values and "interval" in values:
            self._report_value(
                (*key_path, "interval"),
                table["interval"],
                "schedule is set too; a service has a cron schedule or an interval, not both",
            )
        for key, rule in _job_problems(values):
            self._report_value((*key_path, key), table.get(key), rule)

        if len(self.problems) > problems_before:
            return None

        try:
            settings = _build_service(name, values, defaults)
        except ValueError as error:
            # The converters check every value, so this is only a safety net.
            self._report(key_path, f"service {name!r} is invalid: {error}")
            return None

        job = _build_job(settings, values, self.path.parent)
        if job is not None:
            self.jobs[name] = job
        return settings

    def _sub_table(self, key_path: tuple[str, ...], value: object) -> dict[str, object]:
        if isinstance(value, dict):
            return value

        dotted = _dotted_key(key_path)
        self._report_value(key_path, value, f"it must be a table such as [{dotted}]")
        return {}

    def _convert_table(
        self, key_path: tuple[str, ...], schema: str, table: dict[str, object]
    ) -> dict[str, object]:
        """Convert the plain keys of a table, reporting unknown keys and invalid values."""
        allowed = ALLOWED_KEYS[schema]
        converted: dict[str, object] = {}

        for key, value in table.items():
            key_at = (*key_path, key)
            if key not in allowed:
                self._report(
                    key_at,
                    f"unknown key {_dotted_key(key_at)} = {_show_value(value)}; "
                    f"allowed keys here: {', '.join(sorted(allowed))}",
                )
                continue
            # "alerts" is a list of URLs in a service table but the [alerts]
            # table at the top level.
            if key not in _CONVERTERS or (schema == "" and key == "alerts"):
                # A sub-table such as [defaults], read on its own.
                continue

            try:
                converted[key] = _CONVERTERS[key](value)
            except _Rejected as rejection:
                self._report_value(key_at, value, rejection.rule)

        return converted

    def _report_value(self, key_path: tuple[str, ...], value: object, rule: str) -> None:
        self._report(key_path, f"{_dotted_key(key_path)} = {_show_value(value)} is invalid: {rule}")

    def _report(self, key_path: tuple[str, ...], message: str) -> None:
        line = self.lines.find(key_path)
        where = f"{self.path}" if line is None else f"{self.path} line {line}"
        self.problems.append(f"{where}: {message}")


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _dotted_key(key_path: tuple[str, ...]) -> str:
    """Write a key path as TOML does, quoting parts that are not bare keys."""
    parts = [
        part if _BARE_KEY.fullmatch(part) else json.dumps(part, ensure_ascii=False)
        for part in key_path
    ]
    return ".".join(parts)


def _show_value(value: object) -> str:
    """Write a TOML value the way it looks in the file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "{...} (a table)"
    if isinstance(value, list):
        return "[...] (an array)"

    return str(value)


class _KeyLines:
    """Line numbers of the keys and table headers in a TOML text.

    tomllib reports no positions, so this scans the text. It understands
    table headers, dotted and quoted keys, comments and multi-line strings,
    which covers config files written by hand. A key that it cannot place
    (one inside an inline table, for example) falls back to the line of
    its table.
    """

    def __init__(self, text: str) -> None:
        self._lines: dict[tuple[str, ...], int] = {}
        table: tuple[str, ...] = ()

        for number, line in _lines_outside_multiline_strings(text):
            stripped = line.strip()
            if stripped.startswith("["):
                header = _parse_key(stripped.lstrip("["))
                if header is not None:
                    table = header[0]
                    self._remember(table, number)
                continue

            assignment = _parse_key(stripped)
            if assignment is not None and assignment[1].startswith("="):
                self._remember((*table, *assignment[0]), number)

    def _remember(self, key_path: tuple[str, ...], number: int) -> None:
        # Each prefix of a dotted key is defined on the first line that uses it.
        for length in range(1, len(key_path) + 1):
            self._lines.setdefault(key_path[:length], number)

    def find(self, key_path: tuple[str, ...]) -> int | None:
        """Return the line of a key, or of its closest enclosing table, or None."""
        for length in range(len(key_path), 0, -1):
            number = self._lines.get(key_path[:length])
            if number is not None:
                return number

        return None


def _lines_outside_multiline_strings(text: str) -> Iterator[tuple[int, str]]:
    """Yield numbered lines, skipping the inner lines of multi-line strings."""
    open_delimiter: str | None = None

    for number, line in enumerate(text.splitlines(), start=1):
        if open_delimiter is None:
            yield number, line

        for delimiter in ('"""', "'''"):
            if open_delimiter in (None, delimiter) and line.count(delimiter) % 2 == 1:
                open_delimiter = delimiter if open_delimiter is None else None
                break


def _parse_key(text: str) -> tuple[tuple[str, ...], str] | None:
    """Parse a dotted key at the start of ``text``; return its parts and the rest."""
    parts: list[str] = []
    rest = text

    while True:
        rest = rest.lstrip()
        part = _parse_key_part(rest)
        if part is None:
            return None

        parts.append(part[0])
        rest = part[1].lstrip()
        if not rest.startswith("."):
            return tuple(parts), rest
        rest = rest[1:]


def _parse_key_part(text: str) -> tuple[str, str] | None:
    bare = _BARE_KEY.match(text)
    if bare is not None:
        return bare.group(), text[bare.end() :]

    if text.startswith("'"):
        end = text.find("'", 1)
        return None if end < 0 else (text[1:end], text[end + 1 :])

    if text.startswith('"'):
        end = _closing_quote(text)
        if end < 0:
            return None
        # tomllib decodes the escapes of a basic string exactly as in the file.
        try:
            decoded = tomllib.loads(f"key = {text[: end + 1]}")["key"]
        except tomllib.TOMLDecodeError:
            return None
        return str(decoded), text[end + 1 :]

    return None


def _closing_quote(text: str) -> int:
    index = 1
    while index < len(text):
        if text[index] == "\\":
            index += 2
            continue
        if text[index] == '"':
            return index
        index += 1

    return -1
