"""The ASGI application: pages, JSON API, metrics, health check and security headers."""

from __future__ import annotations

import logging
import secrets
from urllib.parse import quote

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cronledger import __version__
from cronledger.web import api, pages
from cronledger.web.assets import asset_router, load_assets
from cronledger.web.data import OverviewCache, Snapshot
from cronledger.web.deps import DashboardOptions, find_principal
from cronledger.web.metrics import build_registry
from cronledger.web.responses import warm_rendering

log = logging.getLogger("cronledger.web")

SESSION_COOKIE = "cronledger_session"
SESSION_MAX_AGE = 12 * 3600  # seconds; a login lasts one working day

# No inline script or style anywhere, so the policy can forbid both.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)
SECURITY_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
)

__all__ = ["DashboardOptions", "create_app"]


class SecurityHeaders:
    """Adds the security headers to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend(item for item in SECURITY_HEADERS if item[0] not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def warm(snapshot: Snapshot, max_age: float) -> None:
    """Render what most requests for a new snapshot ask for, off the request path."""
    pages.warm_overview(snapshot, max_age)
    warm_rendering(snapshot, "api_json", lambda: api.services_json(snapshot))


def create_app(
    engine: Engine,
    options: DashboardOptions | None = None,
    *,
    session_secret: str | None = None,
) -> FastAPI:
    """Build the dashboard for ``engine``; the schema must be current.

    Without ``session_secret`` a random one is made, so logins last until
    the process stops and work on this replica only.
    """
    options = options or DashboardOptions()
    app = FastAPI(
        title="cronledger",
        version=__version__,
        description="Runs, statistics and health of periodic jobs.",
        openapi_url="/api/v1/openapi.json",
        # The interactive docs load their script from a CDN; the dashboard
        # works offline, so only the OpenAPI document is served.
        docs_url=None,
        redoc_url=None,
    )
    app.state.engine = engine
    app.state.options = options
    app.state.cache = OverviewCache(engine, options.overview_max_age)
    app.state.cache.on_refresh = lambda snapshot: warm(snapshot, options.overview_max_age)
    registry = build_registry(engine, app.state.cache)

    app.add_middleware(
        SessionMiddleware,
        secret_key=session_secret or secrets.token_urlsafe(32),
        session_cookie=SESSION_COOKIE,
        max_age=SESSION_MAX_AGE,
        same_site="lax",
        https_only=options.secure_cookies,
    )
    app.add_middleware(SecurityHeaders)
    app.include_router(asset_router(load_assets()))
    app.include_router(api.router)
    app.include_router(api.origin_router)
    app.include_router(pages.router)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> JSONResponse:
        """Report whether this server can reach its database (no login needed)."""
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except SQLAlchemyError as error:
            log.warning("health check failed: %s", str(error).splitlines()[0])
            return JSONResponse({"status": "error", "database": "unreachable"}, status_code=503)
        return JSONResponse({"status": "ok", "database": "ok"})

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        if find_principal(request) is None:
            return PlainTextResponse(
                "authentication required: send 'Authorization: Bearer TOKEN'\n",
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(pages.LoginRequired)
    def to_login(request: Request, error: pages.LoginRequired) -> Response:
        return RedirectResponse(f"/login?next={quote(error.next_path, safe='')}", status_code=303)

    @app.exception_handler(RequestValidationError)
    def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        # One error shape for the whole API: {"detail": "message"}.
        problems = []
        for item in error.errors():
            where = ".".join(str(part) for part in item.get("loc", ()))
            problem = f"{where}: {item.get('msg', 'invalid')}"
            value = item.get("input")
            if isinstance(value, (str, int, float)) and len(str(value)) <= 100:
                problem += f" (got {value!r})"
                if isinstance(value, str) and " " in value and where.endswith(("since", "until")):
                    # A "+" of an offset arrives as a space unless it is sent as %2B.
                    problem += "; send a + in a URL as %2B, such as +02:00 as %2B02:00"
            problems.append(problem)
        return JSONResponse({"detail": "invalid request: " + "; ".join(problems)}, 422)

    @app.exception_handler(SQLAlchemyError)
    def database_error(request: Request, error: SQLAlchemyError) -> JSONResponse:
        log.error(
            "database error on %s %s: %s",
            request.method,
            request.url.path,
            str(error).splitlines()[0],
        )
        return JSONResponse(
            {"detail": "the database is unreachable or failed; see the server log"}, 503
        )

    @app.exception_handler(HTTPException)
    def http_error(request: Request, error: HTTPException) -> Response:
        if request.url.path.startswith("/api/") or request.url.path == "/metrics":
            return JSONResponse({"detail": error.detail}, error.status_code, headers=error.headers)
        return pages.render(
            request,
            "error.html",
            status_code=error.status_code,
            title=f"Error {error.status_code}",
            message=str(error.detail),
        )

    return app
