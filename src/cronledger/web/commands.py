"""The work behind ``cronledger serve``.

The click wrappers live in ``cronledger.cli.processes``. These functions
take plain values, so ``cronledger up`` can build the same server.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

from sqlalchemy import Engine

from cronledger.errors import CronledgerError
from cronledger.settings import ServerSettings
from cronledger.web.app import create_app
from cronledger.web.auth import users_exist
from cronledger.web.data import DEFAULT_WINDOW
from cronledger.web.deps import DashboardOptions
from cronledger.web.server import DashboardServer, is_loopback_host

log = logging.getLogger("cronledger.web")

ENV_SESSION_SECRET = "CRONLEDGER_SESSION_SECRET"
SWITCH_INTERVAL_SECONDS = 0.001
MALLOC_ARENAS = 2
M_ARENA_MAX = -8  # glibc's malloc.h
INSECURE_FLAG = "--insecure-no-auth-on-public-address"


class UnsafeAddressError(CronledgerError):
    """A request to serve without logins on an address other machines can reach."""


def build_server(
    engine: Engine,
    settings: ServerSettings,
    *,
    host: str | None = None,
    port: int | None = None,
    insecure_public: bool = False,
    overview_max_age: float = 5.0,
) -> DashboardServer:
    """Return a dashboard server bound to its address, ready to ``run()`` or ``start()``.

    ``host`` and ``port`` override the [server] table. Raises
    UnsafeAddressError when the address is not a loopback one while no user
    exists, unless ``insecure_public`` is set. Raises OSError when the
    address cannot be bound.
    """
    host = host or settings.host
    port = settings.port if port is None else port
    loopback = is_loopback_host(host)
    with_users = users_exist(engine)
    if not loopback and not with_users:
        if not insecure_public:
            raise UnsafeAddressError(
                f"refusing to serve on {host}, which other machines may reach, while no "
                "dashboard user exists: anyone could read every run and pause services. "
                "Add one with 'cronledger users add NAME --role admin', or listen on "
                f"127.0.0.1, or pass {INSECURE_FLAG} if a proxy in front checks access"
            )
        log.warning(
            "SERVING WITHOUT LOGIN ON %s: anyone who can reach this address can read every "
            "run and pause services (%s)",
            host,
            INSECURE_FLAG,
        )

    secret = os.environ.get(ENV_SESSION_SECRET, "").strip() or settings.session_secret
    # Logins need users, so without them the secret's lifetime does not matter yet.
    if not secret and with_users:
        log.info(
            "no session secret set ($%s or session_secret in [server]): logins last "
            "until this server stops and work on this replica only",
            ENV_SESSION_SECRET,
        )
    public_url = settings.public_url
    options = DashboardOptions(
        allow_open=loopback or insecure_public,
        overview_max_age=overview_max_age,
        secure_cookies=bool(public_url and public_url.lower().startswith("https://")),
        public_url=public_url,
    )
    app = create_app(engine, options, session_secret=secret)
    # A process's first statistics cost several times a later call (see
    # docs/benchmarks.md), so the default window and the one /metrics reads
    # are read while the server starts, not for its first viewer.
    app.state.cache.warm(DEFAULT_WINDOW, "all")
    tune_for_serving()
    return DashboardServer(app, host, port)


def tune_for_serving() -> None:
    """Set two process-wide knobs for a server, measured with benchmarks/dashboard_load.py.

    Pages and lists from the cache are served on the event loop. A runs
    page is read in a worker thread, which must win the interpreter lock
    back from the loop after each query. At Python's default 5 ms switch
    interval, 20 busy clients gave such requests a p95 of 212 ms; at 1 ms,
    152 ms.

    glibc gives each thread that contends for malloc an arena of its own,
    up to eight per core, and freed memory stays in them: under the same
    load the peak RSS was 193 MB, and 172 MB with two arenas. An explicit
    MALLOC_ARENA_MAX in the environment wins.
    """
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    if sys.platform != "linux" or "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS)
    except (OSError, AttributeError):
        pass  # not glibc (musl has no mallopt): nothing to tune
