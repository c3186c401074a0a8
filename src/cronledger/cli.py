"""The ``cronledger`` command."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import tomllib
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from cronledger import __version__
from cronledger.alerts.commands import format_notification, send_test
from cronledger.alerts.config import AlertConfig, fit_blind_after, load_alert_config
from cronledger.alerts.delivery import Sender
from cronledger.alerts.outbox import recent_notifications
from cronledger.durations import format_duration, parse_duration
from cronledger.errors import CronledgerError, InvalidDatabaseURLError
from cronledger.monitor import Leadership, Monitor, current_health, run_monitor
from cronledger.recorder import Recorder, get_recorder, utc_now
from cronledger.settings import Config, ConfigError, load_config
from cronledger.spool import ENV_SPOOL_DIR
from cronledger.status import collect_status
from cronledger.store import migrate
from cronledger.store.engine import get_engine
from cronledger.store.prune import KEEP_LATEST_RUNS, prune_bookkeeping, prune_runs
from cronledger.store.rollups import rebuild_rollups
from cronledger.store.services import load_services, set_paused, sync_services
from cronledger.store.urls import (
    ENV_DATABASE_URL,
    display_url,
    mask_password,
    parse_database_url,
    resolve_database_url,
)
from cronledger.terminal import format_stats_table, stats_as_dict
from cronledger.validation import validate_service_name
from cronledger.wrapper import run_command

log = logging.getLogger("cronledger")

ENV_CONFIG = "CRONLEDGER_CONFIG"
DEFAULT_CONFIG_FILE = "cronledger.toml"

DATABASE_URL_HELP = (
    "Database to record runs in: postgresql://USER:PASSWORD@HOST:PORT/DB or "
    f"sqlite:///PATH. Default: ${ENV_DATABASE_URL}, else database_url in the config "
    "file, else ./cronledger.db."
)
SPOOL_DIR_HELP = (
    "Directory where run events wait while the database is unreachable. "
    f"Default: ${ENV_SPOOL_DIR}, else ~/.local/state/cronledger/spool."
)


CONFIG_HELP = (
    "Config file that declares the services. Default: $CRONLEDGER_CONFIG, else "
    "./cronledger.toml when it exists."
)


class Settings:
    """Options shared by every subcommand."""

    def __init__(
        self, database_url: str | None, spool_dir: str | None, config_path: str | None
    ) -> None:
        self._database_url = database_url
        self.spool_dir = spool_dir
        self._config_path = config_path
        self._config: Config | None = None
        self._config_loaded = False

    @property
    def config_path(self) -> Path | None:
        """The config file to read, or None when none was named and none exists."""
        if self._config_path:
            return Path(self._config_path)
        from_env = os.environ.get(ENV_CONFIG, "").strip()
        if from_env:
            return Path(from_env)
        default = Path(DEFAULT_CONFIG_FILE)
        return default if default.exists() else None

    def config(self) -> Config | None:
        """Load the config file once; raises ConfigError for an invalid one."""
        if not self._config_loaded:
            path = self.config_path
            self._config = load_config(path) if path is not None else None
            self._config_loaded = True
        return self._config

    @property
    def database_url(self) -> str | None:
        """The URL from the option, the environment, or the config file, in that order."""
        if self._database_url or os.environ.get(ENV_DATABASE_URL, "").strip():
            return self._database_url
        try:
            config = self.config()
        except ConfigError as error:
            # Recording a run must not depend on a valid config file, but a
            # mistake in a service table must not send runs elsewhere either:
            # the file's database_url is used whenever the TOML parses.
            fallback = _raw_database_url(self.config_path)
            where = (fallback and mask_password(fallback)) or "the default database"
            log.warning("%s; using %s", str(error).splitlines()[0], where)
            return fallback
        return config.database_url if config is not None else None


def _raw_database_url(path: Path | None) -> str | None:
    """Return the top-level database_url of a config file that may be invalid."""
    if path is None:
        return None
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    value = document.get("database_url")
    return value if isinstance(value, str) and value.strip() else None


def _configure_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("cronledger: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Alembic reports every step at INFO; keep it for -vv.
    logging.getLogger("alembic").setLevel(logging.WARNING if verbose < 2 else logging.INFO)
    # Apprise logs each failed send, which cronledger reports itself with
    # the channel; keep Apprise's own lines for -vv.
    apprise_log = logging.getLogger("apprise")
    apprise_log.propagate = verbose >= 2
    if not apprise_log.handlers:
        apprise_log.addHandler(logging.NullHandler())


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"cronledger: error: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cronledger")
@click.option("--database-url", metavar="URL", help=DATABASE_URL_HELP)
@click.option("--spool-dir", metavar="DIR", help=SPOOL_DIR_HELP)
@click.option("--config", "config_path", metavar="PATH", help=CONFIG_HELP)
@click.option("-v", "--verbose", count=True, help="Log more: -v for progress, -vv for SQL steps.")
@click.pass_context
def cli(
    ctx: click.Context,
    database_url: str | None,
    spool_dir: str | None,
    config_path: str | None,
    verbose: int,
) -> None:
    """Record every execution of every periodic job and tell the truth about it."""
    _configure_logging(verbose)
    ctx.obj = Settings(database_url, spool_dir, config_path)


@cli.command(
    "run",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option(
    "--shell",
    is_flag=True,
    help="Run COMMAND as one string through /bin/sh -c, for pipes and redirections.",
)
@click.pass_obj
def run_cmd(settings: Settings, name: str, command: tuple[str, ...], shell: bool) -> None:
    """Run COMMAND and record it as one run of service NAME.

    \b
    Example (in a crontab):
      */5 * * * * /opt/venv/bin/cronledger run flow-sync -- /app/bin/sync-flows --all

    Output passes through unchanged, SIGTERM and SIGINT are forwarded, and
    cronledger exits with the command's exit status. A run is completed only
    when the command exits 0; otherwise the last lines of its stderr become the
    error message. To report items processed, the command writes a number to
    the file named by $CRONLEDGER_ITEMS_FILE.
    """
    argv = list(command)
    # Options belong before NAME, but "run NAME --shell 'cmd'" is a common
    # slip: take the flag rather than run a command called --shell.
    if argv and argv[0] == "--shell":
        shell = True
        argv = argv[1:]
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        _fail("no command given: write it after --, as in: cronledger run NAME -- CMD [ARGS...]", 2)
    if shell:
        argv = ["/bin/sh", "-c", " ".join(argv)]

    # A monitoring mistake (a bad name or URL) must not stop the job: the
    # command runs, unrecorded, and the error goes to stderr, where cron
    # mails it.
    recorder: Recorder | None = None
    try:
        validate_service_name(name)
        recorder = get_recorder(settings.database_url, settings.spool_dir)
    except CronledgerError as error:
        click.echo(f"cronledger: error: {error}; the command runs but is not recorded", err=True)

    if recorder is None:
        sys.exit(run_command(None, name, argv).exit_code)

    result = run_command(recorder, name, argv)
    sys.exit(result.exit_code)


@cli.group("db")
def db() -> None:
    """Create or upgrade cronledger's tables."""


