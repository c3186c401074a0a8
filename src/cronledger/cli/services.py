"""``cronledger services``: sync, list, pause and resume the declared services."""

from __future__ import annotations

import click
from sqlalchemy.exc import SQLAlchemyError

from cronledger.cli.base import (
    Settings,
    config_or_fail,
    engine_or_fail,
    fail,
    fail_unreachable,
)
from cronledger.monitor import current_health
from cronledger.recorder import utc_now
from cronledger.store.services import load_services, set_paused, sync_services
from cronledger.store.urls import (
    display_url,
)


@click.group("services")
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
    config = config_or_fail(settings, required=True)
    assert config is not None
    engine = engine_or_fail(settings)
    try:
        result = sync_services(engine, config, utc_now())
    except SQLAlchemyError as error:
        fail_unreachable(display_url(engine.url), error)

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
    engine = engine_or_fail(settings, existing=True)
    now = utc_now()
    try:
        with engine.connect() as connection:
            records = load_services(connection)
            health = {r.settings.name: current_health(connection, r, now) for r in records}
    except SQLAlchemyError as error:
        fail_unreachable(display_url(engine.url), error)
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
    engine = engine_or_fail(settings)
    try:
        found = set_paused(engine, name, paused, utc_now())
    except SQLAlchemyError as error:
        fail_unreachable(display_url(engine.url), error)
    if not found:
        fail(f"service {name!r} not found; 'cronledger services list' shows the known ones", 2)
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
