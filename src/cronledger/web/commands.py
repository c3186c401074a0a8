"""The work behind ``cronledger serve``.

The click wrappers live in cli.py; these functions take plain values, so
``cronledger up`` can build the same server.
"""

from __future__ import annotations

import logging
import os

from sqlalchemy import Engine

from cronledger.errors import CronledgerError
from cronledger.settings import ServerSettings
from cronledger.web.app import create_app
from cronledger.web.auth import users_exist
from cronledger.web.deps import DashboardOptions
from cronledger.web.server import DashboardServer, is_loopback_host

log = logging.getLogger("cronledger.web")

ENV_SESSION_SECRET = "CRONLEDGER_SESSION_SECRET"
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
    if not loopback and not users_exist(engine):
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
    if not secret:
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
    return DashboardServer(app, host, port)
