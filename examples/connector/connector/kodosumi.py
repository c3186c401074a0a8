"""A stand-in for Kodosumi, the runtime that executes the connector's jobs.

The example has no Kodosumi server, so a run starts as soon as it is
requested and finishes ``CONNECTOR_KODOSUMI_RUN_SECONDS`` later (default 0).

An outage makes both Kodosumi services fail as they would against a server
that is down: the client really connects to a loopback port with nothing
listening and raises the resulting ``ConnectionRefusedError``. A file named
``OUTAGE`` in the example's folder, or ``CONNECTOR_KODOSUMI_OUTAGE=1``,
switches the outage on. Removing the file or unsetting the variable ends it.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timedelta
from pathlib import Path

from connector.database import EXAMPLE_DIR

ENV_OUTAGE = "CONNECTOR_KODOSUMI_OUTAGE"
ENV_RUN_SECONDS = "CONNECTOR_KODOSUMI_RUN_SECONDS"
OUTAGE_FILE = EXAMPLE_DIR / "OUTAGE"


class KodosumiUnavailable(ConnectionError):
    """Kodosumi could not be reached; the run fails and the next one retries."""


def outage_active(outage_file: Path = OUTAGE_FILE) -> bool:
    """Return True while the outage switch (the file or the variable) is on."""
    flag = os.environ.get(ENV_OUTAGE, "").strip().lower()
    return flag in ("1", "true", "yes", "on") or outage_file.exists()


def run_time() -> timedelta:
    """Return how long a Kodosumi run takes, from ``$CONNECTOR_KODOSUMI_RUN_SECONDS``."""
    raw = os.environ.get(ENV_RUN_SECONDS, "").strip() or "0"
    try:
        seconds = float(raw)
    except ValueError:
        raise ValueError(
            f"invalid {ENV_RUN_SECONDS}={raw!r}: write a number of seconds, such as 30"
        ) from None
    if seconds < 0:
        raise ValueError(f"invalid {ENV_RUN_SECONDS}={raw!r}: it must not be negative")
    return timedelta(seconds=seconds)


def connect() -> None:
    """Check that Kodosumi is reachable; raise KodosumiUnavailable during an outage."""
    if not outage_active():
        return

    host, port = "127.0.0.1", _closed_port()
    try:
        with socket.create_connection((host, port), timeout=5):
            pass
    except OSError as error:
        raise KodosumiUnavailable(f"connection refused by kodosumi at {host}:{port}") from error
    # NOTE: reached only if another program took the port in the instant
    # after it was closed. The outage is still on, so the call still fails.
    raise KodosumiUnavailable(
        f"kodosumi at {host}:{port} is unavailable: another program accepted the connection"
    )


def start_run(job_id: int) -> str:
    """Start job ``job_id`` on Kodosumi and return the run id Kodosumi assigned."""
    connect()
    return f"kd-{job_id}-{uuid.uuid4().hex[:12]}"


def run_finished(started_at: datetime, now: datetime) -> bool:
    """Return whether a run that started at ``started_at`` has finished at ``now``."""
    connect()
    return now - started_at >= run_time()


def _closed_port() -> int:
    """Return a loopback port that was free a moment ago, so nothing listens on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
