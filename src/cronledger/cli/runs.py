"""``cronledger run``, ``status`` and ``prune``: recording runs and reading their figures."""

from __future__ import annotations

import json
import sys

import click
from sqlalchemy.exc import SQLAlchemyError

from cronledger.cli.base import (
    Settings,
    engine_or_fail,
    fail,
    fail_unreachable,
    url_or_fail,
)
from cronledger.durations import format_duration, parse_duration
from cronledger.errors import CronledgerError
from cronledger.recorder import Recorder, get_recorder, utc_now
from cronledger.status import collect_status
from cronledger.store import migrate
from cronledger.store.engine import get_engine
from cronledger.store.prune import KEEP_LATEST_RUNS, prune_bookkeeping, prune_runs
from cronledger.store.urls import (
    display_url,
)
from cronledger.terminal import format_stats_table, stats_as_dict
from cronledger.validation import validate_service_name
from cronledger.wrapper import run_command


@click.command(
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
        fail("no command given: write it after --, as in: cronledger run NAME -- CMD [ARGS...]", 2)
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


@click.command("status")
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
            fail(f"{error}; or write all", 2)

    engine = engine_or_fail(settings, existing=True)
    now = utc_now()
    try:
        statuses = collect_status(engine, now=now, since=since, service_name=service_name)
        rows = [status.stats for status in statuses]
        health = {status.name: status.health for status in statuses if status.health is not None}
    except SQLAlchemyError as error:
        fail_unreachable(display_url(engine.url), error)

    if as_json:
        click.echo(
            json.dumps([stats_as_dict(row, health.get(row.service_name)) for row in rows], indent=2)
        )
    elif not rows and service_name is not None:
        fail(
            f"service {service_name!r} not found; 'cronledger services list' shows the known ones",
            2,
        )
    elif not rows:
        click.echo(f"no runs recorded in {display_url(engine.url)} yet; record one with:")
        click.echo("  cronledger run hello -- echo hello")
    else:
        click.echo(format_stats_table(rows, health))


@click.command("prune")
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
        fail(str(error), 2)
    if failed_age < completed_age:
        fail(
            f"--failed-older-than {failed_older_than} is shorter than --older-than {older_than}: "
            "failed runs are kept at least as long as completed ones",
            2,
        )

    url = url_or_fail(settings)
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
        fail_unreachable(display_url(url), error)

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
