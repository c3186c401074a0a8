"""The bodies of ``cronledger scheduler`` and ``cronledger up``.

Both raise SchedulerLockError, SQLAlchemyError or CronledgerError for the
command line to report, and return the exit status otherwise.
"""

from __future__ import annotations

import shlex
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from cronledger.monitor import Monitor, run_monitor
from cronledger.scheduler.loop import Scheduler
from cronledger.scheduler.supervisor import FunctionComponent, ServerComponent, Supervisor
from cronledger.settings import Config, JobSettings
from cronledger.store.engine import get_engine
from cronledger.store.migrate import ensure_schema
from cronledger.store.urls import display_url, parse_database_url, resolve_database_url

if TYPE_CHECKING:
    from cronledger.alerts.config import AlertConfig
    from cronledger.web.server import DashboardServer

# Builds the dashboard server on the engine that ``up`` opened, or returns
# None when the dashboard is turned off.
ServerFactory = Callable[[Engine], "DashboardServer | None"]


def run_scheduler(config: Config, database_url: str | None, spool_dir: str | None) -> int:
    """Run the scheduler until SIGTERM or SIGINT; SIGHUP reloads the config file."""
    scheduler = Scheduler(config, database_url, spool_dir)
    scheduler.open()

    supervisor = Supervisor()
    supervisor.add(scheduler, stop_seconds=_stop_seconds(config))
    return supervisor.run()


def run_up(
    config: Config | None,
    database_url: str | None,
    spool_dir: str | None,
    monitor_interval: float,
    echo: Callable[[str], None],
    *,
    alerts: AlertConfig | None = None,
    server_factory: ServerFactory | None = None,
) -> int:
    """Run the scheduler, the monitor and the dashboard in this process until SIGTERM or SIGINT.

    ``alerts`` are the channels the monitor notifies; ``server_factory``
    builds the dashboard server (None: no dashboard).
    """
    url = parse_database_url(resolve_database_url(database_url))
    engine = get_engine(url)
    ensure_schema(engine)
    # Built before anything starts, so an address in use stops `up` at once.
    server = server_factory(engine) if server_factory is not None else None

    supervisor = Supervisor()
    scheduler: Scheduler | None = None
    if config is not None:
        scheduler = Scheduler(config, database_url, spool_dir)
        scheduler.open()
        supervisor.add(scheduler, stop_seconds=_stop_seconds(config))

    health_monitor = Monitor(engine, alerts=alerts)

    def monitor(stop: threading.Event) -> None:
        run_monitor(engine, interval=monitor_interval, stop=stop, monitor=health_monitor)

    supervisor.add(FunctionComponent("monitor", monitor))
    if server is not None:
        supervisor.add(ServerComponent("dashboard", server.start, server.stop))

    dashboard_url = server.url if server is not None else None
    for line in describe_up(config, display_url(url), monitor_interval, dashboard_url):
        echo(line)
    return supervisor.run()


def describe_up(
    config: Config | None,
    database_label: str,
    monitor_interval: float,
    dashboard_url: str | None = None,
) -> list[str]:
    """Return the lines that ``cronledger up`` prints about what it started."""
    lines = ["cronledger up"]
    if dashboard_url is not None:
        lines.append(f"  dashboard  {dashboard_url}/")
    lines.append(f"  database   {database_label}")
    if config is None:
        lines.append("  config     none: create cronledger.toml here to declare jobs")
    else:
        lines.append(f"  config     {config.path.resolve()}")
        lines.append(f"  scheduler  {_count(len(config.jobs), 'job')}")
        width = max((len(name) for name in config.jobs), default=0)
        for name, job in config.jobs.items():
            schedule = config.services[name].schedule
            described = schedule.describe() if schedule is not None else "no schedule"
            lines.append(f"    {name:<{width}}  {described}: {_describe_job(job)}")
        others = [name for name in config.services if name not in config.jobs]
        if others:
            lines.append(
                f"  watched    {_count(len(others), 'service')} run elsewhere: {', '.join(others)}"
            )
    lines.append(f"  monitor    checks every {monitor_interval:g} s")
    lines.append("Stop with Ctrl-C or SIGTERM; reload the config file with SIGHUP.")
    return lines


def _describe_job(job: JobSettings) -> str:
    if job.callable is not None:
        return f"{job.callable} (Python)"
    if isinstance(job.command, str):
        return f"{job.command} (shell)"
    return shlex.join(job.command or ())


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _stop_seconds(config: Config) -> float:
    scheduler = config.scheduler
    return (scheduler.stop_timeout + scheduler.kill_delay).total_seconds()
