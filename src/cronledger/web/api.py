"""The JSON API under /api/v1, and the origin dashboard's /api/cron-status."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, Field, RootModel
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from cronledger.durations import format_duration
from cronledger.schedule import CronSchedule
from cronledger.status import ServiceStatus
from cronledger.store.services import set_paused
from cronledger.web.data import (
    RUN_STATUSES,
    OverviewCache,
    Snapshot,
    as_iso,
    get_run,
    health_events,
    list_runs,
    mark_run_failed,
    missed_runs,
    service_exists,
)
from cronledger.web.deps import (
    AdminDep,
    AsyncReaderDep,
    CacheDep,
    EngineDep,
    ReaderDep,
    log_action,
    utc_now,
)
from cronledger.web.responses import is_rendered, snapshot_response

Window = Literal["24h", "7d", "30d", "all"]
RunStatus = Literal["started", "completed", "failed", "timed_out"]
MAX_PAGE = 500
# Ids are BIGINT on PostgreSQL; a larger number could not name a run.
RunId = Annotated[int, Path(ge=1, le=2**63 - 1)]


class HealthOut(BaseModel):
    state: str
    reason: str
    next_expected: str | None = Field(description="Next expected start, ISO 8601 UTC")
    overdue_since: str | None


class ServiceOut(BaseModel):
    """A service with its statistics over the window and its health now."""

    name: str
    display_name: str
    computed_at: str | None = Field(
        default=None, description="When the service's figures were computed, ISO 8601 UTC"
    )
    schedule: str | None = Field(description="The schedule as written: cron or interval")
    schedule_description: str | None = Field(description="The schedule in words")
    paused: bool
    window: Window
    total: int
    completed: int
    failed: int
    timed_out: int
    in_progress: int
    missed: int
    items_processed: int
    avg_duration_ms: float | None
    p50_duration_ms: int | None
    p95_duration_ms: int | None
    max_duration_ms: int | None
    percentiles_exact: bool
    success_rate: float | None
    last_run_at: str | None
    last_status: str | None
    last_success_at: str | None
    last_failure_at: str | None
    last_error: str | None
    health: HealthOut | None


class ServiceList(BaseModel):
    window: Window
    computed_at: str = Field(description="When the figures were computed, ISO 8601 UTC")
    services: list[ServiceOut]


class RunOut(BaseModel):
    id: int
    service_name: str
    status: str | None
    started_at: str | None
    finished_at: str | None
    duration_ms: int | None
    items_processed: int | None
    host: str | None
    pid: int | None
    exit_code: int | None
    error_message: str | None
    output_tail: str | None
    heartbeat_at: str | None


class RunPage(BaseModel):
    service_name: str
    limit: int
    offset: int
    runs: list[RunOut]


class HealthEventOut(BaseModel):
    state: str
    previous_state: str | None
    reason: str
    changed_at: str | None


class MissedRunOut(BaseModel):
    """A fire time that passed its grace period without a start."""

    scheduled_at: str | None
    detected_at: str | None


class ActionResult(BaseModel):
    ok: bool
    message: str


class CronStatusOut(BaseModel):
    """One service in the shape of the origin dashboard's /api/cron-status."""

    name: str
    service: str
    schedule: str | None
    status: str
    total_executions: int
    successful_executions: int
    failed_executions: int
    total_items_processed: int
    avg_duration_ms: float | None
    last_execution: str | None
    next_run: str | None


class ErrorOut(BaseModel):
    """The one error shape of the API."""

    detail: str


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        401: "No valid session or bearer token while logins are required",
        403: "The caller lacks the admin role, or the CSRF token is missing",
        404: "No such service or run",
        409: "The run is not in progress",
        422: "An invalid parameter",
        503: "The database is unreachable",
    }
    return {code: {"model": ErrorOut, "description": descriptions[code]} for code in codes}


READ_ERRORS = _errors(401, 422, 503)

CronStatusList = RootModel[list[CronStatusOut]]

