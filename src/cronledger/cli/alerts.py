"""``cronledger alerts``, and the alert set-up of the long-running commands."""

from __future__ import annotations

import click
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from cronledger.alerts.commands import format_notification, send_test
from cronledger.alerts.config import AlertConfig, load_alert_config
from cronledger.alerts.delivery import Sender
from cronledger.alerts.outbox import recent_notifications
from cronledger.cli.base import (
    Settings,
    config_or_fail,
    engine_or_fail,
    fail,
    fail_unreachable,
    log,
    url_or_fail,
)
from cronledger.recorder import utc_now
from cronledger.settings import ConfigError
from cronledger.store import migrate
from cronledger.store.engine import get_engine
from cronledger.store.urls import (
    display_url,
)


def alerts_or_fail(settings: Settings) -> AlertConfig:
    """Resolve the alert channels of the config file; no file means no channels."""
    config = config_or_fail(settings)
    if config is None:
        return AlertConfig()
    try:
        return load_alert_config(config)
    except ConfigError as error:
        fail(str(error), 2)
        raise


def reload_alerts(settings: Settings, current: AlertConfig | None) -> AlertConfig | None:
    try:
        config = settings.config()
        return load_alert_config(config) if config is not None else AlertConfig()
    except ConfigError as error:
        log.error("alert channels not reloaded, the old ones stay: %s", error)
        return current


def send_due_alerts(engine: Engine) -> None:
    for delivery in Sender(engine).deliver_due():
        outcome = delivery.status
        if delivery.error is not None:
            outcome = f"{outcome}: {delivery.error}"
        click.echo(f"alert to {delivery.channel}: {outcome}")


@click.group("alerts")
def alerts_group() -> None:
    """Send a test alert, or list recent notifications and their outcome."""


@alerts_group.command("test")
@click.argument("service", required=False)
@click.pass_obj
def alerts_test(settings: Settings, service: str | None) -> None:
    """Send a test message to the alert channels of SERVICE, or to the default ones.

    Prints per channel whether it was delivered, and exits 1 when any failed.
    """
    alerts = alerts_or_fail(settings)
    channels = alerts.channels_for(service)
    if not channels:
        where = f"service {service!r}" if service else "the default set"
        fail(
            f"no alert channels for {where}: list Apprise URLs in channels under [alerts] "
            "in cronledger.toml (or in the service's alerts key)",
            2,
        )
    # The test is worth sending even when the database is down.
    database = get_engine(url_or_fail(settings))
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
        fail(
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
    engine = engine_or_fail(settings, existing=True)
    try:
        with engine.connect() as connection:
            records = recent_notifications(connection, service_name, limit)
    except SQLAlchemyError as error:
        fail_unreachable(display_url(engine.url), error)
    if not records:
        click.echo("no notifications yet; send a test with: cronledger alerts test")
        return
    for record in records:
        click.echo(format_notification(record))
