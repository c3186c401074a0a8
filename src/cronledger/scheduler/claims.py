"""Fire claims in the database: which scheduler runs a fire time, and which are skipped.

Before it runs anything, a scheduler inserts one row per due fire time into
``cron_fire_claims`` with ON CONFLICT DO NOTHING on (service_name,
scheduled_at). The rows that the insert returns are the ones this scheduler
won; another scheduler on the same database won the others. The due fire
times of one loop pass are claimed in one transaction, so 200 jobs that fire
in the same second cost one round trip, not 200.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, select
from sqlalchemy.dialects import postgresql, sqlite

from cronledger.scheduler.planner import is_stale_claim, should_skip
from cronledger.settings import JobSettings
from cronledger.store.tables import cron_fire_claims, cron_services, cron_skipped_runs

log = logging.getLogger(__name__)

OUTCOME_RUN = "run"
OUTCOME_SKIPPED = "skipped"

SKIPPED_OVERLAP = 'the previous run was still running (overlap = "skip")'


@dataclass(frozen=True)
class Fire:
    """One fire time of one service; ``catch_up`` marks the start-up catch-up run."""

    service_name: str
    scheduled_at: datetime
    catch_up: bool = False


@dataclass
class ClaimResult:
    """The fire times of one claim, sorted by what this scheduler does with them."""

    # Fire times this scheduler runs, with the run key stored in the claim.
    run: list[tuple[Fire, str]] = field(default_factory=list)
    skipped: list[Fire] = field(default_factory=list)
    # Fire times another scheduler claimed first.
    lost: list[Fire] = field(default_factory=list)
    paused: list[Fire] = field(default_factory=list)


@dataclass(frozen=True)
class ServiceState:
    """The stored facts of a service that the start-up catch-up decision reads."""

    created_at: datetime | None
    last_run_at: datetime | None


def claim_fires(
    engine: Engine,
    fires: Sequence[Fire],
    jobs: Mapping[str, JobSettings],
    now: datetime,
    kill_delay: timedelta,
    running_here: Mapping[str, int],
) -> ClaimResult:
    """Claim ``fires`` for this scheduler and decide to run or skip each one.

    ``running_here`` counts the runs of each service in progress in this
    process; the database adds those of other schedulers. Raises
    SQLAlchemyError when the database fails; then nothing is claimed.
    """
    result = ClaimResult()
    names = sorted({fire.service_name for fire in fires})
    with engine.begin() as connection:
        paused = _paused_services(connection, names)
        busy = _busy_services(connection, names, jobs, now, kill_delay)
        busy |= {name for name, count in running_here.items() if count > 0}

        rows: list[dict[str, Any]] = []
        decided: dict[tuple[str, datetime], tuple[Fire, str | None]] = {}
        for fire in fires:
            name = fire.service_name
            if name in paused:
                result.paused.append(fire)
                continue
            run_key: str | None = None
            outcome = OUTCOME_SKIPPED
            if not should_skip(jobs[name].overlap, name in busy):
                run_key = uuid.uuid4().hex
                outcome = OUTCOME_RUN
                # A second fire time of the same service in this pass finds it busy.
                busy.add(name)
            decided[(name, fire.scheduled_at)] = (fire, run_key)
            rows.append(_claim_row(fire, now, outcome, run_key))

        won = _insert_claims(connection, rows)
        skipped_rows = []
        for key, (fire, run_key) in decided.items():
            if key not in won:
                result.lost.append(fire)
            elif run_key is not None:
                result.run.append((fire, run_key))
            else:
                result.skipped.append(fire)
                skipped_rows.append(_skipped_row(fire, now))
        if skipped_rows:
            connection.execute(cron_skipped_runs.insert(), skipped_rows)

    return result


def finish_claim(engine: Engine, fire: Fire, finished_at: datetime) -> None:
    """Mark the run of a claimed fire time finished, so it no longer counts as running."""
    claims = cron_fire_claims.c
    with engine.begin() as connection:
        connection.execute(
            cron_fire_claims.update()
            .where(
                claims.service_name == fire.service_name, claims.scheduled_at == fire.scheduled_at
            )
            .values(finished_at=finished_at)
        )


def load_service_states(engine: Engine, names: Sequence[str]) -> dict[str, ServiceState]:
    """Return when each service was first seen and when its latest run started."""
    services = cron_services.c
    with engine.connect() as connection:
        rows = connection.execute(
            select(services.name, services.created_at, services.last_run_at).where(
                services.name.in_(names)
            )
        ).all()
    return {row.name: ServiceState(row.created_at, row.last_run_at) for row in rows}


def _paused_services(connection: Connection, names: list[str]) -> set[str]:
    services = cron_services.c
    rows = connection.execute(
        select(services.name).where(services.name.in_(names), services.paused.is_(True))
    )
    return {row.name for row in rows}


def _busy_services(
    connection: Connection,
    names: list[str],
    jobs: Mapping[str, JobSettings],
    now: datetime,
    kill_delay: timedelta,
) -> set[str]:
    """Return the services with a run in progress on any scheduler."""
    claims = cron_fire_claims.c
    rows = connection.execute(
        select(claims.service_name, claims.claimed_at).where(
            claims.service_name.in_(names),
            claims.outcome == OUTCOME_RUN,
            claims.finished_at.is_(None),
        )
    )
    return {
        row.service_name
        for row in rows
        if not is_stale_claim(row.claimed_at, now, jobs[row.service_name].timeout, kill_delay)
    }


def _insert_claims(connection: Connection, rows: list[dict[str, Any]]) -> set[tuple[str, datetime]]:
    """Insert claim rows, ignoring those another scheduler holds; return the keys won."""
    if not rows:
        return set()
    insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    claims = cron_fire_claims.c
    inserted = connection.execute(
        insert(cron_fire_claims)
        .values(rows)
        .on_conflict_do_nothing(index_elements=["service_name", "scheduled_at"])
        .returning(claims.service_name, claims.scheduled_at)
    ).all()
    return {(row.service_name, row.scheduled_at) for row in inserted}


def _claim_row(fire: Fire, now: datetime, outcome: str, run_key: str | None) -> dict[str, Any]:
    return {
        "service_name": fire.service_name,
        "scheduled_at": fire.scheduled_at,
        "claimed_at": now,
        "outcome": outcome,
        "run_key": run_key,
        "host": _HOST,
        "pid": os.getpid(),
    }


def _skipped_row(fire: Fire, now: datetime) -> dict[str, Any]:
    return {
        "service_name": fire.service_name,
        "scheduled_at": fire.scheduled_at,
        "skipped_at": now,
        "reason": SKIPPED_OVERLAP,
        "host": _HOST,
    }


_HOST = socket.gethostname()
