"""``cronledger db`` and ``cronledger spool``: the schema, and runs waiting for the database."""

from __future__ import annotations

import click
from sqlalchemy.exc import SQLAlchemyError

from cronledger.cli.base import (
    Settings,
    fail,
    fail_unreachable,
    recorder_or_fail,
    url_or_fail,
)
from cronledger.errors import CronledgerError
from cronledger.store import migrate
from cronledger.store.engine import get_engine
from cronledger.store.rollups import rebuild_rollups
from cronledger.store.urls import (
    display_url,
)


@click.group("db")
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
    url = url_or_fail(settings)
    try:
        changed = migrate.upgrade(get_engine(url), origin_timezone=origin_timezone)
    except CronledgerError as error:
        fail(str(error), 2)
    except SQLAlchemyError as error:
        fail_unreachable(display_url(url), error)
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
    url = url_or_fail(settings)
    engine = get_engine(url)
    try:
        migrate.ensure_schema(engine)
        rebuild_rollups(engine)
    except SQLAlchemyError as error:
        fail_unreachable(display_url(url), error)
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
        fail(str(error), 2)


@click.group("spool")
def spool() -> None:
    """Inspect or replay run events saved while the database was unreachable."""


@spool.command("flush")
@click.pass_obj
def spool_flush(settings: Settings) -> None:
    """Replay every spooled run event into the database now."""
    recorder = recorder_or_fail(settings)
    pending = len(recorder.spool.pending())
    if pending == 0:
        click.echo(f"no spooled events in {recorder.spool.directory}; nothing to do")
        return
    try:
        count = recorder.flush_spool()
    except SQLAlchemyError as error:
        fail_unreachable(display_url(recorder.url), error)
    left = len(recorder.spool.pending())
    set_aside = pending - count - left
    click.echo(f"replayed {count} of {pending} spooled events into {display_url(recorder.url)}")
    if set_aside:
        events = "1 event was" if set_aside == 1 else f"{set_aside} events were"
        fail(
            f"{events} set aside in {recorder.spool.directory / 'rejected'} "
            "because the database refused them or they could not be read; the log above "
            "names the reason: fix them and move them back to replay"
        )
    if left:
        fail(f"{left} events are still waiting in {recorder.spool.directory}")


@spool.command("status")
@click.pass_obj
def spool_status(settings: Settings) -> None:
    """Show how many run events wait in the spool, and where."""
    recorder = recorder_or_fail(settings)
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