@db.command("upgrade")
@click.option(
    "--origin-timezone",
    metavar="ZONE",
    help=(
        "Time zone in which an existing cron_executions table wrote its naive "
        "TIMESTAMP values (IANA name, such as Europe/Berlin). Default: the "
        "database session's TimeZone on PostgreSQL, UTC on SQLite."
    ),
)
@click.pass_obj
def db_upgrade(settings: Settings, origin_timezone: str | None) -> None:
    """Apply cronledger's migrations to the database.

    Creates the tables on an empty database, and upgrades an existing
    cron_executions table in place, keeping every row.
    """
    url = _url_or_fail(settings)
    try:
        changed = migrate.upgrade(get_engine(url), origin_timezone=origin_timezone)
    except CronledgerError as error:
        _fail(str(error), 2)
    except SQLAlchemyError as error:
        _fail_unreachable(display_url(url), error)
    if changed:
        click.echo(f"upgraded {display_url(url)} to schema revision {migrate.head_revision()}")
    else:
        revision = migrate.head_revision()
        click.echo(f"{display_url(url)} is already at schema revision {revision}; nothing to do")


@db.command("rebuild-rollups")
@click.pass_obj
def db_rebuild_rollups(settings: Settings) -> None:
    """Recompute statistics from the raw runs, after a bulk load that bypassed them.

    Runs deleted by 'cronledger prune' are lost from the rebuilt figures, so
    this is a repair tool, not routine maintenance.
    """
    url = _url_or_fail(settings)
    engine = get_engine(url)
    try:
        migrate.ensure_schema(engine)
        rebuild_rollups(engine)
    except SQLAlchemyError as error:
        _fail_unreachable(display_url(url), error)
    click.echo(f"rebuilt the rollups of {display_url(url)} from its raw runs")


