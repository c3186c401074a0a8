"""The work of the five services: one function per service, real SQL on real tables.

Each function takes an engine and the current time and returns the number of
items it handled, which is 0 on most runs. Every state change is a
conditional UPDATE whose row count is what gets counted, so two runs that
overlap never count or move the same job twice.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update

from connector import kodosumi
from connector.database import (
    AWAITING_PAYMENT,
    COMPLETED,
    EXAMPLE_DIR,
    PAYMENT_PAID,
    PAYMENT_PENDING,
    RUNNING,
    STARTED,
    api_keys,
    flows,
    jobs,
    payments,
)

FLOWS_FILE = EXAMPLE_DIR / "flows.json"

# The API keys the connector holds, one per upstream it calls.
API_KEY_NAMES = ("kodosumi", "payment-gateway")

# A key lives 24 h and is refreshed when 12 h or less remain. With the
# authenticator running every 10 h, every other run finds nothing to refresh.
API_KEY_LIFETIME = timedelta(hours=24)
API_KEY_REFRESH_BEFORE = timedelta(hours=12)


def sync_api_keys(engine: Engine, now: datetime) -> int:
    """Create missing API keys and refresh those that expire soon; return how many."""
    refreshed = 0
    with engine.begin() as connection:
        existing = set(connection.scalars(select(api_keys.c.name)))
        for name in API_KEY_NAMES:
            if name not in existing:
                connection.execute(insert(api_keys).values(name=name, **_new_key(now)))
                refreshed += 1

        due = connection.scalars(
            select(api_keys.c.name).where(api_keys.c.expires_at <= now + API_KEY_REFRESH_BEFORE)
        ).all()
        for name in due:
            result = connection.execute(
                update(api_keys)
                .where(api_keys.c.name == name)
                .where(api_keys.c.expires_at <= now + API_KEY_REFRESH_BEFORE)
                .values(**_new_key(now))
            )
            refreshed += result.rowcount
    return refreshed


def _new_key(now: datetime) -> dict[str, Any]:
    return {
        "api_key": secrets.token_hex(32),
        "refreshed_at": now,
        "expires_at": now + API_KEY_LIFETIME,
    }


def sync_flows(engine: Engine, now: datetime, flows_file: Path = FLOWS_FILE) -> int:
    """Copy the flow catalogue into the flows table; return the flows added, changed or removed.

    Raises ValueError naming the file and the entry when the catalogue is invalid,
    and changes nothing then.
    """
    catalogue = load_flows(flows_file)
    changed = 0
    with engine.begin() as connection:
        stored = {row.id: row for row in connection.execute(select(flows))}
        for flow_id, flow in catalogue.items():
            row = stored.get(flow_id)
            if row is None:
                connection.execute(insert(flows).values(id=flow_id, synced_at=now, **flow))
                changed += 1
            elif (row.name, row.description, row.price_cents) != (
                flow["name"],
                flow["description"],
                flow["price_cents"],
            ):
                connection.execute(
                    update(flows).where(flows.c.id == flow_id).values(synced_at=now, **flow)
                )
                changed += 1

        removed = sorted(set(stored) - set(catalogue))
        if removed:
            changed += connection.execute(delete(flows).where(flows.c.id.in_(removed))).rowcount
    return changed


def load_flows(flows_file: Path) -> dict[str, dict[str, Any]]:
    """Read and check the flow catalogue, a JSON list of flow objects, keyed by flow id."""
    try:
        document = json.loads(flows_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"flow catalogue {flows_file} not found; create it") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{flows_file} is not valid JSON: {error}") from None
    if not isinstance(document, list):
        raise ValueError(
            f"{flows_file}: expected a JSON list of flows, got {type(document).__name__}"
        )

    catalogue: dict[str, dict[str, Any]] = {}
    for number, entry in enumerate(document, start=1):
        where = f"{flows_file} flow {number}"
        if not isinstance(entry, dict):
            raise ValueError(f'{where}: expected an object such as {{"id": "summarize", ...}}')
        flow_id, name = entry.get("id"), entry.get("name")
        description, price = entry.get("description", ""), entry.get("price_cents")
        if not isinstance(flow_id, str) or not flow_id.strip():
            raise ValueError(f'{where}: "id" must be a non-empty string, got {flow_id!r}')
        if flow_id in catalogue:
            raise ValueError(f"{where}: duplicate id {flow_id!r}; give each flow its own id")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f'{where} ({flow_id}): "name" must be a non-empty string')
        if not isinstance(description, str):
            raise ValueError(f'{where} ({flow_id}): "description" must be a string')
        if isinstance(price, bool) or not isinstance(price, int) or price < 0:
            raise ValueError(
                f'{where} ({flow_id}): "price_cents" must be a whole number of at least 0, '
                f"got {price!r}"
            )
        catalogue[flow_id] = {"name": name, "description": description, "price_cents": price}
    return catalogue


def check_payments(engine: Engine, now: datetime) -> int:
    """Move jobs whose payment arrived from awaiting payment to running; return how many."""
    paid_jobs = select(payments.c.job_id).where(payments.c.status == PAYMENT_PAID)
    with engine.begin() as connection:
        result = connection.execute(
            update(jobs)
            .where(jobs.c.state == AWAITING_PAYMENT)
            .where(jobs.c.id.in_(paid_jobs))
            .values(state=RUNNING, updated_at=now)
        )
    return result.rowcount


def start_jobs(engine: Engine, now: datetime) -> int:
    """Start every running job on Kodosumi; return how many started.

    Raises KodosumiUnavailable when Kodosumi is down. Jobs started before the
    error stay started, because each start is committed on its own.
    """
    kodosumi.connect()
    with engine.connect() as connection:
        waiting = connection.scalars(
            select(jobs.c.id).where(jobs.c.state == RUNNING).order_by(jobs.c.id)
        ).all()

    started = 0
    for job_id in waiting:
        run_id = kodosumi.start_run(job_id)
        with engine.begin() as connection:
            result = connection.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .where(jobs.c.state == RUNNING)
                .values(state=STARTED, kodosumi_run_id=run_id, updated_at=now)
            )
        started += result.rowcount
    return started


def complete_jobs(engine: Engine, now: datetime) -> int:
    """Mark started jobs whose Kodosumi run finished as completed; return how many.

    Raises KodosumiUnavailable when Kodosumi is down.
    """
    kodosumi.connect()
    with engine.connect() as connection:
        started_jobs = connection.execute(
            select(jobs.c.id, jobs.c.updated_at).where(jobs.c.state == STARTED).order_by(jobs.c.id)
        ).all()

    completed = 0
    for job_id, started_at in started_jobs:
        if not kodosumi.run_finished(started_at, now):
            continue
        with engine.begin() as connection:
            result = connection.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .where(jobs.c.state == STARTED)
                .values(state=COMPLETED, updated_at=now)
            )
        completed += result.rowcount
    return completed


@dataclass(frozen=True)
class Service:
    """One of the connector's periodic services."""

    name: str
    display_name: str
    work: Callable[[Engine, datetime], int]


