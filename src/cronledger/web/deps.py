"""Request dependencies: the engine, the caller, its role and CSRF checks."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from cronledger.web.auth import (
    OPEN_PRINCIPAL,
    Principal,
    csrf_matches,
    new_csrf_token,
    session_user,
    token_principal,
    users_exist,
)
from cronledger.web.data import OverviewCache

log = logging.getLogger("cronledger.web")

CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True)
class DashboardOptions:
    """Options of one dashboard app.

    ``allow_open`` lets anyone in while no user exists; the server sets it
    only on a loopback address or with the explicit insecure flag.
    ``overview_max_age`` is how many seconds the overview may be served from
    cache. ``secure_cookies`` marks the session cookie Secure, for a server
    behind TLS.
    """

    allow_open: bool = True
    overview_max_age: float = 5.0
    secure_cookies: bool = False
    public_url: str | None = None


def utc_now() -> datetime:
    return datetime.now(UTC)


def log_action(by: str, action: str) -> None:
    """Log an operator's action, with who did it."""
    log.info("%s %s from the dashboard", by, action)


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def get_cache(request: Request) -> OverviewCache:
    cache: OverviewCache = request.app.state.cache
    return cache


def get_options(request: Request) -> DashboardOptions:
    options: DashboardOptions = request.app.state.options
    return options


def find_principal(request: Request) -> Principal | None:
    """Return the caller of ``request``, or None when it must log in or send a token.

    A bearer token wins over a session. An invalid token is never replaced
    by the open mode, so a client with a typo gets 401, not silent access.
    """
    engine = get_engine(request)
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return token_principal(engine, credentials.strip(), utc_now())

    name = request.session.get("user")
    if isinstance(name, str):
        principal = session_user(engine, name)
        if principal is not None:
            return principal
        request.session.pop("user", None)  # the user was deleted

    if get_options(request).allow_open and not users_exist_cached(request):
        return OPEN_PRINCIPAL
    return None


# Seconds for which "no user exists" is reused. The open mode is checked on
# every request, and this keeps pages served from cache free of queries.
USERS_CHECK_SECONDS = 1.0


def users_exist_cached(request: Request) -> bool:
    """Return ``users_exist``, read again at most once per USERS_CHECK_SECONDS.

    NOTE: so the first user added closes the open mode up to one second later.
    """
    state = request.app.state
    checked: tuple[float, bool] | None = getattr(state, "users_checked", None)
    if checked is not None and time.monotonic() - checked[0] < USERS_CHECK_SECONDS:
        return checked[1]
    found = users_exist(get_engine(request))
    state.users_checked = (time.monotonic(), found)
    return found


async def principal_without_waiting(request: Request) -> Principal | None:
    """Return ``find_principal(request)``, reading the database in a worker thread if needed.

    A request without a token or a logged-in session, while the users check
    is fresh, needs no query, so async handlers serve it on the event loop.
    """
    checked: tuple[float, bool] | None = getattr(request.app.state, "users_checked", None)
    anonymous = "authorization" not in request.headers and "user" not in request.session
    if anonymous and checked is not None and time.monotonic() - checked[0] < USERS_CHECK_SECONDS:
        allow_open = get_options(request).allow_open and not checked[1]
        return OPEN_PRINCIPAL if allow_open else None
    return await run_in_threadpool(find_principal, request)


async def api_principal_without_waiting(request: Request) -> Principal:
    """Return the caller of an API request, or raise 401, as ``api_principal`` does."""
    principal = await principal_without_waiting(request)
    if principal is None:
        api_principal(request)  # raises the 401 with its message
    assert principal is not None
    return principal


def csrf_token(request: Request) -> str:
    """Return the session's CSRF token, creating it on first use."""
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = new_csrf_token()
        request.session["csrf"] = token
    return token


def check_csrf(request: Request, given: str | None) -> None:
    """Raise 403 unless ``given`` is the session's CSRF token."""
    expected = request.session.get("csrf")
    if not csrf_matches(expected if isinstance(expected, str) else None, given):
        raise HTTPException(
            status_code=403,
            detail="invalid or missing CSRF token: reload the page and try again",
        )


def api_principal(request: Request) -> Principal:
    """Return the caller of an API request, or raise 401."""
    principal = find_principal(request)
    if principal is None:
        raise HTTPException(
            status_code=401,
            detail="authentication required: send 'Authorization: Bearer TOKEN' "
            "(create one with 'cronledger tokens create NAME') or log in",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return principal


def api_admin(
    request: Request, principal: Annotated[Principal, Depends(api_principal)]
) -> Principal:
    """Return the caller of an API action, which must be an admin and not a forged request."""
    if not principal.is_admin:
        raise HTTPException(
            status_code=403,
            detail=f"{principal.name} has the reader role: this action needs an admin",
        )
    if principal.via != "token":
        # A session cookie (and the open mode) come with any request the
        # browser sends, a cross-site one included, so the token must match.
        check_csrf(request, request.headers.get(CSRF_HEADER))
    return principal


EngineDep = Annotated[Engine, Depends(get_engine)]
CacheDep = Annotated[OverviewCache, Depends(get_cache)]
ReaderDep = Annotated[Principal, Depends(api_principal)]
# For async handlers: a sync dependency would run in a worker thread.
AsyncReaderDep = Annotated[Principal, Depends(api_principal_without_waiting)]
AdminDep = Annotated[Principal, Depends(api_admin)]