@db.command("sql")
@click.option(
    "--dialect",
    type=click.Choice(["postgresql", "sqlite"]),
    default="postgresql",
    show_default=True,
    help="SQL dialect to print.",
)
@click.option("--origin-timezone", metavar="ZONE", help="As for 'db upgrade'.")
def db_sql(dialect: str, origin_timezone: str | None) -> None:
    """Print the migrations as SQL, to apply with psql instead of 'db upgrade'."""
    try:
        click.echo(migrate.offline_sql(dialect, origin_timezone=origin_timezone), nl=False)
    except CronledgerError as error:
        _fail(str(error), 2)


@cli.group("spool")
def spool() -> None:
    """Inspect or replay run events saved while the database was unreachable."""


@spool.command("flush")
@click.pass_obj
def spool_flush(settings: Settings) -> None:
    """Replay every spooled run event into the database now."""
    recorder = _recorder_or_fail(settings)
    pending = len(recorder.spool.pending())
    if pending == 0:
        click.echo(f"no spooled events in {recorder.spool.directory}; nothing to do")
        return
    try:
        count = recorder.flush_spool()
    except SQLAlchemyError as error:
        _fail_unreachable(display_url(recorder.url), error)
    left = len(recorder.spool.pending())
    set_aside = pending - count - left
    click.echo(f"replayed {count} of {pending} spooled events into {display_url(recorder.url)}")
    if set_aside:
        events = "1 event was" if set_aside == 1 else f"{set_aside} events were"
        _fail(
            f"{events} set aside in {recorder.spool.directory / 'rejected'} "
            "because the database refused them or they could not be read; the log above "
            "names the reason: fix them and move them back to replay"
        )
    if left:
        _fail(f"{left} events are still waiting in {recorder.spool.directory}")


@spool.command("status")
@click.pass_obj
def spool_status(settings: Settings) -> None:
    """Show how many run events wait in the spool, and where."""
    recorder = _recorder_or_fail(settings)
    pending = recorder.spool.pending()
    if pending:
        click.echo(f"{len(pending)} events waiting in {recorder.spool.directory}")
    else:
        click.echo(f"no spooled events in {recorder.spool.directory}; nothing to do")
    rejected = recorder.spool.directory / "rejected"
    if rejected.is_dir():
        count = sum(1 for _ in rejected.glob("*.json"))
        if count:
            click.echo(
                f"{count} events set aside in {rejected}: "
                "inspect them, then move them back to replay"
            )