SERVICES = {
    service.name: service
    for service in (
        Service("authenticator", "API Key Sync", sync_api_keys),
        Service("flow-sync", "Flow Sync", sync_flows),
        Service("payment-checker", "Payment Checker", check_payments),
        Service("kodosumi-starter", "Kodosumi Starter", start_jobs),
        Service("kodosumi-status", "Kodosumi Status", complete_jobs),
    )
}


# Commands for a user who wants to watch items flow through the services.


def submit_jobs(engine: Engine, count: int, now: datetime, flow_id: str | None = None) -> list[int]:
    """Create ``count`` jobs awaiting payment, each with a pending payment; return their ids.

    Raises ValueError when the flow is unknown or no flow was synced yet.
    """
    if count < 1:
        raise ValueError(f"invalid job count {count}: submit at least 1 job")

    with engine.begin() as connection:
        query = select(flows.c.id, flows.c.price_cents).order_by(flows.c.id).limit(1)
        if flow_id is not None:
            query = select(flows.c.id, flows.c.price_cents).where(flows.c.id == flow_id)
        flow = connection.execute(query).first()
        if flow is None:
            if flow_id is not None:
                raise ValueError(f"flow {flow_id!r} not found; list the flows in {FLOWS_FILE}")
            raise ValueError(
                "no flows yet: copy the catalogue first with: python -m connector run flow-sync"
            )

        job_ids = []
        for _ in range(count):
            job_id = connection.execute(
                insert(jobs)
                .values(flow_id=flow.id, state=AWAITING_PAYMENT, created_at=now, updated_at=now)
                .returning(jobs.c.id)
            ).scalar_one()
            connection.execute(
                insert(payments).values(
                    job_id=job_id, amount_cents=flow.price_cents, status=PAYMENT_PENDING
                )
            )
            job_ids.append(job_id)
    return job_ids


def pay_jobs(engine: Engine, job_ids: list[int] | None, now: datetime) -> int:
    """Mark the pending payments of ``job_ids`` (None: of every job) as paid; return how many.

    Raises ValueError naming the job ids that do not exist, and pays none then.
    """
    with engine.begin() as connection:
        if job_ids is not None:
            known = set(
                connection.scalars(select(payments.c.job_id).where(payments.c.job_id.in_(job_ids)))
            )
            unknown = sorted(set(job_ids) - known)
            if unknown:
                listed = ", ".join(str(job_id) for job_id in unknown)
                raise ValueError(
                    f"job {listed} not found; list the jobs with: python -m connector jobs"
                )

        statement = (
            update(payments)
            .where(payments.c.status == PAYMENT_PENDING)
            .values(status=PAYMENT_PAID, paid_at=now)
        )
        if job_ids is not None:
            statement = statement.where(payments.c.job_id.in_(job_ids))
        return connection.execute(statement).rowcount


def list_jobs(engine: Engine) -> list[Any]:
    """Return every job with its payment status, oldest first."""
    query = (
        select(jobs.c.id, jobs.c.flow_id, jobs.c.state, payments.c.status.label("payment"))
        .join(payments, payments.c.job_id == jobs.c.id)
        .order_by(jobs.c.id)
    )
    with engine.connect() as connection:
        return list(connection.execute(query))
