"""``python -m connector demo``: the whole example in one command.

The demo starts two child processes and feeds them work:

- ``cronledger up`` with the example's config: the scheduler runs
  authenticator, flow-sync and kodosumi-starter, the monitor judges all five
  services, and the dashboard serves on 127.0.0.1;
- ``python -m connector worker``: payment-checker and kodosumi-status;
- a feeder thread in this process that submits jobs and pays them, so items
  flow through the services without anyone typing more.

Both children and the feeder use one database: ``$CRONLEDGER_DATABASE_URL``,
else ``cronledger.db`` in the example's folder. A restart of the demo
continues on the same database, because every run is keyed by its own run
key and the scheduler runs each fire time once.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from sqlalchemy.exc import SQLAlchemyError

from connector.database import (
    ENV_DATABASE_URL,
    EXAMPLE_DIR,
    connect,
    database_url,
    utc_now,
)
from connector.services import pay_jobs, submit_jobs

log = logging.getLogger("connector.demo")

DEMO_CONFIG = EXAMPLE_DIR / "cronledger.fast.toml"
DEFAULT_PORT = 8080
HOST = "127.0.0.1"

# How long `cronledger up` may take to respond on /healthz, because it
# creates the schema on a new database first.
READY_TIMEOUT_SECONDS = 60.0
# How long a child may take to exit after the stop signal before it is
# killed. `cronledger up` waits up to stop_timeout + kill_delay for its jobs
# (15 s in cronledger.fast.toml, 40 s in cronledger.toml).
STOP_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class FeedSettings:
    """How much work the feeder submits: ``jobs`` new paid jobs every ``interval`` seconds."""

    jobs: int = 2
    interval: float = 10.0


def choose_port(preferred: int = DEFAULT_PORT, host: str = HOST) -> int:
    """Return ``preferred`` if nothing listens on it, else a free port.

    NOTE: another program may take the port between this check and the
    moment `cronledger up` binds it. `up` then exits with "cannot listen",
    and the demo reports that.
    """
    if _can_bind(host, preferred):
        return preferred
    return free_port(host)


def free_port(host: str = HOST) -> int:
    """Return a port that the kernel reports free on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
    return port


