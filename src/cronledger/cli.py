"""The ``cronledger`` command."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError

from cronledger import __version__
from cronledger.errors import CronledgerError, InvalidDatabaseURLError
from cronledger.recorder import Recorder, get_recorder
from cronledger.spool import ENV_SPOOL_DIR
from cronledger.store import migrate
from cronledger.store.engine import get_engine
from cronledger.store.urls import (
    ENV_DATABASE_URL,
    display_url,
    parse_database_url,
    resolve_database_url,
)
from cronledger.validation import validate_service_name
from cronledger.wrapper import run_command

log = logging.getLogger("cronledger")

DATABASE_URL_HELP = (
    "Database to record runs in: postgresql://USER:PASSWORD@HOST:PORT/DB or "
    f"sqlite:///PATH. Default: ${ENV_DATABASE_URL}, else ./cronledger.db."
)
SPOOL_DIR_HELP = (
    "Directory where run events wait while the database is unreachable. "
    f"Default: ${ENV_SPOOL_DIR}, else ~/.local/state/cronledger/spool."
)


class Settings:
    """Options shared by every subcommand."""

    def __init__(self, database_url: str | None, spool_dir: str | None) -> None:
        self.database_url = database_url
        self.spool_dir = spool_dir


def _configure_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("cronledger: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Alembic reports every step at INFO; keep it for -vv.
    logging.getLogger("alembic").setLevel(logging.WARNING if verbose < 2 else logging.INFO)


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"cronledger: error: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cronledger")
@click.option("--database-url", metavar="URL", help=DATABASE_URL_HELP)
@click.option("--spool-dir", metavar="DIR", help=SPOOL_DIR_HELP)
@click.option("-v", "--verbose", count=True, help="Log more: -v for progress, -vv for SQL steps.")
@click.pass_context
def cli(ctx: click.Context, database_url: str | None, spool_dir: str | None, verbose: int) -> None:
    """Record every execution of every periodic job and tell the truth about it."""
    _configure_logging(verbose)
    ctx.obj = Settings(database_url, spool_dir)


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
      */5 * * * * cronledger run flow-sync -- /app/bin/sync-flows --all

    Output passes through unchanged, SIGTERM and SIGINT are forwarded, and
    cronledger exits with the command's exit status. A run is completed only
    when the command exits 0; otherwise the last lines of its stderr become the
    error message. To report items processed, the command writes a number to
    the file named by $CRONLEDGER_ITEMS_FILE.
    """
    try:
        validate_service_name(name)
    except CronledgerError as error:
        _fail(str(error), 2)

    argv = list(command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        _fail("no command given: write it after --, as in: cronledger run NAME -- CMD [ARGS...]", 2)
    if shell:
        argv = ["/bin/sh", "-c", " ".join(argv)]

    recorder: Recorder | None
    try:
        recorder = get_recorder(settings.database_url, settings.spool_dir)
    except InvalidDatabaseURLError as error:
        # The job still runs: a monitoring mistake must not stop it.
        click.echo(f"cronledger: error: {error}; the command runs but is not recorded", err=True)
        recorder = None

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
    click.echo(f"replayed {count} of {pending} spooled events into {display_url(recorder.url)}")
    if left:
        _fail(f"{left} events are still waiting in {recorder.spool.directory}")


@spool.command("status")
@click.pass_obj
def spool_status(settings: Settings) -> None:
    """Show how many run events wait in the spool, and where."""
    recorder = _recorder_or_fail(settings)
    pending = recorder.spool.pending()
    click.echo(f"{len(pending)} events waiting in {recorder.spool.directory}")
    rejected = recorder.spool.directory / "rejected"
    if rejected.is_dir():
        count = sum(1 for _ in rejected.glob("*.json"))
        if count:
            click.echo(
                f"{count} events set aside in {rejected}: "
                "inspect them, then move them back to replay"
            )


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


def main() -> None:
    """Run the ``cronledger`` command line."""
    cli(prog_name="cronledger")
