"""The long-running commands: ``monitor``, ``serve``, ``scheduler`` and ``up``."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from datetime import timedelta

import click
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from cronledger.alerts.config import fit_blind_after
from cronledger.cli.alerts import alerts_or_fail, reload_alerts, send_due_alerts
from cronledger.cli.base import (
    Settings,
    config_or_fail,
    engine_or_fail,
    fail,
    fail_unreachable,
    log,
    new_sqlite_file,
    sync_config,
    url_or_fail,
)
from cronledger.durations import parse_duration
from cronledger.errors import CronledgerError
from cronledger.monitor import Leadership, Monitor, run_monitor
from cronledger.store.urls import (
    display_url,
    mask_password,
)


@click.command("monitor")
@click.option(
    "--interval",
    default="10s",
    show_default=True,
    metavar="DURATION",
    help="Time between two checks of every service, such as 10s or 1m.",
)
@click.option("--once", is_flag=True, help="Check every service once, print the result and exit.")
@click.pass_obj
def monitor_cmd(settings: Settings, interval: str, once: bool) -> None:
    """Time out stuck runs, record missed runs and health changes, on a loop.

    Reads the config file at start and again on SIGHUP. Several monitors may
    run against one database; one is active at a time and another takes over
    when it stops.
    """
    try:
        seconds = parse_duration(interval).total_seconds()
    except CronledgerError as error:
        fail(str(error), 2)
    if seconds <= 0:
        fail(f"invalid --interval {interval}: use at least 1s", 2)

    # A long-running monitor reports its start, stop and every state change
    # without -v; -v adds nothing here, -vv adds migration steps.
    if logging.getLogger().level > logging.INFO:
        logging.getLogger().setLevel(logging.INFO)
    engine = engine_or_fail(settings)
    sync_config(settings, engine)
    interval_delta = timedelta(seconds=seconds)
    monitor = Monitor(engine, alerts=fit_blind_after(alerts_or_fail(settings), interval_delta))

    if once:
        leadership = Leadership(engine)
        try:
            if not leadership.hold():
                fail(
                    "another monitor is active on this database; this pass was not run. "
                    "Stop it, or run `cronledger monitor` without --once to stand by"
                )
            result = monitor.check()
            send_due_alerts(engine)
        except SQLAlchemyError as error:
            fail_unreachable(display_url(engine.url), error)
        finally:
            leadership.release()
        for name, health in result.health.items():
            click.echo(f"{name}  [{health.state.value}]  {health.reason}")
        for run_id in result.timed_out:
            click.echo(f"timed out run {run_id}")
        return

    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        stop.set()

    reload_lock = threading.Lock()

    def resync() -> None:
        with reload_lock:
            settings._config_loaded = False
            sync_config(settings, engine, exit_on_error=False)
            reloaded = reload_alerts(settings, monitor.alerts)
            if reloaded is not None:
                monitor.alerts = fit_blind_after(reloaded, interval_delta)

    def reload_config(_signum: int, _frame: object) -> None:
        log.info("received SIGHUP; reloading the config file")
        # The handler interrupts the main thread, possibly inside a pass that
        # holds a row lock the sync needs, so syncing here would wait forever.
        threading.Thread(target=resync, name="cronledger-config-reload", daemon=True).start()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGHUP, reload_config)
    run_monitor(engine, interval=seconds, stop=stop, monitor=monitor)


# -- serve (its body is in cronledger.web.commands) ---------------------------


@click.command("serve")
@click.option("--host", metavar="ADDRESS", help="Address to listen on. Default: 127.0.0.1.")
@click.option(
    "--port", type=click.IntRange(0, 65535), metavar="PORT", help="TCP port. Default: 8080."
)
@click.option(
    "--insecure-no-auth-on-public-address",
    "insecure_public",
    is_flag=True,
    help="Serve without login on a non-loopback address while no user exists. Only "
    "behind a proxy that checks access itself.",
)
@click.option(
    "--overview-cache",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="How long the overview's figures (page, /api/v1/services, /metrics) may be reused.",
)
@click.pass_obj
def serve_cmd(
    settings: Settings,
    host: str | None,
    port: int | None,
    insecure_public: bool,
    overview_cache: float,
) -> None:
    """Serve the dashboard, the JSON API (/api/v1) and Prometheus metrics (/metrics).

    Listens on 127.0.0.1:8080 unless --host/--port or the [server] table of
    the config file set another address. Until a user exists (cronledger users add),
    anyone who can reach a loopback address may read and act.
    """
    from cronledger.settings import ServerSettings
    from cronledger.web.commands import UnsafeAddressError, build_server

    config = config_or_fail(settings)
    new_file = new_sqlite_file(url_or_fail(settings))
    engine = engine_or_fail(settings)
    if new_file is not None:
        # Unlike status, serve creates the file, so that a dashboard can be
        # up before the first run. A mistyped path would look like no runs.
        log.warning(
            "no database at %s, so an empty one was created: check --database-url or "
            "$CRONLEDGER_DATABASE_URL if runs are recorded elsewhere",
            new_file,
        )
    if logging.getLogger().level > logging.INFO:
        logging.getLogger().setLevel(logging.INFO)
    server_settings = config.server if config is not None else ServerSettings()
    try:
        server = build_server(
            engine,
            server_settings,
            host=host,
            port=port,
            insecure_public=insecure_public,
            overview_max_age=overview_cache,
        )
    except UnsafeAddressError as error:
        fail(str(error), 2)
    except OSError as error:
        fail(f"cannot listen on {host or server_settings.host}:{port}: {error.strerror}")
    except SQLAlchemyError as error:
        fail_unreachable(display_url(engine.url), error)
    server.run()


# -- scheduler and up (their bodies are in cronledger.scheduler.commands) -----


def run_long_running(settings: Settings, body: Callable[[], int]) -> None:
    """Run a scheduler command body and turn its errors into one clear line."""
    from cronledger.scheduler.lock import SchedulerLockError

    # Like the monitor, these log starts, stops and every run without -v.
    if logging.getLogger().level > logging.INFO:
        logging.getLogger().setLevel(logging.INFO)
    try:
        code = body()
    except SchedulerLockError as error:
        fail(str(error))
    except SQLAlchemyError as error:
        fail_unreachable(mask_password(settings.database_url or "the default database"), error)
    except CronledgerError as error:
        fail(str(error), 2)
    sys.exit(code)


@click.command("scheduler")
@click.pass_obj
def scheduler_cmd(settings: Settings) -> None:
    """Run the jobs declared in the config file on their schedules, recording every run.

    A service with `command` or `callable` in its [services.NAME] table is a
    job. Every run is recorded as `cronledger run` records it. SIGTERM and
    SIGINT stop gracefully (running jobs get [scheduler] stop_timeout to
    finish), and SIGHUP reloads the config file. Several schedulers on one
    PostgreSQL database run each fire time once; on SQLite only one may run.
    See docs/scheduler.md.
    """
    from cronledger.scheduler.commands import run_scheduler

    config = config_or_fail(settings, required=True)
    assert config is not None
    run_long_running(
        settings, lambda: run_scheduler(config, settings.database_url, settings.spool_dir)
    )


@click.command("up")
@click.option(
    "--monitor-interval",
    default="10s",
    show_default=True,
    metavar="DURATION",
    help="Time between two monitor checks of every service, such as 10s or 1m.",
)
@click.option(
    "--host", default=None, help="Dashboard address [default: [server] host or 127.0.0.1]."
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Dashboard port [default: [server] port or 8080].",
)
@click.option("--no-dashboard", is_flag=True, help="Run the scheduler and the monitor only.")
@click.pass_obj
def up_cmd(
    settings: Settings,
    monitor_interval: str,
    host: str | None,
    port: int | None,
    no_dashboard: bool,
) -> None:
    """Run the scheduler, the monitor and the dashboard in one process.

    \b
    The single-machine setup. Needs nothing but a cronledger.toml in the
    current folder; runs are recorded in ./cronledger.db unless a database
    is configured. Prints the dashboard address, the database and the jobs
    it schedules, then runs until Ctrl-C or SIGTERM. The monitor sends the
    alerts of the [alerts] table.
    """
    from cronledger.scheduler.commands import run_up
    from cronledger.settings import ServerSettings
    from cronledger.web.commands import UnsafeAddressError, build_server
    from cronledger.web.server import DashboardServer

    try:
        seconds = parse_duration(monitor_interval).total_seconds()
    except CronledgerError as error:
        fail(str(error), 2)
    if seconds <= 0:
        fail(f"invalid --monitor-interval {monitor_interval}: use at least 1s", 2)

    config = config_or_fail(settings)
    alerts = fit_blind_after(alerts_or_fail(settings), timedelta(seconds=seconds))
    server_settings = config.server if config is not None else ServerSettings()

    def server_factory(engine: Engine) -> DashboardServer | None:
        if no_dashboard:
            return None
        try:
            return build_server(engine, server_settings, host=host, port=port)
        except UnsafeAddressError as error:
            fail(str(error), 2)
        except OSError as error:
            chosen_port = server_settings.port if port is None else port
            address = f"{host or server_settings.host}:{chosen_port}"
            fail(
                f"cannot listen on {address}: {error.strerror}; pass --port to choose "
                "another port, or --no-dashboard"
            )
        raise AssertionError("unreachable")

    run_long_running(
        settings,
        lambda: run_up(
            config,
            settings.database_url,
            settings.spool_dir,
            seconds,
            click.echo,
            alerts=alerts,
            server_factory=server_factory,
        ),
    )