@cli.command("status")
@click.option(
    "--window",
    default="all",
    show_default=True,
    metavar="DURATION|all",
    help="Count runs started within this long before now, such as 24h, 7d or 30d; or all.",
)
@click.option("--service", "service_name", metavar="NAME", help="Show one service only.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def status_cmd(settings: Settings, window: str, service_name: str | None, as_json: bool) -> None:
    """Print each service's runs: totals, failures, items, durations, last run."""
    since = None
    if window != "all":
        try:
            since = utc_now() - parse_duration(window)
        except CronledgerError as error:
            _fail(f"{error}; or write all", 2)

    engine = _engine_or_fail(settings, existing=True)
    now = utc_now()
    try:
        statuses = collect_status(engine, now=now, since=since, service_name=service_name)
        rows = [status.stats for status in statuses]
        health = {status.name: status.health for status in statuses if status.health is not None}
    except SQLAlchemyError as error:
        _fail_unreachable(display_url(engine.url), error)

    if as_json:
        click.echo(
            json.dumps([stats_as_dict(row, health.get(row.service_name)) for row in rows], indent=2)
        )
    elif not rows and service_name is not None:
        _fail(
            f"service {service_name!r} not found; 'cronledger services list' shows the known ones",
            2,
        )
    elif not rows:
        click.echo(f"no runs recorded in {display_url(engine.url)} yet; record one with:")
        click.echo("  cronledger run hello -- echo hello")
    else:
        click.echo(format_stats_table(rows, health))


@cli.command("prune")
@click.option(
    "--older-than",
    required=True,
    metavar="DURATION",
    help="Delete completed runs that started longer ago than this, such as 90d.",
)
@click.option(
    "--failed-older-than",
    metavar="DURATION",
    help=(
        "Delete failed and timed-out runs that started longer ago than this. "
        "Default: four times --older-than, because their errors are what people come back for."
    ),
)
@click.option(
    "--keep-latest",
    type=click.IntRange(min=0),
    default=KEEP_LATEST_RUNS,
    show_default=True,
    metavar="N",
    help="Keep the newest N finished runs of each service whatever their age.",
)
@click.option("--dry-run", is_flag=True, help="Count the runs that would be deleted; delete none.")
@click.pass_obj
def prune_cmd(
    settings: Settings,
    older_than: str,
    failed_older_than: str | None,
    keep_latest: int,
    dry_run: bool,
) -> None:
    """Delete old raw runs; totals, items and durations stay exact in the rollups.

    Runs still in progress are never deleted. Fire claims, skipped fire
    times and sent or failed notifications older than --older-than go too.
    """
    try:
        completed_age = parse_duration(older_than)
        failed_age = parse_duration(failed_older_than) if failed_older_than else completed_age * 4
    except CronledgerError as error:
        _fail(str(error), 2)
    if failed_age < completed_age:
        _fail(
            f"--failed-older-than {failed_older_than} is shorter than --older-than {older_than}: "
            "failed runs are kept at least as long as completed ones",
            2,
        )

    url = _url_or_fail(settings)
    engine = get_engine(url)
    now = utc_now()
    try:
        migrate.ensure_schema(engine)
        result = prune_runs(
            engine,
            completed_before=now - completed_age,
            failed_before=now - failed_age,
            keep_latest=keep_latest,
            dry_run=dry_run,
        )
        bookkeeping = prune_bookkeeping(engine, before=now - completed_age, dry_run=dry_run)
    except SQLAlchemyError as error:
        _fail_unreachable(display_url(url), error)

    verb = "would delete" if dry_run else "deleted"

    def runs(count: int) -> str:
        return f"{count} {'run' if count == 1 else 'runs'}"

    click.echo(
        f"{verb} {runs(result.completed)} completed older than {older_than} and "
        f"{runs(result.failed)} failed or timed out older than {format_duration(failed_age)}"
    )
    # Only deployments that use the scheduler or alerts have these rows.
    if bookkeeping.fire_claims or bookkeeping.skipped_runs or bookkeeping.notifications:
        click.echo(
            f"{verb} {bookkeeping.fire_claims} fire claims, {bookkeeping.skipped_runs} skipped "
            f"fire times and {bookkeeping.notifications} sent or failed notifications "
            f"older than {older_than}"
        )


@cli.group("services")
def services_group() -> None:
    """Declare services from the config file, list them, pause or resume them."""


@services_group.command("sync")
@click.pass_obj
def services_sync(settings: Settings) -> None:
    """Write the services declared in the config file to the database.

    The file is the single source of truth for the services it declares. A
    sync never deletes a service: one removed from the file keeps its runs
    and last settings, and is listed.
    """
    config = _config_or_fail(settings, required=True)
    assert config is not None
    engine = _engine_or_fail(settings)
    try:
        result = sync_services(engine, config, utc_now())
    except SQLAlchemyError as error:
        _fail_unreachable(display_url(engine.url), error)

    click.echo(
        f"{config.path}: {len(result.added)} added, {len(result.updated)} updated, "
        f"{len(result.unchanged)} unchanged"
    )
    for name in result.added:
        click.echo(f"  added    {name}")
    for name in result.updated:
        click.echo(f"  updated  {name}")
    for name in result.undeclared:
        click.echo(f"  kept     {name} (no longer in the file; runs and settings kept)")


@services_group.command("list")
@click.pass_obj
def services_list(settings: Settings) -> None:
    """Print each service with its schedule, health and reason."""
    engine = _engine_or_fail(settings, existing=True)
    now = utc_now()
    try:
        with engine.connect() as connection:
            records = load_services(connection)
            health = {r.settings.name: current_health(connection, r, now) for r in records}
    except SQLAlchemyError as error:
        _fail_unreachable(display_url(engine.url), error)
    if not records:
        click.echo("no services yet: declare them in cronledger.toml or record a first run")
        return
    for record in records:
        item = health[record.settings.name]
        schedule = record.settings.schedule
        described = schedule.describe() if schedule is not None else "no schedule"
        click.echo(f"{record.settings.name}  [{item.state.value}]  {described}")
        click.echo(f"    {item.reason}")


def _set_paused(settings: Settings, name: str, paused: bool) -> None:
    engine = _engine_or_fail(settings)
    try:
        found = set_paused(engine, name, paused, utc_now())
    except SQLAlchemyError as error:
        _fail_unreachable(display_url(engine.url), error)
    if not found:
        _fail(f"service {name!r} not found; 'cronledger services list' shows the known ones", 2)
    click.echo(f"{'paused' if paused else 'resumed'} {name}")


@services_group.command("pause")
@click.argument("name")
@click.pass_obj
def services_pause(settings: Settings, name: str) -> None:
    """Pause service NAME: it is reported as paused and never as late or failing."""
    _set_paused(settings, name, True)


@services_group.command("resume")
@click.argument("name")
@click.pass_obj
def services_resume(settings: Settings, name: str) -> None:
    """Resume a paused service NAME."""
    _set_paused(settings, name, False)


@cli.command("monitor")
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
        _fail(str(error), 2)
    if seconds <= 0:
        _fail(f"invalid --interval {interval}: use at least 1s", 2)

    # A long-running monitor reports its start, stop and every state change
    # without -v; -v adds nothing here, -vv adds migration steps.
    if logging.getLogger().level > logging.INFO:
        logging.getLogger().setLevel(logging.INFO)
    engine = _engine_or_fail(settings)
    _sync_config(settings, engine)
    interval_delta = timedelta(seconds=seconds)
    monitor = Monitor(engine, alerts=fit_blind_after(_alerts_or_fail(settings), interval_delta))

    if once:
        leadership = Leadership(engine)
        try:
            if not leadership.hold():
                _fail(
                    "another monitor is active on this database; this pass was not run. "
                    "Stop it, or run `cronledger monitor` without --once to stand by"
                )
            result = monitor.check()
            _send_due_alerts(engine)
        except SQLAlchemyError as error:
            _fail_unreachable(display_url(engine.url), error)
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
            _sync_config(settings, engine, exit_on_error=False)
            reloaded = _reload_alerts(settings, monitor.alerts)
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


def _sync_config(settings: Settings, engine: Engine, *, exit_on_error: bool = True) -> None:
    """Sync the config file's services, if there is a config file."""
    try:
        config = settings.config()
    except ConfigError as error:
        if exit_on_error:
            _fail(str(error), 2)
        # A bad edit while running keeps the services as they were.
        log.error("config not reloaded, services unchanged: %s", error)
        return
    if config is None:
        return
    try:
        result = sync_services(engine, config, utc_now())
    except SQLAlchemyError as error:
        log.warning("services not synced from %s: %s", config.path, str(error).splitlines()[0])
        return
    log.info(
        "synced %s: %d added, %d updated",
        config.path,
        len(result.added),
        len(result.updated),
    )


def _config_or_fail(settings: Settings, *, required: bool = False) -> Config | None:
    try:
        config = settings.config()
    except ConfigError as error:
        _fail(str(error), 2)
    if config is None and required:
        _fail(
            f"no config file: create {DEFAULT_CONFIG_FILE} or name one with --config PATH "
            f"(or ${ENV_CONFIG})",
            2,
        )
    return config


def _engine_or_fail(settings: Settings, *, existing: bool = False) -> Engine:
    """Return the engine with the schema current, or exit with the reason.

    ``existing``: a command that only reads fails on a SQLite file that does
    not exist, instead of creating it and reporting an empty database, which
    would hide a mistyped path.
    """
    url = _url_or_fail(settings)
    in_memory = url.database in (None, "", ":memory:")
    if existing and url.get_backend_name() == "sqlite" and not in_memory:
        path = Path(url.database)
        if not path.exists():
            _fail(
                f"no database at {path.resolve()}: check --database-url or "
                "$CRONLEDGER_DATABASE_URL, or record a first run with "
                "'cronledger run NAME -- COMMAND'"
            )
    engine = get_engine(url)
    try:
        migrate.ensure_schema(engine)
    except SQLAlchemyError as error:
        _fail_unreachable(display_url(url), error)
    return engine


def _url_or_fail(settings: Settings) -> Any:
    try:
        return parse_database_url(resolve_database_url(settings.database_url))
    except InvalidDatabaseURLError as error:
        _fail(str(error), 2)


def _recorder_or_fail(settings: Settings) -> Recorder:
    try:
        return get_recorder(settings.database_url, settings.spool_dir)
    except InvalidDatabaseURLError as error:
        _fail(str(error), 2)
        raise


def _fail_unreachable(label: str, error: SQLAlchemyError) -> None:
    reason = str(getattr(error, "orig", None) or error).strip().splitlines()
    _fail(
        f"cannot use the database {label}: {reason[0] if reason else type(error).__name__}. "
        "Check that the server is running and that the URL, user and password are right."
    )


# -- dashboard: serve, users, tokens (bodies in cronledger.web.commands) ------


@cli.command("serve")
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

    config = _config_or_fail(settings)
    engine = _engine_or_fail(settings)
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
        _fail(str(error), 2)
    except OSError as error:
        _fail(f"cannot listen on {host or server_settings.host}:{port}: {error.strerror}")
    except SQLAlchemyError as error:
        _fail_unreachable(display_url(engine.url), error)
    server.run()


@cli.group("users")
def users_group() -> None:
    """Add, list and delete dashboard users."""


def _read_password(prompt: str) -> str:
    if sys.stdin.isatty():
        return str(click.prompt(prompt, hide_input=True, confirmation_prompt=True))
    # A script pipes the password in, as in: printf '%s\n' "$PW" | cronledger users add ...
    return sys.stdin.readline().rstrip("\r\n")


@users_group.command("add")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(["reader", "admin"]),
    default="reader",
    show_default=True,
    help="reader reads everything; admin may also pause, resume and mark runs failed.",
)
@click.pass_obj
def users_add(settings: Settings, name: str, role: str) -> None:
    """Add user NAME; the password is read from a prompt, or from stdin when piped."""
    from cronledger.web.auth import add_user

    engine = _engine_or_fail(settings)
    password = _read_password(f"Password for {name}")
    try:
        add_user(engine, name, role, password, utc_now())
    except CronledgerError as error:
        _fail(str(error), 2)
    click.echo(f"added user {name} with role {role}; the dashboard now requires a login")


