"""Entry points for ``callable = "connector.jobs:NAME"`` in cronledger.toml.

The scheduler calls each function with no arguments in its own process,
records the run itself, and counts the returned int as items processed. It
puts the config file's folder on ``sys.path``, which makes ``connector``
importable. One engine per database URL is shared by the scheduler's job
threads, which SQLAlchemy engines allow.
"""

from __future__ import annotations

import threading

from sqlalchemy import Engine

from connector.database import connect, database_url, utc_now
from connector.services import SERVICES

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def _engine(url: str) -> Engine:
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = connect(url)
        return engine


def dispose_engines() -> None:
    """Close the pooled connections of every engine the jobs created."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def _run(service_name: str) -> int:
    return SERVICES[service_name].work(_engine(database_url()), utc_now())


def authenticator() -> int:
    """Refresh the API keys that expire soon; return how many."""
    return _run("authenticator")


def flow_sync() -> int:
    """Copy flows.json into the flows table; return the flows changed."""
    return _run("flow-sync")


def kodosumi_starter() -> int:
    """Start the running jobs on Kodosumi; return how many started."""
    return _run("kodosumi-starter")
