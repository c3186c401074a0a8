"""``cronledger users`` and ``cronledger tokens``: who may use the dashboard and the API."""

from __future__ import annotations

import sys

import click

from cronledger.cli.base import (
    Settings,
    engine_or_fail,
    fail,
)
from cronledger.errors import CronledgerError
from cronledger.recorder import utc_now


@click.group("users")
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

    engine = engine_or_fail(settings)
    password = _read_password(f"Password for {name}")
    try:
        add_user(engine, name, role, password, utc_now())
    except CronledgerError as error:
        fail(str(error), 2)
    click.echo(f"added user {name} with role {role}; the dashboard now requires a login")


@users_group.command("password")
@click.argument("name")
@click.pass_obj
def users_password(settings: Settings, name: str) -> None:
    """Set a new password for user NAME (prompt, or stdin when piped)."""
    from cronledger.web.auth import set_password

    engine = engine_or_fail(settings)
    try:
        found = set_password(engine, name, _read_password(f"New password for {name}"))
    except CronledgerError as error:
        fail(str(error), 2)
    if not found:
        fail(f"user {name!r} not found; 'cronledger users list' shows them", 2)
    click.echo(f"changed the password of {name}")


@users_group.command("list")
@click.pass_obj
def users_list(settings: Settings) -> None:
    """Print each user with its role and last login."""
    from cronledger.web.auth import list_users

    users = list_users(engine_or_fail(settings))
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

    if not delete_user(engine_or_fail(settings), name):
        fail(f"user {name!r} not found; 'cronledger users list' shows them", 2)
    click.echo(f"deleted user {name}")


@click.group("tokens")
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

    engine = engine_or_fail(settings)
    try:
        token = create_token(engine, name, role, utc_now())
    except CronledgerError as error:
        fail(str(error), 2)
    click.echo(token)
    click.echo(f"created token {name} with role {role}; it is shown only this once", err=True)


@tokens_group.command("list")
@click.pass_obj
def tokens_list(settings: Settings) -> None:
    """Print each token's name, role and last use (never the token)."""
    from cronledger.web.auth import list_tokens

    tokens = list_tokens(engine_or_fail(settings))
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

    if not revoke_token(engine_or_fail(settings), name):
        fail(f"token {name!r} not found; 'cronledger tokens list' shows them", 2)
    click.echo(f"revoked token {name}")