@users_group.command("password")
@click.argument("name")
@click.pass_obj
def users_password(settings: Settings, name: str) -> None:
    """Set a new password for user NAME (prompt, or stdin when piped)."""
    from cronledger.web.auth import set_password

    engine = _engine_or_fail(settings)
    try:
        found = set_password(engine, name, _read_password(f"New password for {name}"))
    except CronledgerError as error:
        _fail(str(error), 2)
    if not found:
        _fail(f"user {name!r} not found; 'cronledger users list' shows them", 2)
    click.echo(f"changed the password of {name}")


@users_group.command("list")
@click.pass_obj
def users_list(settings: Settings) -> None:
    """Print each user with its role and last login."""
    from cronledger.web.auth import list_users

    users = list_users(_engine_or_fail(settings))
    if not users:
        click.echo("no users: the dashboard is open on loopback addresses")
    for user in users:
        last = user.last_login_at.isoformat() if user.last_login_at else "never"
        click.echo(f"{user.name}  {user.role}  last login: {last}")


@users_group.command("delete")
@click.argument("name")
@click.pass_obj
def users_delete(settings: Settings, name: str) -> None:
    """Delete user NAME; its open sessions end at their next request."""
    from cronledger.web.auth import delete_user

    if not delete_user(_engine_or_fail(settings), name):
        _fail(f"user {name!r} not found; 'cronledger users list' shows them", 2)
    click.echo(f"deleted user {name}")


