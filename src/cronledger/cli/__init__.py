"""The ``cronledger`` command: the root group and its subcommands, one module per concern."""

from __future__ import annotations

import click

from cronledger import __version__
from cronledger.cli import access, alerts, processes, runs, services, storage
from cronledger.cli.base import (
    CONFIG_HELP,
    DATABASE_URL_HELP,
    SPOOL_DIR_HELP,
    Settings,
    configure_logging,
)

__all__ = ["cli", "main"]


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
    configure_logging(verbose)
    ctx.obj = Settings(database_url, spool_dir, config_path)


for command in (
    runs.run_cmd,
    runs.status_cmd,
    runs.prune_cmd,
    storage.db,
    storage.spool,
    services.services_group,
    access.users_group,
    access.tokens_group,
    alerts.alerts_group,
    processes.monitor_cmd,
    processes.serve_cmd,
    processes.scheduler_cmd,
    processes.up_cmd,
):
    cli.add_command(command)


def main() -> None:
    """Run the ``cronledger`` command line."""
    cli(prog_name="cronledger")