router = APIRouter(prefix="/api/v1", tags=["api"], responses=READ_ERRORS)
origin_router = APIRouter(tags=["origin"], responses=READ_ERRORS)


def schedule_written(status: ServiceStatus) -> str | None:
    """Return the schedule as the config file writes it: a cron expression or an interval."""
    if status.record is None or status.record.settings.schedule is None:
        return None
    schedule = status.record.settings.schedule
    if isinstance(schedule, CronSchedule):
        return schedule.expression
    return format_duration(schedule.every)


def schedule_words(status: ServiceStatus) -> str | None:
    if status.record is None or status.record.settings.schedule is None:
        return None
    return status.record.settings.schedule.describe()


def service_out(
    status: ServiceStatus, window: Window, computed_at: datetime | None = None
) -> ServiceOut:
    stats = status.stats
    health = status.health
    return ServiceOut(
        name=stats.service_name,
        display_name=stats.display_name,
        computed_at=as_iso(computed_at),
        schedule=schedule_written(status),
        schedule_description=schedule_words(status),
        paused=bool(status.record and status.record.settings.paused),
        window=window,
        total=stats.total,
        completed=stats.completed,
        failed=stats.failed,
        timed_out=stats.timed_out,
        in_progress=stats.in_progress,
        missed=stats.missed,
        items_processed=stats.items_processed,
        avg_duration_ms=stats.avg_duration_ms,
        p50_duration_ms=stats.p50_duration_ms,
        p95_duration_ms=stats.p95_duration_ms,
        max_duration_ms=stats.max_duration_ms,
        percentiles_exact=stats.percentiles_exact,
        success_rate=stats.success_rate,
        last_run_at=as_iso(stats.last_run_at),
        last_status=stats.last_status,
        last_success_at=as_iso(stats.last_success_at),
        last_failure_at=as_iso(stats.last_failure_at),
        last_error=stats.last_error,
        health=(
            HealthOut(
                state=health.state.value,
                reason=health.reason,
                next_expected=as_iso(health.next_expected),
                overdue_since=as_iso(health.overdue_since),
            )
            if health is not None
            else None
        ),
    )


def run_out(row: Any) -> RunOut:
    return RunOut(
        id=int(row["id"]),
        service_name=row["service_name"],
        status=row["status"],
        started_at=as_iso(row["execution_time"]),
        finished_at=as_iso(row["finished_at"]),
        duration_ms=row["duration_ms"],
        items_processed=row["items_processed"],
        host=row["host"],
        pid=row["pid"],
        exit_code=row["exit_code"],
        error_message=row["error_message"],
        output_tail=row["output_tail"],
        heartbeat_at=as_iso(row["heartbeat_at"]),
    )


def _not_found(name: str) -> HTTPException:
    return HTTPException(
        status_code=404, detail=f"service {name!r} not found: GET /api/v1/services lists them"
    )


def _require_rows_or_service(rows: Sequence[Any], engine: Engine, name: str) -> None:
    """Raise 404 when ``rows`` is empty and the service is unknown (a known one may have none)."""
    if not rows and not service_exists(engine, name):
        raise _not_found(name)


@router.get("/services", response_model=ServiceList)
async def list_services(
    request: Request, _caller: AsyncReaderDep, window: Window = "24h"
) -> Response:
    """List every service with its statistics over ``window`` and its health now.

    The figures come from the overview's cache: ``computed_at`` gives their age.
    """
    return await snapshot_json(request, window, "api_json", services_json)


async def snapshot_json(
    request: Request, window: str, key: str, render: Callable[[Snapshot], bytes]
) -> Response:
    """Send a JSON rendering of the window's snapshot, from the event loop when stored.

    The API's lists are async handlers for the same reason as the overview:
    a request served from the cache needs no worker thread.
    """
    cache: OverviewCache = request.app.state.cache
    snapshot = await cache.get_without_waiting(window)
    media_type = "application/json"
    if is_rendered(request, snapshot, key):
        return snapshot_response(request, snapshot, key, lambda: b"", media_type)
    return await run_in_threadpool(
        snapshot_response, request, snapshot, key, lambda: render(snapshot), media_type
    )