@cli.group("tokens")
def tokens_group() -> None:
    """Create, list and revoke API tokens (sent as 'Authorization: Bearer TOKEN')."""


@tokens_group.command("create")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(["reader", "admin"]),
    default="reader",
    show_default=True,
    help="reader may read the API and /metrics; admin may also act.",
)
@click.pass_obj
def tokens_create(settings: Settings, name: str, role: str) -> None:
    """Create token NAME and print it once; only its hash is stored."""
    from cronledger.web.auth import create_token

    engine = _engine_or_fail(settings)
    try:
        token = create_token(engine, name, role, utc_now())
    except CronledgerError as error:
        _fail(str(error), 2)
    click.echo(token)
    click.echo(f"created token {name} with role {role}; it is shown only this once", err=True)


@tokens_group.command("list")
@click.pass_obj
def tokens_list(settings: Settings) -> None:
    """Print each token's name, role and last use (never the token)."""
    from cronledger.web.auth import list_tokens

    tokens = list_tokens(_engine_or_fail(settings))
    if not tokens:
        click.echo("no API tokens")
    for token in tokens:
        last = token.last_used_at.isoformat() if token.last_used_at else "never"
        click.echo(f"{token.name}  {token.role}  last used: {last}")


@tokens_group.command("revoke")
@click.argument("name")
@click.pass_obj
def tokens_revoke(settings: Settings, name: str) -> None:
    """Delete token NAME; requests that send it get 401 from now on."""
    from cronledger.web.auth import revoke_token

    if not revoke_token(_engine_or_fail(settings), name):
        _fail(f"token {name!r} not found; 'cronledger tokens list' shows them", 2)
    click.echo(f"revoked token {name}")


