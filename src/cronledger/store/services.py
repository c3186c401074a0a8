"""Service settings in cron_services: sync from the config file, read for health.

The config file is the single source of truth for the services it
declares: a sync overwrites their settings. A service may also be declared
from code (``track(name, schedule=...)``); such a declaration never
overrides one from the config file. A sync never deletes a service and
never pauses one that the file does not mark as paused: a service removed
from the file keeps its runs and its last settings, and is reported.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, case, select
from sqlalchemy.dialects import postgresql, sqlite

from cronledger.schedule import CronSchedule, IntervalSchedule
from cronledger.settings import Config, ServiceSettings
from cronledger.store.tables import cron_services

log = logging.getLogger(__name__)

SOURCE_CONFIG = "config"
SOURCE_CODE = "code"


@dataclass
class SyncResult:
    """Changes made by one sync, by service name."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    undeclared: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ServiceRecord:
    """A service as stored: its settings, when it was first seen, its health."""

    settings: ServiceSettings
    created_at: datetime
    resumed_at: datetime | None
    health_state: str | None
    health_since: datetime | None
    declared: bool
    # When the monitor last judged this service, None before its first pass.
    health_checked_at: datetime | None = None


def settings_columns(settings: ServiceSettings) -> dict[str, Any]:
    """Return the cron_services columns that store ``settings``."""
    schedule = settings.schedule
    return {
        "display_name": settings.display_name,
        "description": settings.description,
        "schedule": schedule.expression if isinstance(schedule, CronSchedule) else None,
        "interval_seconds": (
            round(schedule.every.total_seconds())
            if isinstance(schedule, IntervalSchedule)
            else None
        ),
        "timezone": settings.timezone,
        "grace_seconds": round(settings.grace.total_seconds()),
        "max_runtime_seconds": round(settings.max_runtime.total_seconds()),
        "failure_threshold": settings.failure_threshold,
        "recovery_threshold": settings.recovery_threshold,
    }


def sync_services(engine: Engine, config: Config, now: datetime) -> SyncResult:
    """Write the services of ``config`` to the database; return what changed."""
    result = SyncResult()
    with engine.begin() as connection:
        existing = {row.name: row for row in connection.execute(select(cron_services))}
        for name, settings in config.services.items():
            columns = settings_columns(settings)
            if name in config.pause_declared:
                columns["paused"] = settings.paused
            row = existing.get(name)
            if row is None:
                connection.execute(
                    cron_services.insert().values(
                        name=name,
                        created_at=now,
                        settings_source=SOURCE_CONFIG,
                        settings_updated_at=now,
                        paused=columns.pop("paused", False),
                        **columns,
                    )
                )
                result.added.append(name)
                continue
            stored = {key: getattr(row, key) for key in columns}
            if stored == columns and row.settings_source == SOURCE_CONFIG:
                result.unchanged.append(name)
                continue
            if row.paused and columns.get("paused") is False:
                columns["resumed_at"] = now
            connection.execute(
                cron_services.update()
                .where(cron_services.c.name == name)
                .values(settings_source=SOURCE_CONFIG, settings_updated_at=now, **columns)
            )
            result.updated.append(name)

        result.undeclared = sorted(
            name
            for name, row in existing.items()
            if row.settings_source == SOURCE_CONFIG and name not in config.services
        )

    for name in result.added:
        log.info("service %s added from %s", name, config.path)
    for name in result.updated:
        log.info("service %s updated from %s", name, config.path)
    for name in result.undeclared:
        log.warning(
            "service %s is no longer in %s; its runs and last settings are kept",
            name,
            config.path,
        )
    return result


def declare_service(connection: Connection, settings: ServiceSettings, now: datetime) -> bool:
    """Store settings declared from code, unless the config file declares the service.

    Returns True when the stored settings changed.
    """
    columns = settings_columns(settings)
    row = connection.execute(
        select(cron_services).where(cron_services.c.name == settings.name)
    ).first()
    if row is None:
        # Another process may insert the same service at the same moment.
        insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
        connection.execute(
            insert(cron_services)
            .values(
                name=settings.name,
                created_at=now,
                settings_source=SOURCE_CODE,
                settings_updated_at=now,
                **columns,
            )
            .on_conflict_do_nothing(index_elements=["name"])
        )
        return True
    if row.settings_source == SOURCE_CONFIG:
        if any(getattr(row, key) != value for key, value in columns.items()):
            log.warning(
                "service %s: settings declared in code differ from the config file's; "
                "the config file wins",
                settings.name,
            )
        return False
    if all(getattr(row, key) == value for key, value in columns.items()):
        return False
    connection.execute(
        cron_services.update()
        .where(cron_services.c.name == settings.name)
        .values(settings_source=SOURCE_CODE, settings_updated_at=now, **columns)
    )
    return True


def set_paused(engine: Engine, name: str, paused: bool, now: datetime) -> bool:
    """Pause or resume a service; return False if no such service exists.

    Resuming a paused service sets ``resumed_at``, from which its schedule is
    judged again, so the pause is never reported as lateness or missed runs.
    """
    services = cron_services.c
    resumed_at = (
        services.resumed_at if paused else case((services.paused, now), else_=services.resumed_at)
    )
    with engine.begin() as connection:
        count = connection.execute(
            cron_services.update()
            .where(services.name == name)
            .values(paused=paused, resumed_at=resumed_at)
        ).rowcount
    return bool(count)


def load_services(connection: Connection) -> list[ServiceRecord]:
    """Read every service with its settings; undeclared ones get the defaults."""
    records = []
    for row in connection.execute(select(cron_services).order_by(cron_services.c.name)):
        records.append(
            ServiceRecord(
                settings=_settings_from_row(row),
                created_at=row.created_at,
                resumed_at=row.resumed_at,
                health_state=row.health_state,
                health_since=row.health_since,
                declared=row.settings_source is not None,
                health_checked_at=row.health_checked_at,
            )
        )
    return records


def _settings_from_row(row: Any) -> ServiceSettings:
    timezone = row.timezone or "UTC"
    schedule: CronSchedule | IntervalSchedule | None = None
    if row.schedule:
        schedule = CronSchedule(row.schedule, timezone)
    elif row.interval_seconds:
        schedule = IntervalSchedule(timedelta(seconds=row.interval_seconds))

    values: dict[str, Any] = {
        "name": row.name,
        "display_name": row.display_name or "",
        "description": row.description or "",
        "schedule": schedule,
        "timezone": timezone,
        "paused": bool(row.paused),
    }
    if row.grace_seconds is not None:
        values["grace"] = timedelta(seconds=row.grace_seconds)
    if row.max_runtime_seconds is not None:
        values["max_runtime"] = timedelta(seconds=row.max_runtime_seconds)
    if row.failure_threshold is not None:
        values["failure_threshold"] = row.failure_threshold
    if row.recovery_threshold is not None:
        values["recovery_threshold"] = row.recovery_threshold
    return ServiceSettings(**values)
