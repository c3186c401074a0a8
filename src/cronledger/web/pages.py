"""HTML pages: overview, service, run, login; and the form actions behind them."""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import URL

from cronledger.durations import humanize_duration
from cronledger.health import HealthState
from cronledger.stats import ServiceStats
from cronledger.status import ServiceStatus
from cronledger.store.services import set_paused
from cronledger.terminal import format_milliseconds
from cronledger.web import charts
from cronledger.web.api import RunId, schedule_words, schedule_written
from cronledger.web.auth import OPEN_PRINCIPAL, Principal, authenticate
from cronledger.web.data import (
    CHART_RANGES,
    DEFAULT_WINDOW,
    RUN_STATUSES,
    STRIP_RUNS,
    WINDOW_KEYS,
    WINDOWS,
    OverviewCache,
    Snapshot,
    as_iso,
    chart_buckets,
    get_run,
    health_events,
    list_runs,
    mark_run_failed,
    missed_runs,
    notifications,
    service_status,
    skipped_runs,
)
from cronledger.web.deps import (
    CSRF_FIELD,
    CacheDep,
    EngineDep,
    check_csrf,
    csrf_token,
    find_principal,
    log_action,
    principal_without_waiting,
    utc_now,
)
from cronledger.web.responses import is_rendered, snapshot_response, warm_rendering

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
TEMPLATES.env.filters["ms"] = format_milliseconds
TEMPLATES.env.filters["iso"] = as_iso
TEMPLATES.env.filters["duration"] = humanize_duration
TEMPLATES.env.globals["quote"] = lambda value: quote(str(value), safe="")

RUNS_PER_PAGE = 50
# Output longer than this many lines is folded behind a "show all" toggle.
FOLD_LINES = 20

router = APIRouter(include_in_schema=False)


class LoginRequired(Exception):
    """Raised by a page whose viewer must log in first; the app redirects."""

    def __init__(self, next_path: str) -> None:
        self.next_path = next_path


def viewer(request: Request) -> Principal:
    principal = find_principal(request)
    if principal is None:
        raise LoginRequired(
            request.url.path + (f"?{request.url.query}" if request.url.query else "")
        )
    return principal


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    context.setdefault("principal", find_principal(request))
    context["csrf_token"] = csrf_token(request)
    context["csrf_field"] = CSRF_FIELD
    return TEMPLATES.TemplateResponse(request, template, context, status_code=status_code)


def overview_rows(statuses: tuple[ServiceStatus, ...]) -> list[dict[str, Any]]:
    rows = []
    for status in statuses:
        health = status.health
        strip = status.recent_runs[:STRIP_RUNS]
        rows.append(
            {
                "status": status,
                "stats": status.stats,
                "state": health.state.value if health else "unknown",
                "reason": health.reason if health else "not evaluated: the service is not stored",
                "next_expected": health.next_expected if health else None,
                "schedule_words": schedule_words(status),
                "schedule_written": schedule_written(status),
                # Oldest left, newest right.
                "strip": strip_html(tuple((run.id, run.status) for run in reversed(strip))),
                "search": f"{status.name} {status.stats.display_name}".lower(),
            }
        )
    return rows


# Most services' recent runs stay the same from one overview recomputation to
# the next, and 1,000 strips through a Jinja macro took 200 ms of each.
@functools.lru_cache(maxsize=4096)
def strip_html(cells: tuple[tuple[int, str], ...]) -> Markup:
    """Return the strip of recent runs: one link per (run id, status), coloured by status."""
    links = "".join(
        f'<a class="cell status-{escape(status)}" href="/runs/{int(run_id)}"></a>'
        for run_id, status in cells
    )
    return Markup(f'<span class="strip" title="newest run on the right">{links}</span>')


class RowCache:
    """Rendered overview rows, keyed by everything a row shows.

    Between two recomputations of the overview a few seconds apart, most
    services show the same figures, health and runs, so most rows are
    reused. Rendering all 1,000 rows took about 120 ms per window.
    """

    def __init__(self, max_rows: int = 5000) -> None:
        self.max_rows = max_rows
        self._rows: OrderedDict[Hashable, Markup] = OrderedDict()
        self._lock = threading.Lock()

    def render(self, window: str, row: dict[str, Any]) -> Markup:
        key = (window, *_row_values(row))
        with self._lock:
            found = self._rows.get(key)
            if found is not None:
                self._rows.move_to_end(key)
                return found
        html = Markup(TEMPLATES.get_template("_overview_row.html").render(row=row, window=window))
        with self._lock:
            self._rows[key] = html
            while len(self._rows) > self.max_rows:
                self._rows.popitem(last=False)
        return html


_STATS_FIELDS = tuple(field.name for field in dataclasses.fields(ServiceStats))
_ROW_FIELDS = ("state", "reason", "next_expected", "schedule_words", "schedule_written", "strip")
ROWS = RowCache()


