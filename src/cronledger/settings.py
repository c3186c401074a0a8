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

# Allowed keys per table. "services.*" means every [services.NAME] table.
# The keys of "services" itself are service names, so it has no entry.
ALLOWED_KEYS: Mapping[str, frozenset[str]] = {
    "": frozenset({"database_url", "defaults", "services"}),
    "defaults": _SERVICE_DEFAULT_KEYS,
    "services.*": _SERVICE_DEFAULT_KEYS
    | {"display_name", "description", "schedule", "interval", "paused"},
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
class Config:
    """The contents of a ``cronledger.toml`` file, services in file order."""

    path: Path
    database_url: str | None = None
    defaults: ServiceDefaults = field(default_factory=ServiceDefaults)
    services: dict[str, ServiceSettings] = field(default_factory=dict)
    # Services whose table sets `paused`. Only these have their pause state
    # written by a sync, so a file without the key keeps an operator's pause.
    pause_declared: frozenset[str] = frozenset()


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
}


def _build_defaults(values: dict[str, object]) -> ServiceDefaults:
    return ServiceDefaults(
        timezone=_typed(values, "timezone", str, DEFAULT_TIMEZONE),
        grace=_typed(values, "grace", timedelta, DEFAULT_GRACE),
        max_runtime=_typed(values, "max_runtime", timedelta, DEFAULT_MAX_RUNTIME),
        failure_threshold=_typed(values, "failure_threshold", int, DEFAULT_FAILURE_THRESHOLD),
        recovery_threshold=_typed(values, "recovery_threshold", int, DEFAULT_RECOVERY_THRESHOLD),
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
        return Config(self.path, database_url, defaults, services, pause_declared)

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

        if len(self.problems) > problems_before:
            return None

        try:
            return _build_service(name, values, defaults)
        except ValueError as error:
            # The converters check every value, so this is only a safety net.
            self._report(key_path, f"service {name!r} is invalid: {error}")
            return None

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
            if key not in _CONVERTERS:
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