# -- alerts -------------------------------------------------------------------


def _alerts_or_fail(settings: Settings) -> AlertConfig:
    """Resolve the alert channels of the config file; no file means no channels."""
    config = _config_or_fail(settings)
    if config is None:
        return AlertConfig()
    try:
        return load_alert_config(config)
    except ConfigError as error:
        _fail(str(error), 2)
        raise


def _reload_alerts(settings: Settings, current: AlertConfig | None) -> AlertConfig | None:
    try:
        config = settings.config()
        return load_alert_config(config) if config is not None else AlertConfig()
    except ConfigError as error:
        log.error("alert channels not reloaded, the old ones stay: %s", error)
        return current


def _send_due_alerts(engine: Engine) -> None:
    for delivery in Sender(engine).deliver_due():
        outcome = delivery.status
        if delivery.error is not None:
            outcome = f"{outcome}: {delivery.error}"
        click.echo(f"alert to {delivery.channel}: {outcome}")


@cli.group("alerts")
def alerts_group() -> None:
    """Send a test alert, or list recent notifications and their outcome."""


@alerts_group.command("test")
@click.argument("service", required=False)
@click.pass_obj
def alerts_test(settings: Settings, service: str | None) -> None:
    """Send a test message to the alert channels of SERVICE, or to the default ones.

    Prints per channel whether it was delivered, and exits 1 when any failed.
    """
    alerts = _alerts_or_fail(settings)
    channels = alerts.channels_for(service)
    if not channels:
        where = f"service {service!r}" if service else "the default set"
        _fail(
            f"no alert channels for {where}: list Apprise URLs in channels under [alerts] "
            "in cronledger.toml (or in the service's alerts key)",
            2,
        )
    # The test is worth sending even when the database is down.
    database = get_engine(_url_or_fail(settings))
    engine: Engine | None = database
    try:
        migrate.ensure_schema(database)
    except SQLAlchemyError as error:
        reason = str(error).splitlines()[0]
        log.warning("the database is unreachable, so test outcomes are not recorded: %s", reason)
        engine = None

    deliveries = send_test(engine, alerts, service, utc_now())
    for delivery in deliveries:
        if delivery.result.delivered:
            click.echo(f"delivered  {delivery.channel.masked}")
        else:
            click.echo(f"FAILED     {delivery.channel.masked}: {delivery.result.error}")
    failed = sum(not delivery.result.delivered for delivery in deliveries)
    if failed:
        _fail(
            f"{failed} of {len(deliveries)} channels failed: check that each receiver is "
            "running and reachable from this host, and its URL in the [alerts] table"
        )