def _row_values(row: dict[str, Any]) -> tuple[Any, ...]:
    stats = row["stats"]
    return (
        *(getattr(stats, name) for name in _STATS_FIELDS),
        *(row[name] for name in _ROW_FIELDS),
    )


def rows_html(snapshot: Snapshot) -> str:
    """Return the overview's table body for ``snapshot``."""
    rows = [ROWS.render(snapshot.window, row) for row in overview_rows(snapshot.statuses)]
    template = TEMPLATES.get_template("_overview_rows.html")
    return template.render(snapshot=snapshot, rows=rows)


def cached_rows_html(snapshot: Snapshot) -> str:
    text: str = snapshot.rendered("rows_html_text", lambda: rows_html(snapshot))
    return text


def overview_page(
    snapshot: Snapshot, principal: Principal, token: str, max_age: float
) -> tuple[Hashable, Callable[[], str]]:
    """Return the rendering key of the overview page for one viewer, and its renderer."""
    context = {
        "principal": principal,
        "csrf_token": token,
        "csrf_field": CSRF_FIELD,
        "snapshot": snapshot,
        "windows": WINDOWS,
        "window": snapshot.window,
        "states": [state.value for state in HealthState],
        "has_runs": any(
            status.stats.total or status.stats.last_run_at for status in snapshot.statuses
        ),
        "has_rows": bool(snapshot.statuses),
        "max_age": max_age,
    }

    def render_page() -> str:
        template = TEMPLATES.get_template("overview.html")
        return template.render(rows_html=cached_rows_html(snapshot), **context)

    return ("overview", principal.name, principal.role, principal.via, token), render_page


def warm_overview(snapshot: Snapshot, max_age: float) -> None:
    """Render the table body and the open-mode page of a new snapshot, compressed."""
    warm_rendering(snapshot, "rows_html", lambda: cached_rows_html(snapshot))
    key, render_page = overview_page(snapshot, OPEN_PRINCIPAL, "", max_age)
    warm_rendering(snapshot, key, render_page)


async def viewer_without_waiting(request: Request) -> Principal:
    principal = await principal_without_waiting(request)
    if principal is None:
        viewer(request)  # raises LoginRequired
    assert principal is not None
    return principal


async def respond_without_waiting(
    request: Request, snapshot: Snapshot, key: Hashable, render: Callable[[], str]
) -> Response:
    """Send a stored rendering from the event loop; render in a worker thread otherwise."""
    media_type = "text/html; charset=utf-8"
    if is_rendered(request, snapshot, key):
        return snapshot_response(request, snapshot, key, render, media_type)
    return await run_in_threadpool(snapshot_response, request, snapshot, key, render, media_type)


# The overview's handlers are async: a request served from the cache needs
# no worker thread, which keeps them fast under many concurrent viewers.
@router.get("/", response_class=HTMLResponse)
async def overview(request: Request, window: str = DEFAULT_WINDOW) -> Response:
    principal = await viewer_without_waiting(request)
    if window not in WINDOW_KEYS:
        window = DEFAULT_WINDOW
    cache: OverviewCache = request.app.state.cache
    snapshot = await cache.get_without_waiting(window)
    # Only a logged-in viewer's page carries a CSRF token (in the logout
    # form), so every other viewer of a snapshot shares one rendered page.
    token = csrf_token(request) if principal.via == "session" else ""
    key, render_page = overview_page(snapshot, principal, token, cache.max_age)
    return await respond_without_waiting(request, snapshot, key, render_page)


@router.get("/fragments/overview", response_class=HTMLResponse)
async def overview_fragment(request: Request, window: str = DEFAULT_WINDOW) -> Response:
    """Return only the overview's table body, for the page's self-refresh."""
    await viewer_without_waiting(request)
    if window not in WINDOW_KEYS:
        window = DEFAULT_WINDOW
    cache: OverviewCache = request.app.state.cache
    snapshot = await cache.get_without_waiting(window)
    return await respond_without_waiting(
        request, snapshot, "rows_html", lambda: cached_rows_html(snapshot)
    )