def services_json(snapshot: Snapshot) -> bytes:
    """Return the body of /api/v1/services for one snapshot."""
    window = cast(Window, snapshot.window)
    listing = ServiceList(
        window=window,
        computed_at=snapshot.computed_at.isoformat(),
        services=[
            service_out(status, window, snapshot.computed_at) for status in snapshot.statuses
        ],
    )
    return listing.model_dump_json().encode()


@router.get("/services/{name}", response_model=ServiceOut, responses=_errors(404))
async def get_service(
    request: Request, name: str, _caller: AsyncReaderDep, window: Window = "24h"
) -> ServiceOut:
    """Return one service, from the overview's cache (``computed_at`` gives its age)."""
    cache: OverviewCache = request.app.state.cache
    snapshot = await cache.get_without_waiting(window)
    for status in snapshot.statuses:
        if status.name == name:
            return service_out(status, window, snapshot.computed_at)
    raise _not_found(name)


@router.get("/services/{name}/runs", response_model=RunPage, responses=_errors(404))
async def get_service_runs(
    request: Request,
    name: str,
    _caller: AsyncReaderDep,
    status: RunStatus | None = None,
    since: Annotated[datetime | None, Query(description="Runs started at or after")] = None,
    until: Annotated[datetime | None, Query(description="Runs started before")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> Response:
    """Return runs of one service, newest first, filtered by status and start time."""
    since, until = utc_range(since, until)
    # Async, with the query and the JSON made in one worker thread: a sync
    # handler hops to a thread for each dependency, the handler and the
    # response, and under load each hop waits behind the event loop.
    engine: Engine = request.app.state.engine
    body = await run_in_threadpool(
        runs_page_json, engine, name, status, since, until, limit, offset
    )
    return Response(body, media_type="application/json")


def utc_range(
    since: datetime | None, until: datetime | None
) -> tuple[datetime | None, datetime | None]:
    """Return ``since`` and ``until`` in UTC, or raise 422 for a time without a zone.

    A time whose UTC value falls outside years 1 to 9999 (9999-12-31T23:00:00-05:00)
    is a valid request for no runs, so it is clamped to the first or last UTC instant.
    """
    bounds: list[datetime | None] = []
    for label, moment in (("since", since), ("until", until)):
        if moment is None:
            bounds.append(None)
            continue
        if moment.tzinfo is None:
            raise HTTPException(
                status_code=422,
                detail=f"{label}={moment.isoformat()} has no time zone: "
                "add one, such as Z or +02:00",
            )
        try:
            bounds.append(moment.astimezone(UTC))
        except OverflowError:
            edge = datetime.max if moment.year == datetime.max.year else datetime.min
            bounds.append(edge.replace(tzinfo=UTC))
    return bounds[0], bounds[1]


def runs_page_json(
    engine: Engine,
    name: str,
    status: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    offset: int,
) -> bytes:
    """Return the body of one page of a service's runs, or raise 404 for an unknown service."""
    rows = list_runs(
        engine, name, status=status, since=since, until=until, limit=limit, offset=offset
    )
    _require_rows_or_service(rows, engine, name)
    page = RunPage(service_name=name, limit=limit, offset=offset, runs=[run_out(r) for r in rows])
    return page.model_dump_json().encode()


@router.get(
    "/services/{name}/health-events", response_model=list[HealthEventOut], responses=_errors(404)
)
def get_health_events(
    name: str,
    engine: EngineDep,
    _caller: ReaderDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> list[HealthEventOut]:
    """Return the service's changes of health state, newest first."""
    rows = health_events(engine, name, limit)
    _require_rows_or_service(rows, engine, name)
    return [
        HealthEventOut(
            state=row["state"],
            previous_state=row["previous_state"],
            reason=row["reason"],
            changed_at=as_iso(row["changed_at"]),
        )
        for row in rows
    ]


@router.get(
    "/services/{name}/missed-runs", response_model=list[MissedRunOut], responses=_errors(404)
)
def get_missed_runs(
    name: str,
    engine: EngineDep,
    _caller: ReaderDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> list[MissedRunOut]:
    """Return the service's missed fire times, newest first, with when the monitor found each."""
    rows = missed_runs(engine, name, limit)
    _require_rows_or_service(rows, engine, name)
    return [
        MissedRunOut(
            scheduled_at=as_iso(row["scheduled_at"]), detected_at=as_iso(row["detected_at"])
        )
        for row in rows
    ]


@router.get("/runs/{run_id}", response_model=RunOut, responses=_errors(404))
def get_one_run(run_id: RunId, engine: EngineDep, _caller: ReaderDep) -> RunOut:
    """Return every recorded field of one run."""
    row = get_run(engine, run_id)
    if row is None:
        raise HTTPException(status_code=404, detail=f"run {run_id} not found")
    return run_out(row)


@router.post("/services/{name}/pause", response_model=ActionResult, responses=_errors(403, 404))
def pause_service(name: str, engine: EngineDep, cache: CacheDep, caller: AdminDep) -> ActionResult:
    """Pause a service (admin): it is shown as paused, never as late or failing."""
    return _set_paused(engine, cache, name, True, caller.name)


@router.post("/services/{name}/resume", response_model=ActionResult, responses=_errors(403, 404))
def resume_service(name: str, engine: EngineDep, cache: CacheDep, caller: AdminDep) -> ActionResult:
    """Resume a paused service (admin); its schedule is judged again from now."""
    return _set_paused(engine, cache, name, False, caller.name)


@router.post("/runs/{run_id}/mark-failed", response_model=ActionResult, responses=_errors(403, 409))
def mark_failed(
    run_id: RunId, engine: EngineDep, cache: CacheDep, caller: AdminDep
) -> ActionResult:
    """Mark a run that is still started as failed (admin)."""
    if not mark_run_failed(engine, run_id, caller.name, utc_now()):
        raise HTTPException(
            status_code=409, detail=f"run {run_id} is not a run in progress: nothing to mark"
        )
    cache.clear()
    log_action(caller.name, f"marked run {run_id} failed")
    return ActionResult(ok=True, message=f"run {run_id} marked failed")


def _set_paused(
    engine: Engine, cache: OverviewCache, name: str, paused: bool, by: str
) -> ActionResult:
    if not set_paused(engine, name, paused, utc_now()):
        raise _not_found(name)
    cache.clear()
    verb = "paused" if paused else "resumed"
    log_action(by, f"{verb} service {name}")
    return ActionResult(ok=True, message=f"{verb} {name}")


@origin_router.get("/api/cron-status", response_model=CronStatusList)
async def cron_status(request: Request, _caller: AsyncReaderDep) -> Response:
    """Return every service over all time in the origin dashboard's field names.

    ``failed_executions`` counts failed and timed-out runs, so that
    successful + failed + runs in progress = total, as in the origin.
    """

    def render(snapshot: Snapshot) -> bytes:
        rows = [cron_status_row(status) for status in snapshot.statuses]
        return CronStatusList(rows).model_dump_json().encode()

    return await snapshot_json(request, "all", "cron_status_json", render)


def cron_status_row(status: ServiceStatus) -> CronStatusOut:
    return CronStatusOut(
        name=status.stats.display_name,
        service=status.name,
        schedule=schedule_written(status),
        status=status.health.state.value if status.health else "unknown",
        total_executions=status.stats.total,
        successful_executions=status.stats.completed,
        failed_executions=status.stats.failed + status.stats.timed_out,
        total_items_processed=status.stats.items_processed,
        avg_duration_ms=status.stats.avg_duration_ms,
        last_execution=as_iso(status.stats.last_run_at),
        next_run=as_iso(status.health.next_expected if status.health else None),
    )


__all__ = ["RUN_STATUSES", "origin_router", "router"]