def _can_bind(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # The same option the dashboard sets, so connections of an earlier
        # run that linger in TIME_WAIT do not count as "taken".
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def cronledger_command() -> str:
    """Return the ``cronledger`` console script of the interpreter running the demo."""
    beside_python = Path(sys.executable).with_name("cronledger")
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("cronledger")
    if found is None:
        raise ValueError(
            f"the cronledger command is not installed beside {sys.executable}: "
            "install it into this environment with: pip install -e ../.."
        )
    return found


class StopSignals:
    """The SIGINT and SIGTERM signals this process received, oldest first.

    The handler only appends to a list. A handler that set a
    ``threading.Event`` could deadlock: a second signal that arrives while
    the first handler holds the event's lock runs the handler again in the
    same thread, which then waits for that lock forever.
    """

    def __init__(self) -> None:
        self.received: list[int] = []

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        self.received.append(signum)


def run_demo(config: Path, port: int | None, feed: FeedSettings) -> int:
    """Run `cronledger up`, the worker and the feeder until SIGINT or SIGTERM.

    Returns 0 when both children stopped cleanly, else 1.
    """
    url = database_url()
    # Both children get the URL explicitly, so they use the same database
    # whatever folder they resolve relative paths against.
    environment = {**os.environ, ENV_DATABASE_URL: url, "PYTHONUNBUFFERED": "1"}
    if port is None:
        port = choose_port(DEFAULT_PORT)
    elif port == 0:
        # Chosen here rather than by `up`, so the demo can print the address.
        port = free_port()

    signals = StopSignals()
    previous = {
        signum: signal.signal(signum, signals) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    stop_feeding = threading.Event()
    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        children["cronledger up"] = _start_child(
            [
                cronledger_command(),
                "--config",
                str(config),
                "up",
                "--host",
                HOST,
                "--port",
                str(port),
            ],
            environment,
        )
        dashboard = f"http://{HOST}:{port}/"
        ready = _wait_until_ready(dashboard, children["cronledger up"], signals)
        if signals.received:
            return _stop_children(children, signals.received[0], failed=None)
        if not ready:
            return _stop_children(children, signal.SIGTERM, failed="cronledger up")

        children["worker"] = _start_child(
            [sys.executable, "-m", "connector", "worker", "--config", str(config)], environment
        )
        feeder = threading.Thread(
            target=_feed, args=(url, feed, stop_feeding), name="feeder", daemon=True
        )
        feeder.start()
        print(f"connector demo: dashboard {dashboard}", flush=True)
        print(
            f"connector demo: submitting and paying {feed.jobs} jobs every {feed.interval:g} s; "
            "Ctrl-C stops everything",
            flush=True,
        )

        failed = _wait_for_stop(children, signals)
        stop_feeding.set()
        signum = signals.received[0] if signals.received else signal.SIGTERM
        status = _stop_children(children, signum, failed=failed)
        feeder.join(timeout=30)
        return status
    finally:
        stop_feeding.set()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for child in children.values():
            if child.poll() is None:
                child.kill()
                child.wait()


def _start_child(command: list[str], environment: dict[str, str]) -> subprocess.Popen[bytes]:
    # A process group of its own: Ctrl-C in the terminal reaches only the
    # demo, which sends each child one signal, however often it is pressed.
    # NOTE: if the demo itself is killed with SIGKILL, the children keep
    # running; stop them with kill PID.
    return subprocess.Popen(command, cwd=EXAMPLE_DIR, env=environment, process_group=0)


def _wait_until_ready(
    dashboard: str, process: subprocess.Popen[bytes], signals: StopSignals
) -> bool:
    """Poll the dashboard's /healthz until it returns 200; False if `up` exits or a signal came."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.error("cronledger up exited with status %s before it served", process.returncode)
            return False
        if signals.received:
            return False
        try:
            with urllib.request.urlopen(dashboard + "healthz", timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    log.error(
        "the dashboard at %s did not respond within %g s; see the output of cronledger up above",
        dashboard,
        READY_TIMEOUT_SECONDS,
    )
    return False


def _wait_for_stop(
    children: dict[str, subprocess.Popen[bytes]], signals: StopSignals
) -> str | None:
    """Wait for a stop signal or a child that exits; return the name of a child that exited."""
    while not signals.received:
        for name, child in children.items():
            if child.poll() is not None:
                log.error("%s exited with status %s; stopping the demo", name, child.returncode)
                return name
        time.sleep(0.5)
    return None


def _stop_children(
    children: dict[str, subprocess.Popen[bytes]], signum: int, failed: str | None
) -> int:
    """Send ``signum`` to every running child and wait for each; return the demo's exit status."""
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signum)

    status = 0 if failed is None else 1
    for name, child in children.items():
        try:
            child.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            log.error("%s did not stop within %g s; killing it", name, STOP_TIMEOUT_SECONDS)
            child.kill()
            child.wait()
            status = 1
            continue
        if child.returncode != 0 and name != failed:
            log.error("%s exited with status %s", name, child.returncode)
            status = 1
    return status


def _feed(url: str, feed: FeedSettings, stop: threading.Event) -> None:
    """Submit and pay ``feed.jobs`` jobs every ``feed.interval`` seconds until ``stop`` is set."""
    engine = None
    waiting_logged = False
    try:
        while not stop.is_set():
            try:
                if engine is None:
                    engine = connect(url)
                job_ids = submit_jobs(engine, feed.jobs, utc_now())
                pay_jobs(engine, job_ids, utc_now())
                log.info("submitted and paid jobs %s", ", ".join(map(str, job_ids)))
            except ValueError as error:
                # No flows until flow-sync's first run: wait for it quietly.
                if not waiting_logged:
                    log.info(
                        "no flows yet; the feeder waits for the scheduler's first flow-sync"
                        " run, which copies them (nothing to do)"
                    )
                    log.debug("submit failed: %s", error)
                    waiting_logged = True
            except SQLAlchemyError as error:
                log.warning("jobs not submitted, will retry: %s", str(error).splitlines()[0])
            stop.wait(feed.interval)
    finally:
        if engine is not None:
            engine.dispose()