@router.get("/services/{name}", response_class=HTMLResponse)
def service_page(
    request: Request,
    name: str,
    engine: EngineDep,
    window: str = DEFAULT_WINDOW,
    chart: str = "24h",
    status: str = "",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> Response:
    viewer(request)
    window = window if window in WINDOW_KEYS else DEFAULT_WINDOW
    chart = chart if chart in [key for key, *_ in CHART_RANGES] else "24h"
    status_filter = status if status in RUN_STATUSES else None
    now = utc_now()
    found = service_status(engine, name, window, now)
    if found is None:
        return render(
            request,
            "error.html",
            status_code=404,
            title="Service not found",
            message=f"No service named {name!r} is recorded. The overview lists the known ones.",
        )
    buckets = chart_buckets(engine, name, chart, now)
    hourly = chart == "24h"
    runs = list_runs(
        engine,
        name,
        status=status_filter,
        limit=RUNS_PER_PAGE + 1,
        offset=(page - 1) * RUNS_PER_PAGE,
    )
    return render(
        request,
        "service.html",
        service=found,
        s=found.stats,
        row=overview_rows((found,))[0],
        settings=found.record.settings if found.record else None,
        record=found.record,
        window=window,
        windows=WINDOWS,
        chart=chart,
        chart_ranges=CHART_RANGES,
        charts=[
            charts.runs_chart(buckets, hourly),
            charts.duration_chart(buckets, hourly),
            charts.items_chart(buckets, hourly),
        ],
        runs=runs[:RUNS_PER_PAGE],
        has_next=len(runs) > RUNS_PER_PAGE,
        page=page,
        status_filter=status_filter or "",
        run_statuses=RUN_STATUSES,
        events=health_events(engine, name),
        missed=missed_runs(engine, name),
        skipped=skipped_runs(engine, name),
        notifications=notifications(engine, name),
        computed_at=now,
    )


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: RunId, engine: EngineDep) -> Response:
    viewer(request)
    run = get_run(engine, run_id)
    if run is None:
        return render(
            request,
            "error.html",
            status_code=404,
            title="Run not found",
            message=f"No run with id {run_id} is recorded; it may have been pruned.",
        )
    output = run["output_tail"] or ""
    error = run["error_message"] or ""
    return render(
        request,
        "run.html",
        run=run,
        fold_output=output.count("\n") >= FOLD_LINES,
        fold_error=error.count("\n") >= FOLD_LINES,
        duration_seconds=(run["duration_ms"] / 1000) if run["duration_ms"] is not None else None,
    )


def _admin_form(request: Request, token: str | None) -> Principal:
    principal = viewer(request)
    check_csrf(request, token)
    if not principal.is_admin:
        raise HTTPException(status_code=403, detail="this action needs the admin role")
    return principal


@router.post("/services/{name}/pause")
def pause_form(
    request: Request,
    name: str,
    engine: EngineDep,
    cache: CacheDep,
    csrf_token: Annotated[str | None, Form()] = None,
) -> Response:
    return _pause_or_resume(request, name, True, engine, cache, csrf_token)


@router.post("/services/{name}/resume")
def resume_form(
    request: Request,
    name: str,
    engine: EngineDep,
    cache: CacheDep,
    csrf_token: Annotated[str | None, Form()] = None,
) -> Response:
    return _pause_or_resume(request, name, False, engine, cache, csrf_token)


def _pause_or_resume(
    request: Request, name: str, paused: bool, engine: Any, cache: Any, token: str | None
) -> Response:
    principal = _admin_form(request, token)
    if not set_paused(engine, name, paused, utc_now()):
        raise HTTPException(status_code=404, detail=f"service {name!r} not found")
    cache.clear()
    log_action(principal.name, f"{'paused' if paused else 'resumed'} service {name}")
    return RedirectResponse(f"/services/{quote(name, safe='')}", status_code=303)


@router.post("/runs/{run_id}/mark-failed")
def mark_failed_form(
    request: Request,
    run_id: RunId,
    engine: EngineDep,
    cache: CacheDep,
    csrf_token: Annotated[str | None, Form()] = None,
) -> Response:
    principal = _admin_form(request, csrf_token)
    if not mark_run_failed(engine, run_id, principal.name, utc_now()):
        raise HTTPException(status_code=409, detail=f"run {run_id} is not in progress")
    cache.clear()
    log_action(principal.name, f"marked run {run_id} failed")
    return RedirectResponse(f"/runs/{run_id}", status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/") -> Response:
    return render(request, "login.html", next=_safe_next(next), error=None, principal=None)


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    engine: EngineDep,
    username: Annotated[str, Form(max_length=100)],
    password: Annotated[str, Form(max_length=1024)],
    csrf_token: Annotated[str | None, Form()] = None,
    next: Annotated[str, Form()] = "/",
) -> Response:
    check_csrf(request, csrf_token)
    principal = authenticate(engine, username, password, utc_now())
    if principal is None:
        log_action(username, "failed to log in")
        return render(
            request,
            "login.html",
            status_code=401,
            next=_safe_next(next),
            error="Wrong user name or password.",
            principal=None,
        )
    # A new session on login, so a session id planted before it is useless.
    request.session.clear()
    request.session["user"] = principal.name
    log_action(principal.name, "logged in")
    return RedirectResponse(_safe_next(next), status_code=303)


@router.post("/logout")
def logout(request: Request, csrf_token: Annotated[str | None, Form()] = None) -> Response:
    check_csrf(request, csrf_token)
    name = request.session.get("user")
    request.session.clear()
    if isinstance(name, str):
        log_action(name, "logged out")
    return RedirectResponse("/login", status_code=303)


def _safe_next(target: str) -> str:
    """Return ``target`` if it is a path on this server, else "/" (no open redirect)."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    return str(URL(target))