@alerts_group.command("list")
@click.option("--service", "service_name", metavar="NAME", help="Show one service only.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Show at most this many notifications, newest first.",
)
@click.pass_obj
def alerts_list(settings: Settings, service_name: str | None, limit: int) -> None:
    """Print recent notifications: time, kind, service, state, channel and outcome."""
    engine = _engine_or_fail(settings, existing=True)
    try:
        with engine.connect() as connection:
            records = recent_notifications(connection, service_name, limit)
    except SQLAlchemyError as error:
        _fail_unreachable(display_url(engine.url), error)
    if not records:
        click.echo("no notifications yet; send a test with: cronledger alerts test")
        return
    for record in records:
        click.echo(format_notification(record))


# -- scheduler and up (bodies in cronledger.scheduler.commands) ----------------


def _run_long_running(settings: Settings, body: Callable[[], int]) -> None:
    """Run a scheduler command body and turn its errors into one clear line."""
    from cronledger.scheduler.lock import SchedulerLockError

    # Like the monitor, these log starts, stops and every run without -v.
    if logging.getLogger().level > logging.INFO:
        logging.getLogger().setLevel(logging.INFO)
    try:
        code = body()
    except SchedulerLockError as error:
        _fail(str(error))
    except SQLAlchemyError as error:
        _fail_unreachable(mask_password(settings.database_url or "the default database"), error)
    except CronledgerError as error:
        _fail(str(error), 2)
    sys.exit(code)


@cli.command("scheduler")
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

    config = _config_or_fail(settings, required=True)
    assert config is not None
    _run_long_running(
        settings, lambda: run_scheduler(config, settings.database_url, settings.spool_dir)
    )


@cli.command("up")
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
        _fail(str(error), 2)
    if seconds <= 0:
        _fail(f"invalid --monitor-interval {monitor_interval}: use at least 1s", 2)

    config = _config_or_fail(settings)
    alerts = fit_blind_after(_alerts_or_fail(settings), timedelta(seconds=seconds))
    server_settings = config.server if config is not None else ServerSettings()

    def server_factory(engine: Engine) -> DashboardServer | None:
        if no_dashboard:
            return None
        try:
            return build_server(engine, server_settings, host=host, port=port)
        except UnsafeAddressError as error:
            _fail(str(error), 2)
        except OSError as error:
            chosen_port = server_settings.port if port is None else port
            address = f"{host or server_settings.host}:{chosen_port}"
            _fail(
                f"cannot listen on {address}: {error.strerror}; pass --port to choose "
                "another port, or --no-dashboard"
            )
        raise AssertionError("unreachable")

    _run_long_running(
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


def main() -> None:
    """Run the ``cronledger`` command line."""
    cli(prog_name="cronledger")
